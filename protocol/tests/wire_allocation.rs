//! A hostile length prefix must not make the decoder allocate: this binary counts the largest
//! single allocation made on the decoding thread while decoding crafted frames.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use shoal_protocol::wire::{self, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX, Request, Response};
use shoal_protocol::{AnnouncementBook, Bitmap, SignedAnnouncement};

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only records sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest single allocation `f` makes on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    f();
    LARGEST.with(|l| l.get())
}

/// A varint length prefix declaring `len` (bincode: marker 253, then a u64).
fn huge_prefix(len: u64) -> Vec<u8> {
    let mut bytes = vec![253];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

#[test]
fn huge_declared_lengths_allocate_nothing_large() {
    let mut frames: Vec<(&str, Vec<u8>, usize)> = Vec::new();
    // Response::Chunk (variant 2) declaring 2^40 bytes.
    let mut chunk = vec![wire::WIRE_VERSION, 2];
    chunk.extend(huge_prefix(1 << 40));
    frames.push(("chunk bytes", chunk, RESPONSE_BYTES_MAX));
    // Response::Index (variant 1): digest, size, chunk size, then 2^50 hashes.
    let mut index = vec![wire::WIRE_VERSION, 1];
    index.extend([0u8; 32]);
    index.extend([1, 252]);
    index.extend((1u32 << 20).to_le_bytes());
    index.extend(huge_prefix(1 << 50));
    frames.push(("index hashes", index, RESPONSE_BYTES_MAX));
    // Response::Announcements (variant 3) declaring 2^60 entries.
    let mut announcements = vec![wire::WIRE_VERSION, 3];
    announcements.extend(huge_prefix(1 << 60));
    frames.push(("announcement list", announcements, RESPONSE_BYTES_MAX));
    // Request::Announcements (variant 3) with a cursor whose repository claims 2^60 bytes.
    let mut cursor = vec![wire::WIRE_VERSION, 3, 1];
    cursor.extend(huge_prefix(1 << 60));
    frames.push(("cursor string", cursor, REQUEST_BYTES_MAX));

    for (what, frame, limit) in frames {
        let largest = largest_allocation(|| {
            if limit == REQUEST_BYTES_MAX {
                assert!(Request::decode(&frame).is_err(), "{what}");
            } else {
                assert!(Response::decode(&frame).is_err(), "{what}");
            }
        });
        // The decoder may preallocate modestly (serde caps sequence preallocation at 1 MiB)
        // but never anything near the declared length.
        assert!(largest <= 1 << 20, "{what}: allocated {largest} bytes");
    }

    // A gossip frame: a signed announcement whose payload claims 2^40 bytes.
    let mut gossip = vec![wire::WIRE_VERSION];
    gossip.extend(huge_prefix(1 << 40));
    let largest = largest_allocation(|| assert!(SignedAnnouncement::decode(&gossip).is_err()));
    assert!(largest <= 1 << 20, "gossip: allocated {largest} bytes");
    // A bitmap claiming 2^40 bytes.
    let mut bitmap = vec![wire::WIRE_VERSION, 252];
    bitmap.extend(u32::MAX.to_le_bytes());
    bitmap.extend(huge_prefix(1 << 40));
    let largest = largest_allocation(|| assert!(wire::decode::<Bitmap>(&bitmap, 8192).is_err()));
    assert!(largest <= 1 << 16, "bitmap: allocated {largest} bytes");
    // Sanity: the counter does see real allocations.
    let largest = largest_allocation(|| drop(AnnouncementBook::new().page(None, 10)));
    let seen = largest_allocation(|| drop(vec![0u8; 4 << 20]));
    assert!(seen >= 4 << 20 && largest < 4 << 20);
}

//! A `Range` header against a blob size: a partial answer always lies within the blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_gateway::range::{self, RangeRequest};

fuzz_target!(|data: &[u8]| {
    // The blob size in the first 8 bytes (little-endian), the header after them.
    let Some((size, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    let size = u64::from_le_bytes(*size);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    match range::parse(Some(header), size) {
        RangeRequest::Partial(range) => {
            assert!(range.start < range.end, "{header:?} of {size}: {range:?}");
            assert!(range.end <= size, "{header:?} of {size}: {range:?}");
        }
        RangeRequest::Unsatisfiable | RangeRequest::Full => {}
    }
});

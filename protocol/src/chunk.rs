//! The chunk index of a blob: the BLAKE3 hash of every fixed-size chunk, so each chunk can be
//! checked the moment it arrives from any peer, long before the whole blob's sha256 can be.
//!
//! Data flow: a node that holds a verified blob feeds its bytes, in slices of any size, to a
//! [`ChunkIndexBuilder`], which hashes each chunk and also checks the whole blob's sha256, so an
//! index is only ever built from verified bytes. The index's [`ChunkIndex::root`] goes into the
//! publisher's signed announcement. A node fetching the blob gets the index from any peer,
//! [`ChunkIndex::validate`]s its shape (done on deserialization already) and compares its root
//! with the signed one, then checks each arriving chunk with [`ChunkIndex::verify_chunk`].
//!
//! Not for: proving a *range* inside a chunk (chunks are the unit of verification; a client
//! reading part of a chunk waits for the whole chunk), or content that was not announced (an
//! index whose root no trusted announcement vouches for proves nothing except self-consistency;
//! the blob's sha256 still guards the store in that case).

use std::ops::Range;

use crate::digest::{Digest, Sha256Writer};

/// The chunk size nodes use unless a blob is too large for it.
///
/// One mebibyte keeps per-chunk costs negligible (a 32-byte hash and one bitmap bit per MiB; a
/// request round trip per MiB, hidden by keeping several requests in flight per peer) while
/// still giving a typical 10–100 MB layer tens of chunks to spread over many peers, letting a
/// peer pass on a blob it is still downloading within a MiB of receiving it, and bounding the
/// memory a request in flight holds.
pub const CHUNK_BYTES_DEFAULT: u32 = 1 << 20;

/// The smallest chunk accepted; below it per-request overhead dominates and indexes bloat.
pub const CHUNK_BYTES_MIN: u32 = 1 << 14;

/// The largest chunk accepted: it bounds a chunk response and the memory of one request in
/// flight. Blobs too large for [`CHUNKS_PER_BLOB_MAX`] default-size chunks use larger ones.
pub const CHUNK_BYTES_MAX: u32 = 4 << 20;

/// The most chunks one blob may have: a 64 GiB blob at the default chunk size. It bounds an
/// index to 2 MiB of hashes and a progress bitmap to 8 KiB.
pub const CHUNKS_PER_BLOB_MAX: u32 = 1 << 16;

/// The largest blob that can be chunked at all: [`CHUNKS_PER_BLOB_MAX`] chunks of
/// [`CHUNK_BYTES_MAX`] bytes, 256 GiB. Larger blobs are served by the upstream registry only.
pub const BLOB_BYTES_MAX: u64 = CHUNKS_PER_BLOB_MAX as u64 * CHUNK_BYTES_MAX as u64;

/// An upper bound of an index's wire encoding: the hashes plus the digest, sizes and length
/// prefixes (well under 128 bytes).
pub const INDEX_BYTES_MAX: usize = CHUNKS_PER_BLOB_MAX as usize * 32 + 128;

/// Domain of the BLAKE3 key derivation for [`ChunkIndex::root`], so an index root can never be
/// confused with a hash of anything else.
const ROOT_CONTEXT: &str = "shoal 2025 chunk index root v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size {0} is outside {CHUNK_BYTES_MIN}..={CHUNK_BYTES_MAX}")]
    ChunkBytesOutOfRange(u32),
    #[error("a blob of {blob_size} bytes is more than {CHUNKS_PER_BLOB_MAX} chunks")]
    TooManyChunks { blob_size: u64 },
    #[error("an index of a {blob_size}-byte blob needs {expected} chunk hashes, got {actual}")]
    WrongChunkCount {
        blob_size: u64,
        expected: u64,
        actual: usize,
    },
    #[error("chunk {chunk} is beyond the last of {count} chunks")]
    OutOfRange { chunk: u32, count: u32 },
    #[error("chunk {chunk} has {actual} bytes, expected {expected}")]
    WrongLength {
        chunk: u32,
        expected: u32,
        actual: usize,
    },
    #[error("chunk {chunk} does not match its hash in the index")]
    HashMismatch { chunk: u32 },
    #[error("the bytes hash to {actual}, not to the blob digest {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("the chunk index of {blob} does not match its announced root")]
    RootMismatch { blob: Digest },
}

/// The BLAKE3 hash of every chunk of one blob.
///
/// Invariant (checked by every constructor, deserialization included): `chunk_bytes` is within
/// bounds and there are exactly `ceil(blob_size / chunk_bytes)` hashes, at most
/// [`CHUNKS_PER_BLOB_MAX`]. An empty blob has no chunks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "ChunkIndexRepr")]
pub struct ChunkIndex {
    blob: Digest,
    blob_size: u64,
    chunk_bytes: u32,
    hashes: Vec<[u8; 32]>,
}

#[derive(serde::Deserialize)]
struct ChunkIndexRepr {
    blob: Digest,
    blob_size: u64,
    chunk_bytes: u32,
    hashes: Vec<[u8; 32]>,
}

impl TryFrom<ChunkIndexRepr> for ChunkIndex {
    type Error = ChunkError;

    fn try_from(repr: ChunkIndexRepr) -> Result<Self, ChunkError> {
        ChunkIndex::from_parts(repr.blob, repr.blob_size, repr.chunk_bytes, repr.hashes)
    }
}

/// The number of chunks of a blob, or an error when the chunk size or count is out of bounds.
pub fn chunk_count(blob_size: u64, chunk_bytes: u32) -> Result<u32, ChunkError> {
    if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&chunk_bytes) {
        return Err(ChunkError::ChunkBytesOutOfRange(chunk_bytes));
    }
    let count = blob_size.div_ceil(u64::from(chunk_bytes));
    if count > u64::from(CHUNKS_PER_BLOB_MAX) {
        return Err(ChunkError::TooManyChunks { blob_size });
    }
    // Bounded by CHUNKS_PER_BLOB_MAX just above.
    Ok(count as u32)
}

/// The chunk size to index a blob of `blob_size` bytes with: the default, doubled as often as
/// needed to stay within [`CHUNKS_PER_BLOB_MAX`] chunks.
pub fn chunk_bytes_for(blob_size: u64) -> Result<u32, ChunkError> {
    let mut chunk_bytes = CHUNK_BYTES_DEFAULT;
    while blob_size.div_ceil(u64::from(chunk_bytes)) > u64::from(CHUNKS_PER_BLOB_MAX) {
        if chunk_bytes >= CHUNK_BYTES_MAX {
            return Err(ChunkError::TooManyChunks { blob_size });
        }
        chunk_bytes *= 2;
    }
    Ok(chunk_bytes)
}

/// How a blob is cut into chunks, before (or without) knowing their hashes: what a reader
/// streaming a blob that is still arriving needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    blob_size: u64,
    chunk_bytes: u32,
    chunk_count: u32,
}

impl ChunkLayout {
    pub fn new(blob_size: u64, chunk_bytes: u32) -> Result<Self, ChunkError> {
        Ok(ChunkLayout {
            blob_size,
            chunk_bytes,
            chunk_count: chunk_count(blob_size, chunk_bytes)?,
        })
    }

    /// The layout a node gives a blob it indexes itself: [`chunk_bytes_for`] its size.
    pub fn for_size(blob_size: u64) -> Result<Self, ChunkError> {
        ChunkLayout::new(blob_size, chunk_bytes_for(blob_size)?)
    }

    pub fn blob_size(&self) -> u64 {
        self.blob_size
    }

    pub fn chunk_bytes(&self) -> u32 {
        self.chunk_bytes
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunk_count
    }

    /// The byte range of chunk `chunk` within the blob.
    pub fn chunk_range(&self, chunk: u32) -> Result<Range<u64>, ChunkError> {
        if chunk >= self.chunk_count {
            return Err(ChunkError::OutOfRange {
                chunk,
                count: self.chunk_count,
            });
        }
        let start = u64::from(chunk) * u64::from(self.chunk_bytes);
        let end = (start + u64::from(self.chunk_bytes)).min(self.blob_size);
        Ok(start..end)
    }

    /// The length of chunk `chunk`: `chunk_bytes`, except for a shorter last chunk.
    pub fn chunk_len(&self, chunk: u32) -> Result<u32, ChunkError> {
        let range = self.chunk_range(chunk)?;
        // A chunk is at most chunk_bytes long.
        Ok((range.end - range.start) as u32)
    }

    /// The chunk holding byte `offset`, if the blob is that long; a streaming reader's position
    /// becomes the scheduler's focus this way.
    pub fn chunk_at(&self, offset: u64) -> Option<u32> {
        (offset < self.blob_size).then(|| (offset / u64::from(self.chunk_bytes)) as u32)
    }
}

impl ChunkIndex {
    /// Assembles an index from its parts, checking its shape (not its hashes: only the bytes
    /// or a signed root can vouch for those).
    pub fn from_parts(
        blob: Digest,
        blob_size: u64,
        chunk_bytes: u32,
        hashes: Vec<[u8; 32]>,
    ) -> Result<Self, ChunkError> {
        let index = ChunkIndex {
            blob,
            blob_size,
            chunk_bytes,
            hashes,
        };
        index.validate()?;
        Ok(index)
    }

    /// The structural check every constructor runs; public so callers holding an index from
    /// elsewhere can say so explicitly.
    pub fn validate(&self) -> Result<(), ChunkError> {
        let expected = chunk_count(self.blob_size, self.chunk_bytes)?;
        if self.hashes.len() != expected as usize {
            return Err(ChunkError::WrongChunkCount {
                blob_size: self.blob_size,
                expected: u64::from(expected),
                actual: self.hashes.len(),
            });
        }
        Ok(())
    }

    pub fn blob(&self) -> Digest {
        self.blob
    }

    pub fn blob_size(&self) -> u64 {
        self.blob_size
    }

    pub fn chunk_bytes(&self) -> u32 {
        self.chunk_bytes
    }

    pub fn hashes(&self) -> &[[u8; 32]] {
        &self.hashes
    }

    pub fn chunk_count(&self) -> u32 {
        // The invariant bounds the length by CHUNKS_PER_BLOB_MAX.
        self.hashes.len() as u32
    }

    /// How the blob is cut into chunks.
    pub fn layout(&self) -> ChunkLayout {
        ChunkLayout {
            blob_size: self.blob_size,
            chunk_bytes: self.chunk_bytes,
            chunk_count: self.chunk_count(),
        }
    }

    /// The byte range of chunk `chunk` within the blob.
    pub fn chunk_range(&self, chunk: u32) -> Result<Range<u64>, ChunkError> {
        self.layout().chunk_range(chunk)
    }

    /// The length of chunk `chunk`: `chunk_bytes`, except for a shorter last chunk.
    pub fn chunk_len(&self, chunk: u32) -> Result<u32, ChunkError> {
        self.layout().chunk_len(chunk)
    }

    /// The chunk holding byte `offset`, if the blob is that long.
    pub fn chunk_at(&self, offset: u64) -> Option<u32> {
        self.layout().chunk_at(offset)
    }

    /// Checks that `bytes` are chunk `chunk`: its exact length and its BLAKE3 hash.
    pub fn verify_chunk(&self, chunk: u32, bytes: &[u8]) -> Result<(), ChunkError> {
        let expected = self.chunk_len(chunk)?;
        if bytes.len() != expected as usize {
            return Err(ChunkError::WrongLength {
                chunk,
                expected,
                actual: bytes.len(),
            });
        }
        // blake3::Hash compares in constant time.
        if blake3::hash(bytes) != blake3::Hash::from(self.hashes[chunk as usize]) {
            return Err(ChunkError::HashMismatch { chunk });
        }
        Ok(())
    }

    /// BLAKE3 (in key-derivation mode, so domain-separated) over the canonical encoding
    /// `blob sha256 (32) ‖ blob_size (u64 LE) ‖ chunk_bytes (u32 LE) ‖ count (u32 LE) ‖ hashes`.
    /// Publishers sign it in their announcements; it does not depend on the wire codec.
    pub fn root(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
        hasher.update(self.blob.as_bytes());
        hasher.update(&self.blob_size.to_le_bytes());
        hasher.update(&self.chunk_bytes.to_le_bytes());
        hasher.update(&self.chunk_count().to_le_bytes());
        for hash in &self.hashes {
            hasher.update(hash);
        }
        *hasher.finalize().as_bytes()
    }

    /// Checks the index against the root a trusted announcement gives for its blob.
    pub fn verify_root(&self, expected: &[u8; 32]) -> Result<(), ChunkError> {
        if blake3::Hash::from(self.root()) == blake3::Hash::from(*expected) {
            Ok(())
        } else {
            Err(ChunkError::RootMismatch { blob: self.blob })
        }
    }
}

/// Builds the index of a blob from its bytes, fed in slices of any size, checking the blob's
/// sha256 at the end so that an index is only ever built from verified bytes.
#[derive(Debug, Clone)]
pub struct ChunkIndexBuilder {
    blob: Digest,
    chunk_bytes: u32,
    sha256: Sha256Writer,
    current: blake3::Hasher,
    current_bytes: u32,
    hashes: Vec<[u8; 32]>,
    /// [`CHUNKS_PER_BLOB_MAX`], lowered in tests to exercise the limit with little data.
    chunks_max: u32,
    too_many_chunks: bool,
}

impl ChunkIndexBuilder {
    pub fn new(blob: Digest, chunk_bytes: u32) -> Result<Self, ChunkError> {
        chunk_count(0, chunk_bytes)?;
        Ok(ChunkIndexBuilder {
            blob,
            chunk_bytes,
            sha256: Sha256Writer::default(),
            current: blake3::Hasher::new(),
            current_bytes: 0,
            hashes: Vec::new(),
            chunks_max: CHUNKS_PER_BLOB_MAX,
            too_many_chunks: false,
        })
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.sha256.update(bytes);
        while !bytes.is_empty() {
            let room = (self.chunk_bytes - self.current_bytes) as usize;
            let (head, tail) = bytes.split_at(room.min(bytes.len()));
            if !self.too_many_chunks {
                self.current.update(head);
            }
            // head is at most `room`, itself below chunk_bytes.
            self.current_bytes += head.len() as u32;
            bytes = tail;
            if self.current_bytes == self.chunk_bytes {
                self.end_chunk();
            }
        }
    }

    fn end_chunk(&mut self) {
        if self.hashes.len() < self.chunks_max as usize {
            self.hashes.push(*self.current.finalize().as_bytes());
        } else {
            // Stop hashing and storing: the blob is refused at `finish`, and memory stays
            // bounded however many bytes the caller feeds.
            self.too_many_chunks = true;
        }
        self.current.reset();
        self.current_bytes = 0;
    }

    /// Bytes fed so far.
    pub fn bytes(&self) -> u64 {
        self.sha256.bytes()
    }

    pub fn finish(mut self) -> Result<ChunkIndex, ChunkError> {
        if self.current_bytes > 0 {
            self.end_chunk();
        }
        let (actual, blob_size) = self.sha256.finish();
        if actual != self.blob {
            return Err(ChunkError::DigestMismatch {
                expected: self.blob,
                actual,
            });
        }
        if self.too_many_chunks {
            return Err(ChunkError::TooManyChunks { blob_size });
        }
        ChunkIndex::from_parts(self.blob, blob_size, self.chunk_bytes, self.hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CB: u32 = CHUNK_BYTES_MIN;

    /// The interesting blob sizes for the smallest chunk size.
    fn sizes() -> Vec<u64> {
        let cb = u64::from(CB);
        vec![0, 1, cb - 1, cb, cb + 1, 2 * cb, 5 * cb + 3]
    }

    fn blob_bytes(size: u64, seed: u8) -> Vec<u8> {
        (0..size)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn index_of(bytes: &[u8], chunk_bytes: u32) -> ChunkIndex {
        let mut builder = ChunkIndexBuilder::new(Digest::of(bytes), chunk_bytes).unwrap();
        builder.update(bytes);
        builder.finish().unwrap()
    }

    #[test]
    fn chunk_geometry_at_interesting_sizes() {
        let cb = u64::from(CB);
        for size in sizes() {
            let bytes = blob_bytes(size, 1);
            let index = index_of(&bytes, CB);
            let expected_count = size.div_ceil(cb);
            assert_eq!(u64::from(index.chunk_count()), expected_count, "{size}");
            assert_eq!(index.blob_size(), size);
            let mut next = 0;
            for chunk in 0..index.chunk_count() {
                let range = index.chunk_range(chunk).unwrap();
                assert_eq!(range.start, next, "{size} {chunk}");
                assert!(range.end > range.start, "no empty chunks");
                assert_eq!(
                    u64::from(index.chunk_len(chunk).unwrap()),
                    range.end - range.start
                );
                assert_eq!(index.chunk_at(range.start), Some(chunk));
                assert_eq!(index.chunk_at(range.end - 1), Some(chunk));
                let slice = &bytes[range.start as usize..range.end as usize];
                assert_eq!(index.verify_chunk(chunk, slice), Ok(()));
                assert_eq!(
                    index.hashes()[chunk as usize],
                    *blake3::hash(slice).as_bytes()
                );
                next = range.end;
            }
            assert_eq!(next, size, "chunks cover the blob exactly");
            assert_eq!(index.chunk_at(size), None);
            let beyond = index.chunk_count();
            assert_eq!(
                index.chunk_range(beyond),
                Err(ChunkError::OutOfRange {
                    chunk: beyond,
                    count: beyond
                })
            );
        }
    }

    #[test]
    fn verify_chunk_refuses_wrong_bytes() {
        let bytes = blob_bytes(u64::from(CB) + 10, 2);
        let index = index_of(&bytes, CB);
        let first = &bytes[..CB as usize];
        let mut flipped = first.to_vec();
        flipped[100] ^= 1;
        assert_eq!(
            index.verify_chunk(0, &flipped),
            Err(ChunkError::HashMismatch { chunk: 0 })
        );
        assert_eq!(
            index.verify_chunk(0, &first[1..]),
            Err(ChunkError::WrongLength {
                chunk: 0,
                expected: CB,
                actual: CB as usize - 1
            })
        );
        assert_eq!(
            index.verify_chunk(1, first),
            Err(ChunkError::WrongLength {
                chunk: 1,
                expected: 10,
                actual: CB as usize
            })
        );
        assert_eq!(
            index.verify_chunk(0, &bytes[CB as usize..]),
            Err(ChunkError::WrongLength {
                chunk: 0,
                expected: CB,
                actual: 10
            })
        );
        assert_eq!(
            index.verify_chunk(2, b""),
            Err(ChunkError::OutOfRange { chunk: 2, count: 2 })
        );
    }

    #[test]
    fn builder_refuses_bytes_that_are_not_the_blob() {
        let bytes = blob_bytes(1000, 3);
        let mut builder = ChunkIndexBuilder::new(Digest::of(b"other"), CB).unwrap();
        builder.update(&bytes);
        assert_eq!(builder.bytes(), 1000);
        assert_eq!(
            builder.finish(),
            Err(ChunkError::DigestMismatch {
                expected: Digest::of(b"other"),
                actual: Digest::of(&bytes)
            })
        );
        for bad in [0, CB - 1, CHUNK_BYTES_MAX + 1, u32::MAX] {
            assert_eq!(
                ChunkIndexBuilder::new(Digest::of(b""), bad).unwrap_err(),
                ChunkError::ChunkBytesOutOfRange(bad)
            );
        }
    }

    #[test]
    fn builder_refuses_blobs_with_too_many_chunks() {
        // The limit lowered to 4 chunks: 4 chunks pass, one byte more is refused, and the
        // builder stops storing hashes at the limit.
        for (size, ok) in [(4 * u64::from(CB), true), (4 * u64::from(CB) + 1, false)] {
            let bytes = blob_bytes(size, 9);
            let mut builder = ChunkIndexBuilder::new(Digest::of(&bytes), CB).unwrap();
            builder.chunks_max = 4;
            for piece in bytes.chunks(1000) {
                builder.update(piece);
            }
            assert!(builder.hashes.len() <= 4);
            let result = builder.finish();
            if ok {
                assert_eq!(result.unwrap().chunk_count(), 4);
            } else {
                assert_eq!(result, Err(ChunkError::TooManyChunks { blob_size: size }));
            }
        }
    }

    #[test]
    fn chunk_size_grows_only_for_huge_blobs() {
        let gib = 1u64 << 30;
        assert_eq!(chunk_bytes_for(0), Ok(CHUNK_BYTES_DEFAULT));
        assert_eq!(chunk_bytes_for(64 * gib), Ok(CHUNK_BYTES_DEFAULT));
        assert_eq!(chunk_bytes_for(64 * gib + 1), Ok(2 * CHUNK_BYTES_DEFAULT));
        assert_eq!(chunk_bytes_for(BLOB_BYTES_MAX), Ok(CHUNK_BYTES_MAX));
        assert_eq!(
            chunk_bytes_for(BLOB_BYTES_MAX + 1),
            Err(ChunkError::TooManyChunks {
                blob_size: BLOB_BYTES_MAX + 1
            })
        );
        for size in [0, 1, gib, 64 * gib + 1, BLOB_BYTES_MAX] {
            let cb = chunk_bytes_for(size).unwrap();
            assert!(chunk_count(size, cb).unwrap() <= CHUNKS_PER_BLOB_MAX);
        }
    }

    #[test]
    fn from_parts_and_deserialization_check_the_shape() {
        let digest = Digest::of(b"x");
        assert_eq!(
            ChunkIndex::from_parts(digest, 10, CB, vec![]),
            Err(ChunkError::WrongChunkCount {
                blob_size: 10,
                expected: 1,
                actual: 0
            })
        );
        assert_eq!(
            ChunkIndex::from_parts(digest, 0, CB, vec![[0; 32]]),
            Err(ChunkError::WrongChunkCount {
                blob_size: 0,
                expected: 0,
                actual: 1
            })
        );
        assert_eq!(
            ChunkIndex::from_parts(digest, 10, 1, vec![[0; 32]; 10]),
            Err(ChunkError::ChunkBytesOutOfRange(1))
        );
        assert_eq!(
            ChunkIndex::from_parts(digest, u64::MAX, CHUNK_BYTES_MAX, vec![]),
            Err(ChunkError::TooManyChunks {
                blob_size: u64::MAX
            })
        );
        let good = ChunkIndex::from_parts(digest, 10, CB, vec![[7; 32]]).unwrap();
        let json = serde_json::to_string(&good).unwrap();
        assert_eq!(serde_json::from_str::<ChunkIndex>(&json).unwrap(), good);
        let bad = json.replace("\"blob_size\":10", "\"blob_size\":100000");
        assert!(serde_json::from_str::<ChunkIndex>(&bad).is_err());
    }

    #[test]
    fn root_commits_to_every_field() {
        let bytes = blob_bytes(3 * u64::from(CB), 4);
        let index = index_of(&bytes, CB);
        let root = index.root();
        assert_eq!(index.verify_root(&root), Ok(()));
        let mut variants = vec![];
        let mut hashes = index.hashes().to_vec();
        hashes[2][0] ^= 1;
        variants.push(ChunkIndex::from_parts(index.blob(), index.blob_size(), CB, hashes).unwrap());
        variants.push(
            ChunkIndex::from_parts(
                Digest::of(b"other"),
                index.blob_size(),
                CB,
                index.hashes().to_vec(),
            )
            .unwrap(),
        );
        variants.push(
            ChunkIndex::from_parts(
                index.blob(),
                index.blob_size() - 1,
                CB,
                index.hashes().to_vec(),
            )
            .unwrap(),
        );
        for variant in variants {
            assert_ne!(variant.root(), root);
            assert_eq!(
                variant.verify_root(&root),
                Err(ChunkError::RootMismatch {
                    blob: variant.blob()
                })
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn slicing_does_not_change_the_index(
            size_index in 0usize..7,
            seed in any::<u8>(),
            cuts in proptest::collection::vec(any::<u32>(), 0..12),
            chunk_bytes in prop_oneof![Just(CB), Just(CB * 2), Just(CB * 3 + 1)],
        ) {
            let bytes = blob_bytes(sizes()[size_index], seed);
            let whole = index_of(&bytes, chunk_bytes);
            let mut points: Vec<usize> = cuts
                .iter()
                .map(|c| *c as usize % (bytes.len() + 1))
                .collect();
            points.push(0);
            points.push(bytes.len());
            points.sort_unstable();
            let mut builder = ChunkIndexBuilder::new(Digest::of(&bytes), chunk_bytes).unwrap();
            for pair in points.windows(2) {
                builder.update(&bytes[pair[0]..pair[1]]);
            }
            let sliced = builder.finish().unwrap();
            prop_assert_eq!(&sliced, &whole);
            prop_assert_eq!(sliced.root(), whole.root());
            let total: u64 = (0..whole.chunk_count())
                .map(|i| u64::from(whole.chunk_len(i).unwrap()))
                .sum();
            prop_assert_eq!(total, bytes.len() as u64);
        }

        #[test]
        fn geometry_holds_for_arbitrary_sizes(size in 0u64..(1 << 40), chunk_bytes in CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX) {
            match chunk_count(size, chunk_bytes) {
                Ok(count) => {
                    let index = ChunkIndex::from_parts(
                        Digest::of(b""), size, chunk_bytes, vec![[0; 32]; count as usize],
                    ).unwrap();
                    if count > 0 {
                        let last = index.chunk_range(count - 1).unwrap();
                        prop_assert_eq!(last.end, size);
                        prop_assert!(index.chunk_len(count - 1).unwrap() <= chunk_bytes);
                        prop_assert!(index.chunk_len(count - 1).unwrap() > 0);
                        prop_assert_eq!(index.chunk_at(size - 1), Some(count - 1));
                    } else {
                        prop_assert_eq!(size, 0);
                    }
                }
                Err(error) => {
                    prop_assert_eq!(error, ChunkError::TooManyChunks { blob_size: size });
                    prop_assert!(size.div_ceil(u64::from(chunk_bytes)) > u64::from(CHUNKS_PER_BLOB_MAX));
                }
            }
        }
    }
}

//! A chunk index as a peer sends it (the body of `Response::Index`): whatever decodes has the
//! shape its invariant promises, so every chunk's range and length are in bounds, and
//! verifying a chunk or computing the root never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::chunk::INDEX_BYTES_MAX;
use shoal_protocol::{ChunkIndex, wire};

fuzz_target!(|frame: &[u8]| {
    let Ok(index) = wire::decode::<ChunkIndex>(frame, INDEX_BYTES_MAX + 1) else {
        return;
    };
    index.validate().expect("decoded indexes are valid");
    let count = index.chunk_count();
    assert_eq!(count == 0, index.blob_size() == 0);
    let mut covered = 0u64;
    for chunk in [0, count / 2, count.saturating_sub(1)] {
        if chunk >= count {
            continue;
        }
        let range = index.chunk_range(chunk).expect("in range");
        assert!(range.start < range.end && range.end <= index.blob_size());
        assert_eq!(index.chunk_at(range.start), Some(chunk));
        assert!(index.chunk_len(chunk).expect("in range") <= index.chunk_bytes());
        assert!(index.verify_chunk(chunk, &[]).is_err());
        covered = covered.max(range.end);
    }
    if count > 0 {
        assert_eq!(covered, index.blob_size());
    }
    assert!(index.chunk_range(count).is_err());
    assert_eq!(index.chunk_at(index.blob_size()), None);
    index
        .verify_root(&index.root())
        .expect("an index matches its own root");
    let encoded = wire::encode(&index).expect("encodes");
    assert_eq!(
        wire::decode::<ChunkIndex>(&encoded, INDEX_BYTES_MAX + 1).expect("re-decodes"),
        index
    );
});

//! A chunk index as a peer sends it (the body of `Response::Index`): whatever decodes has the
//! shape its invariant promises, so every chunk's range and length are in bounds, and
//! verifying a chunk or computing the root never panics.
//! The checks are `shoal_fuzz::chunk_index` (src/lib.rs), which the stable replay test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shoal_fuzz::chunk_index(data));

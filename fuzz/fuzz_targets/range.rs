//! A `Range` header against a blob size: a partial answer always lies within the blob.
//! The checks are `shoal_fuzz::range` (src/lib.rs), which the stable replay test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shoal_fuzz::range(data));

//! A manifest or index as it arrives from a peer, an upstream registry or an import, parsed
//! with and without the media type the referring descriptor claims.
//! The checks are `shoal_fuzz::manifest` (src/lib.rs), which the stable replay test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shoal_fuzz::manifest(data));

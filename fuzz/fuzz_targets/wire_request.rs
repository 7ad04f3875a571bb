//! A peer's request frame, as `network/codec.rs` decodes it: whatever decodes must survive a
//! re-encoding unchanged and fit the request limit.
//! The checks are `shoal_fuzz::wire_request` (src/lib.rs), which the stable replay test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shoal_fuzz::wire_request(data));

//! A gossiped announcement frame, as `node/src/announce.rs` takes it: decode, then verify the
//! publisher key and signature, then decode and validate the signed payload. Random bytes
//! almost never carry a good signature, so the payload decoder is also driven directly with
//! the payload of every frame that decodes; a payload that validates must sign and verify
//! back to itself.
//! The checks are `shoal_fuzz::announcement` (src/lib.rs), which the stable replay test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shoal_fuzz::announcement(data));

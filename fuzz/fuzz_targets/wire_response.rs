//! A peer's response frame, as `network/codec.rs` decodes it. Whatever decodes must keep its
//! invariants (a `Have` bitmap within its length, an index of the right shape, announcements
//! within their limits) and survive a re-encoding unchanged.
//! The checks are `shoal_fuzz::wire_response` (src/lib.rs), which the stable replay test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shoal_fuzz::wire_response(data));

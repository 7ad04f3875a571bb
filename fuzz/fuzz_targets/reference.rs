//! Image references, qualified repository names, tags, digests and namespaces as users, the
//! admin socket, peers' announcements and the gateway give them: whatever parses prints back to
//! a string that parses to the same value.
//! The checks are `shoal_fuzz::reference` (src/lib.rs), which the stable replay test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shoal_fuzz::reference(data));

//! `shoal import` of a tar or gzipped tar whose bytes the fuzzer chooses, through the node's
//! own importer and store ([`shoal_node::fuzzing::ImportHarness`]): a refusal is fine, a panic
//! or an accepted import whose blobs are not intact in the store is not.
//! The checks are `shoal_fuzz::import_archive` (src/lib.rs), which the stable replay test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shoal_fuzz::import_archive(data));

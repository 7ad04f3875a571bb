//! `shoal import` of a tar or gzipped tar whose bytes the fuzzer chooses, through the node's
//! own importer and store ([`shoal_node::fuzzing::ImportHarness`]): a refusal is fine, a panic
//! or an accepted import whose blobs are not intact in the store is not.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shoal_node::fuzzing::ImportHarness;

fn harness() -> &'static ImportHarness {
    static HARNESS: OnceLock<ImportHarness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("shoal-fuzz-import-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        ImportHarness::open(&dir).expect("a store in the scratch directory")
    })
}

fuzz_target!(|archive: &[u8]| {
    let _ = harness().import(archive);
});

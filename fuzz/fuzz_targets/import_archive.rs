//! `shoal import` of a tar or gzipped tar whose bytes the fuzzer chooses, through the node's
//! own importer and store ([`shoal_node::fuzzing::ImportHarness`]): a refusal is fine, a panic
//! or an accepted import whose blobs are not intact in the store is not.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shoal_node::fuzzing::ImportHarness;

const PREFIX: &str = "shoal-fuzz-import-";

/// libFuzzer exits without running destructors, so each run's scratch directory is left
/// behind: remove those of processes that are gone.
fn remove_stale(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.strip_prefix(PREFIX)) else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn harness() -> &'static ImportHarness {
    static HARNESS: OnceLock<ImportHarness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // tmpfs when there is one: the importer fsyncs every blob it stages.
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        remove_stale(&base);
        let dir = base.join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        ImportHarness::open(&dir).expect("a store in the scratch directory")
    })
}

fuzz_target!(|archive: &[u8]| {
    let _ = harness().import(archive);
});

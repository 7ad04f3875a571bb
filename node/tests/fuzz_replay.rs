//! Every committed fuzz input (`fuzz/corpus/<target>/*` and `fuzz/regressions/<target>/*`) run
//! once through its target's checks, on stable, as part of the ordinary suite. The checks are
//! the fuzz targets' own bodies (`fuzz/src/lib.rs`, included here by path), so a decoder change
//! that breaks a past finding or a seed fails `cargo test` without nightly or cargo-fuzz.
//! Mutating new inputs for longer is `scripts/fuzz-smoke` (docs/fuzzing.md); what only
//! libFuzzer checks is the allocation limit (`-rss_limit_mb`) and the per-input timeout.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[allow(
    dead_code,
    reason = "the fuzz crate's library, compiled here as a module"
)]
#[path = "../../fuzz/src/lib.rs"]
mod targets;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files directly in `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every file; returns a line for each input that made it panic.
fn replay(check: targets::Check, files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter_map(|file| {
            let bytes = std::fs::read(file).expect("a readable input");
            let outcome = catch_unwind(AssertUnwindSafe(|| check(&bytes)));
            let panic = outcome.err()?;
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Some(format!("{}: {message}", file.display()))
        })
        .collect()
}

#[test]
fn every_committed_fuzz_input_passes_its_target() {
    let fuzz = fuzz_dir();
    let mut failures = Vec::new();
    for (name, check) in targets::TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(name));
        // An empty or missing corpus would make this test pass without checking anything.
        assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ holds no inputs");
        let regressions = inputs(&fuzz.join("regressions").join(name));
        failures.extend(replay(check, &corpus));
        failures.extend(replay(check, &regressions));
        eprintln!(
            "fuzz replay: {name}: {} corpus inputs, {} regressions",
            corpus.len(),
            regressions.len()
        );
    }
    assert!(
        failures.is_empty(),
        "fuzz inputs that fail their target:\n{}",
        failures.join("\n")
    );
}

/// The list the replay walks is the list libFuzzer builds: every `[[bin]]` of fuzz/Cargo.toml
/// and every corpus directory has an entry in `TARGETS`, and the other way round.
#[test]
fn the_replay_covers_every_fuzz_target() {
    let fuzz = fuzz_dir();
    let listed: BTreeSet<String> = targets::TARGETS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let bins: BTreeSet<String> = manifest
        .lines()
        .filter_map(|line| line.strip_prefix("name = \""))
        .filter_map(|rest| rest.strip_suffix('"'))
        .filter(|name| *name != "shoal-fuzz")
        .map(str::to_owned)
        .collect();
    assert_eq!(bins, listed, "fuzz/Cargo.toml [[bin]]s vs TARGETS");
    let corpora: BTreeSet<String> = std::fs::read_dir(fuzz.join("corpus"))
        .expect("fuzz/corpus/")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(corpora, listed, "fuzz/corpus/ directories vs TARGETS");
    for entry in std::fs::read_dir(fuzz.join("regressions")).expect("fuzz/regressions/") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            listed.contains(name.as_ref()),
            "fuzz/regressions/{name} has no target"
        );
    }
}

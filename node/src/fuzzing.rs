//! Entry points for the fuzz targets in `fuzz/` that need the node's own code: `shoal import`
//! of an archive whose bytes the fuzzer chooses. Nothing in the node calls this module; it is
//! public only so that a fuzz crate can link it.
//!
//! Data flow: the fuzz target writes each input to one file and calls the importer exactly as
//! the admin socket does, against one store opened once per fuzzing process. Any outcome is
//! fine except a panic, a hang, or an import that reports success for content the store does
//! not hold intact.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::import;
use crate::store::{self, Store};

/// A store and an input file, reused across fuzz iterations so that an iteration costs one
/// file write and one import, not a sled open.
pub struct ImportHarness {
    store: Store,
    input: PathBuf,
}

impl std::fmt::Debug for ImportHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportHarness")
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

impl ImportHarness {
    /// Opens (creating) a store in `dir/store`; inputs are written to `dir/input`.
    pub fn open(dir: &Path) -> anyhow::Result<ImportHarness> {
        let (store, _) = Store::open(&dir.join("store")).context("cannot open the store")?;
        Ok(ImportHarness {
            store,
            input: dir.join("input"),
        })
    }

    /// Imports `archive` (a tar or gzipped tar) as `shoal import` would. A refused archive is
    /// an `Err` with the importer's message.
    ///
    /// # Panics
    ///
    /// When the importer accepts the archive but some blob it reports is missing from the
    /// store or does not hash to its digest: the oracle the fuzzer checks.
    pub fn import(&self, archive: &[u8]) -> Result<(), String> {
        std::fs::write(&self.input, archive).map_err(|error| error.to_string())?;
        let report = import::import(&self.store, &self.input, None, &mut |_, _| true)
            .map_err(|error| error.to_string())?;
        for digest in &report.digests {
            let opened = self.store.open_blob(digest);
            let Ok(Some((mut file, size))) = opened else {
                panic!("imported blob {digest} is not readable: {opened:?}");
            };
            let hashed = store::hash_reader(&mut file);
            assert!(
                matches!(hashed, Ok((actual, bytes)) if actual == *digest && bytes == size),
                "imported blob {digest} of {size} bytes hashes to {hashed:?}"
            );
        }
        Ok(())
    }
}

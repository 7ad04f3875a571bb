//! Reading an import's input once: a directory, a tar, or a gzipped tar.
//!
//! Blobs stream straight into the staging area; small metadata files (JSON) are kept in memory
//! within fixed limits; symlinks and hard links are remembered so later lookups can follow
//! them, but never outside the archive.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;

use shoal_protocol::Digest;

use super::ImportError;
use crate::store::{Staging, StoreError};

/// Largest metadata file kept in memory: the manifest limit registries apply.
const SMALL_FILE_BYTES_MAX: u64 = shoal_protocol::manifest::MANIFEST_BYTES_MAX as u64;
/// Most metadata files one archive may carry.
const SMALL_FILES_MAX: usize = 10_000;
/// Most bytes of metadata files one archive may carry, all held in memory until the import
/// ends. A `docker save` of a hundred layers holds a few hundred KiB (a small `json` per layer,
/// the config, `manifest.json`); an OCI layout only `index.json` and `oci-layout`.
pub(super) const SMALL_FILES_BYTES_MAX: u64 = 64 << 20;
/// How many links a lookup follows before giving up on a loop.
const LINK_HOPS_MAX: usize = 8;
/// How deep a directory import descends.
const DIRECTORY_DEPTH_MAX: usize = 16;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The most bytes the tar reader may consume between two entries: padding, headers, and the
/// extension entries (GNU long names and link names, pax headers) that it reads whole into
/// memory before it yields the entry they describe. Real archives need a few KiB; unbounded,
/// a gzipped archive of a few MiB could declare a long name of gigabytes of zeros and make the
/// node hold all of it.
const TAR_HEADERS_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug)]
struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

#[derive(Debug)]
struct HeadersTooLarge;

impl std::fmt::Display for HeadersTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {TAR_HEADERS_BYTES_MAX} bytes of headers")
    }
}

impl std::error::Error for HeadersTooLarge {}

/// The tar reader's input, with a byte budget that [`ArchiveContents::read_tar`] sets while the
/// reader looks for the next entry and lifts while the entry's own data streams to the
/// staging area: whatever the tar reader buffers in between is bounded by it.
struct HeaderBudget<R> {
    inner: R,
    /// Bytes left, or `None` while an entry's data is read.
    left: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for HeaderBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.left.get() else {
            return self.inner.read(buf);
        };
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other(HeadersTooLarge));
        }
        let allowed = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..allowed])?;
        self.left.set(Some(left - n as u64));
        Ok(n)
    }
}

/// Counts bytes read from the input and reports them; a `false` from the callback cancels.
struct Counting<'a, R> {
    inner: R,
    done: &'a mut u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64) -> bool,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.done += n as u64;
        if !(self.progress)(*self.done, self.total) {
            return Err(io::Error::other(Cancelled));
        }
        Ok(n)
    }
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| {
        if source
            .get_ref()
            .is_some_and(|inner| inner.is::<Cancelled>())
        {
            ImportError::Cancelled
        } else {
            ImportError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

fn damaged(source: io::Error) -> ImportError {
    if source
        .get_ref()
        .is_some_and(|inner| inner.is::<Cancelled>())
    {
        ImportError::Cancelled
    } else if source
        .get_ref()
        .is_some_and(|inner| inner.is::<HeadersTooLarge>())
    {
        ImportError::HeadersTooLarge(TAR_HEADERS_BYTES_MAX)
    } else {
        ImportError::Damaged(source)
    }
}

fn incoming(error: StoreError) -> ImportError {
    match error {
        StoreError::Incoming(source) => damaged(source),
        other => other.into(),
    }
}

/// What an archive held, by normalised path inside it.
#[derive(Debug, Default)]
pub struct ArchiveContents {
    small: HashMap<String, Vec<u8>>,
    staged: HashMap<String, (Digest, u64)>,
    links: HashMap<String, String>,
    small_bytes: u64,
}

enum EntryKind {
    File,
    Link(String),
    Other,
}

impl ArchiveContents {
    pub fn read(
        path: &Path,
        staging: &mut Staging,
        progress: &mut dyn FnMut(u64, u64) -> bool,
    ) -> Result<ArchiveContents, ImportError> {
        let metadata = std::fs::metadata(path).map_err(read_error(path))?;
        let mut contents = ArchiveContents::default();
        let mut done = 0;
        if metadata.is_dir() {
            let total = directory_size(path, 0)?;
            contents.read_directory(path, path, 0, staging, &mut done, total, progress)?;
        } else {
            let mut file = File::open(path).map_err(read_error(path))?;
            let mut head = [0u8; 512];
            let head_len = read_up_to(&mut file, &mut head).map_err(read_error(path))?;
            file.rewind().map_err(read_error(path))?;
            let counting = Counting {
                inner: BufReader::new(file),
                done: &mut done,
                total: metadata.len(),
                progress,
            };
            if head_len >= 2 && head[..2] == GZIP_MAGIC {
                contents.read_tar(flate2::read::GzDecoder::new(counting), staging)?;
            } else if head_len == 512 && &head[257..262] == b"ustar" {
                contents.read_tar(counting, staging)?;
            } else {
                return Err(ImportError::NotAnArchive(path.to_owned()));
            }
        }
        Ok(contents)
    }

    fn read_tar(&mut self, reader: impl Read, staging: &mut Staging) -> Result<(), ImportError> {
        let budget = Rc::new(Cell::new(None));
        let mut archive = tar::Archive::new(HeaderBudget {
            inner: reader,
            left: budget.clone(),
        });
        let mut entries = archive.entries().map_err(damaged)?;
        loop {
            budget.set(Some(TAR_HEADERS_BYTES_MAX));
            let Some(entry) = entries.next() else {
                return Ok(());
            };
            budget.set(None);
            let mut entry = entry.map_err(damaged)?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let header = entry.header();
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Symlink => EntryKind::Link(link_target(&entry, &name, false)?),
                tar::EntryType::Link => EntryKind::Link(link_target(&entry, &name, true)?),
                _ => EntryKind::Other,
            };
            let size = entry.size();
            self.take(&name, kind, size, &mut entry, staging)?;
            // Data the import did not need is skipped here, outside the budget.
            io::copy(&mut entry, &mut io::sink()).map_err(damaged)?;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read_directory(
        &mut self,
        root: &Path,
        dir: &Path,
        depth: usize,
        staging: &mut Staging,
        done: &mut u64,
        total: u64,
        progress: &mut dyn FnMut(u64, u64) -> bool,
    ) -> Result<(), ImportError> {
        if depth > DIRECTORY_DEPTH_MAX {
            return Err(ImportError::BadLayout(format!(
                "{} nests too deeply",
                dir.display()
            )));
        }
        for entry in std::fs::read_dir(dir).map_err(read_error(dir))? {
            let path = entry.map_err(read_error(dir))?.path();
            let metadata = std::fs::symlink_metadata(&path).map_err(read_error(&path))?;
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if metadata.is_dir() {
                self.read_directory(root, &path, depth + 1, staging, done, total, progress)?;
            } else if metadata.is_symlink() {
                let target = std::fs::read_link(&path).map_err(read_error(&path))?;
                let target = resolve_link(&relative, &target.to_string_lossy())?;
                self.take(
                    &relative,
                    EntryKind::Link(target),
                    0,
                    &mut io::empty(),
                    staging,
                )?;
            } else if metadata.is_file() {
                let file = File::open(&path).map_err(read_error(&path))?;
                let mut reader = Counting {
                    inner: file,
                    done,
                    total,
                    progress: &mut *progress,
                };
                self.take(
                    &relative,
                    EntryKind::File,
                    metadata.len(),
                    &mut reader,
                    staging,
                )
                .map_err(|error| match error {
                    ImportError::Damaged(source) => read_error(&path)(source),
                    other => other,
                })?;
            }
        }
        Ok(())
    }

    fn take(
        &mut self,
        raw_name: &str,
        kind: EntryKind,
        size: u64,
        reader: &mut dyn Read,
        staging: &mut Staging,
    ) -> Result<(), ImportError> {
        let name = normalize(raw_name)?;
        match kind {
            EntryKind::Other => Ok(()),
            EntryKind::Link(target) => {
                self.links.insert(name, target);
                Ok(())
            }
            EntryKind::File => self.take_file(name, size, reader, staging),
        }
    }

    fn take_file(
        &mut self,
        name: String,
        size: u64,
        reader: &mut dyn Read,
        staging: &mut Staging,
    ) -> Result<(), ImportError> {
        if let Some(blob) = name.strip_prefix("blobs/") {
            let digest: Digest = blob
                .replacen('/', ":", 1)
                .parse()
                .map_err(|error| ImportError::BadLayout(format!("entry {name:?}: {error}")))?;
            if staging.size_of(&digest)? != Some(size) {
                let what = format!("archive entry {name:?}");
                staging
                    .write_blob(reader, Some((digest, size)), &what)
                    .map_err(incoming)?;
            }
            self.staged.insert(name, (digest, size));
        } else if name.ends_with(".tar") {
            let staged = staging.write_blob(reader, None, &name).map_err(incoming)?;
            self.staged.insert(name, staged);
        } else if is_metadata_file(&name) {
            if size > SMALL_FILE_BYTES_MAX {
                return Err(ImportError::EntryTooLarge {
                    entry: name,
                    size,
                    limit: SMALL_FILE_BYTES_MAX,
                });
            }
            if self.small.len() >= SMALL_FILES_MAX {
                return Err(ImportError::TooManyEntries(SMALL_FILES_MAX));
            }
            if self.small_bytes + size > SMALL_FILES_BYTES_MAX {
                return Err(ImportError::MetadataTooLarge(SMALL_FILES_BYTES_MAX));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            reader
                .take(SMALL_FILE_BYTES_MAX + 1)
                .read_to_end(&mut bytes)
                .map_err(damaged)?;
            self.small_bytes += bytes.len() as u64;
            self.small.insert(name, bytes);
        }
        Ok(())
    }

    fn follow<'a>(&'a self, name: &'a str) -> &'a str {
        let mut name = name;
        for _ in 0..LINK_HOPS_MAX {
            match self.links.get(name) {
                Some(target) => name = target,
                None => break,
            }
        }
        name
    }

    pub fn has(&self, name: &str) -> bool {
        let name = self.follow(name);
        self.small.contains_key(name) || self.staged.contains_key(name)
    }

    /// A metadata file's bytes.
    pub fn small(&self, name: &str) -> Option<&[u8]> {
        self.small.get(self.follow(name)).map(Vec::as_slice)
    }

    /// The digest and size of a streamed entry.
    pub fn staged(&self, name: &str) -> Option<(Digest, u64)> {
        self.staged
            .get(self.follow(&normalize(name).ok()?))
            .copied()
    }
}

fn is_metadata_file(name: &str) -> bool {
    name.ends_with(".json")
        || name.ends_with("/json")
        || name == "oci-layout"
        || name == "repositories"
}

fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    name: &str,
    hard: bool,
) -> Result<String, ImportError> {
    let target = entry
        .link_name_bytes()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    if hard {
        normalize(&target)
    } else {
        resolve_link(name, &target)
    }
}

/// Resolves a symlink's target relative to the directory holding the link, refusing any
/// target outside the archive.
fn resolve_link(link: &str, target: &str) -> Result<String, ImportError> {
    if target.starts_with('/') {
        return Err(ImportError::PathTraversal(format!("{link} -> {target}")));
    }
    let mut parts: Vec<&str> = link
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ImportError::PathTraversal(format!("{link} -> {target}")));
                }
            }
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// `./a//b` becomes `a/b`; absolute names and `..` are refused.
fn normalize(name: &str) -> Result<String, ImportError> {
    if name.starts_with('/') || name.split('/').any(|part| part == "..") {
        return Err(ImportError::PathTraversal(name.to_owned()));
    }
    Ok(name
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/"))
}

fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn directory_size(dir: &Path, depth: usize) -> Result<u64, ImportError> {
    if depth > DIRECTORY_DEPTH_MAX {
        return Ok(0);
    }
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(read_error(dir))? {
        let path = entry.map_err(read_error(dir))?.path();
        let metadata = std::fs::symlink_metadata(&path).map_err(read_error(&path))?;
        if metadata.is_dir() {
            total += directory_size(&path, depth + 1)?;
        } else if metadata.is_file() {
            total += metadata.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_escapes_refused() {
        assert_eq!(normalize("./blobs//sha256/x").unwrap(), "blobs/sha256/x");
        for bad in ["../evil", "a/../../evil", "/etc/passwd", "a/.."] {
            assert!(
                matches!(normalize(bad), Err(ImportError::PathTraversal(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn long_names_within_the_budget_still_read() {
        let name = format!("{}/index.json", "d".repeat(300));
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        builder.append_data(&mut header, &name, &b"{}"[..]).unwrap();
        let archive = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::store::Store::open(&dir.path().join("store")).unwrap();
        let path = dir.path().join("archive.tar");
        std::fs::write(&path, &archive).unwrap();
        let mut staging = store.staging().unwrap();
        let contents = ArchiveContents::read(&path, &mut staging, &mut |_, _| true).unwrap();
        assert_eq!(contents.small(&name), Some(&b"{}"[..]));
    }

    #[test]
    fn links_resolve_inside_the_archive_only() {
        assert_eq!(
            resolve_link("b/layer.tar", "../a/layer.tar").unwrap(),
            "a/layer.tar"
        );
        assert_eq!(
            resolve_link("layer.tar", "a/layer.tar").unwrap(),
            "a/layer.tar"
        );
        assert!(resolve_link("b/layer.tar", "../../etc/passwd").is_err());
        assert!(resolve_link("b/layer.tar", "/etc/passwd").is_err());
    }
}

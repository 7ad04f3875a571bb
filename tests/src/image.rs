//! Deterministic test container images, written in the formats `shoal import` accepts.
//!
//! End-to-end tests and benchmarks need images of a chosen shape (number and size of layers,
//! platforms, media types) whose every digest is known in advance, and they need them fast: a
//! 200 MB image is generated in a few seconds. An [`ImageSpec`] describes the image; its writers
//! produce an OCI image layout directory, an `oci-archive` tar, or one of the two `docker save`
//! formats, and each returns a [`GeneratedImage`] listing the digests a test checks against.
//!
//! How data flows: every layer is a real tar archive (directories, regular files, optionally a
//! static busybox) whose file contents come from a seeded PRNG, so the bytes do not compress away.
//! The tar is streamed through a sha256 hasher (the diff_id), optionally through gzip and a
//! second hasher (the blob digest), into a file, so no layer is ever held in memory. Layers are
//! generated in parallel, then configs, manifests and the index are derived from their digests.
//! Archive writers stage blobs in a temporary directory next to the output file and copy them
//! into the tar.
//!
//! Same spec and seed, same bytes: tar headers carry fixed times and owners, gzip headers carry
//! no time, JSON is produced from fixed values. With several platforms, the first layer is shared
//! by every platform (stored once) and the others are distinct per platform.
//!
//! Hostile inputs for import tests come from [`ImageSpec::write_oci_archive_with`] and [`Tamper`],
//! and from [`corrupt_file`] and [`truncate_file`].
//!
//! Not for: producing images to push to a real registry (that is what the registry helpers do
//! with these files), or modelling real-world compressibility (contents are incompressible).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::thread;

use anyhow::{Context, Result, anyhow, bail, ensure};
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use shoal_protocol::media_type::{
    DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP,
    OCI_LAYER_TAR, OCI_MANIFEST,
};
use shoal_protocol::rng::{SplitMix64, mix64};
use tar::{Builder, EntryType, Header};

/// Docker schema 2 media type of a gzip-compressed layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker schema 2 media type of an uncompressed layer.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Annotation of an OCI layout's index.json entry naming its tag.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation Docker 25+ `docker save` puts on index.json entries: the full image name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// Largest file inside a layer; a layer's payload is split into files of at most this size, so a
/// 60 MB layer looks like several ordinary files rather than one giant one.
const FILE_BYTES_MAX: u64 = 16 << 20;
/// Bounds of the layer sizes [`ImageSpec::sized`] picks, the typical size of real image layers.
const SIZED_LAYER_BYTES_MIN: u64 = 20 << 20;
const SIZED_LAYER_BYTES_MAX: u64 = 60 << 20;
/// Modification time of every tar entry (2023-11-14), fixed so output is reproducible.
const ENTRY_MTIME: u64 = 1_700_000_000;
/// The `created` time of configs and history, fixed for the same reason.
const CREATED: &str = "2023-11-14T22:13:20Z";
/// Large buffers cut per-call overhead when streaming hundreds of megabytes to disk.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// ---------------------------------------------------------------------------------------------
// The spec

/// Which family of media types the manifests, configs and layers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaTypes {
    /// `application/vnd.oci.image.*` (an OCI index for several platforms).
    #[default]
    Oci,
    /// Docker schema 2 (a manifest list for several platforms). skopeo's `oci:` transport only
    /// finds OCI-typed entries in index.json, so push these through a registry or `shoal import`.
    Docker,
}

impl MediaTypes {
    pub fn manifest(self) -> &'static str {
        match self {
            Self::Oci => OCI_MANIFEST,
            Self::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn index(self) -> &'static str {
        match self {
            Self::Oci => OCI_INDEX,
            Self::Docker => DOCKER_MANIFEST_LIST,
        }
    }

    pub fn config(self) -> &'static str {
        match self {
            Self::Oci => OCI_CONFIG,
            Self::Docker => DOCKER_CONFIG,
        }
    }

    pub fn layer(self, gzipped: bool) -> &'static str {
        match (self, gzipped) {
            (Self::Oci, true) => OCI_LAYER_GZIP,
            (Self::Oci, false) => OCI_LAYER_TAR,
            (Self::Docker, true) => DOCKER_LAYER_GZIP,
            (Self::Docker, false) => DOCKER_LAYER_TAR,
        }
    }
}

/// How hard gzip works on layers. Layer contents are random, so compression saves nothing;
/// `Store` (a valid gzip stream at level 0) is the quickest way to make large images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GzipLevel {
    #[default]
    Fast,
    Store,
}

impl From<GzipLevel> for flate2::Compression {
    fn from(level: GzipLevel) -> Self {
        match level {
            GzipLevel::Fast => flate2::Compression::fast(),
            GzipLevel::Store => flate2::Compression::none(),
        }
    }
}

/// An OS/architecture pair, as in a config and an index's `platform` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    fn to_json(&self) -> Value {
        let mut value = json!({ "os": self.os, "architecture": self.architecture });
        if let Some(variant) = &self.variant {
            value["variant"] = json!(variant);
        }
        value
    }
}

/// The shape of a test image. Build one with [`ImageSpec::new`] or [`ImageSpec::sized`] and the
/// builder methods, then call a `write_*` method.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Approximate uncompressed payload bytes of each layer (tar headers add a little).
    pub layers: Vec<u64>,
    /// Seeds every byte of layer content; the same seed gives the same digests.
    pub seed: u64,
    /// Platforms of the image; empty means linux/amd64 only. More than one makes an index.
    pub platforms: Vec<Platform>,
    pub media_types: MediaTypes,
    pub gzip: GzipLevel,
    /// Put the host's static busybox at /bin/busybox, with /bin/sh and /bin/true linked to it,
    /// in the first layer, so a runtime can run `/bin/busybox true`. Needs at least one layer.
    pub with_busybox: bool,
}

impl ImageSpec {
    /// An image with no layers yet, linux/amd64, OCI media types, fast gzip, no busybox.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    /// An image with layers of about these sizes, gzip-framed but stored uncompressed
    /// ([`GzipLevel::Store`]): quick to write, and the blobs are as large as asked.
    pub fn with_layers(seed: u64, layers: &[u64]) -> Self {
        Self {
            layers: layers.to_vec(),
            gzip: GzipLevel::Store,
            ..Self::new(seed)
        }
    }

    /// An image of about `total_bytes`, in layers of 20–60 MiB (the last one takes the rest).
    pub fn sized(seed: u64, total_bytes: u64) -> Self {
        let mut rng = SplitMix64::new(mix(seed, u64::MAX, 0));
        let mut layers = Vec::new();
        let mut left = total_bytes;
        while left > 0 {
            let span = SIZED_LAYER_BYTES_MAX - SIZED_LAYER_BYTES_MIN;
            let size = (SIZED_LAYER_BYTES_MIN + rng.next_u64() % span).min(left);
            layers.push(size);
            left -= size;
        }
        Self {
            layers,
            ..Self::new(seed)
        }
    }

    pub fn layer(mut self, bytes: u64) -> Self {
        self.layers.push(bytes);
        self
    }

    pub fn platform(mut self, os: &str, architecture: &str) -> Self {
        self.platforms.push(Platform::new(os, architecture));
        self
    }

    pub fn platform_variant(mut self, os: &str, architecture: &str, variant: &str) -> Self {
        let platform = Platform {
            variant: Some(variant.to_owned()),
            ..Platform::new(os, architecture)
        };
        self.platforms.push(platform);
        self
    }

    pub fn media_types(mut self, media_types: MediaTypes) -> Self {
        self.media_types = media_types;
        self
    }

    pub fn gzip(mut self, gzip: GzipLevel) -> Self {
        self.gzip = gzip;
        self
    }

    pub fn with_busybox(mut self, with_busybox: bool) -> Self {
        self.with_busybox = with_busybox;
        self
    }

    fn effective_platforms(&self) -> Vec<Platform> {
        if self.platforms.is_empty() {
            vec![Platform::new("linux", "amd64")]
        } else {
            self.platforms.clone()
        }
    }

    fn ensure_single_platform(&self, format: ImageFormat) -> Result<()> {
        ensure!(
            self.platforms.len() <= 1,
            "{format:?} holds a single platform, not {}",
            self.platforms.len()
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// What the writers return

/// The on-disk format a writer produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    OciLayout,
    OciArchive,
    DockerSaveLegacy,
    DockerSaveOci,
}

/// A content-addressed blob: digest (`sha256:<hex>`), size in bytes, media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

impl Blob {
    /// The digest without its `sha256:` prefix, as in `blobs/sha256/<hex>`.
    pub fn hex(&self) -> &str {
        digest_hex(&self.digest)
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// A layer blob and the digest of its uncompressed tar (the config's diff_id). For uncompressed
/// layers the two digests are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    pub blob: Blob,
    pub diff_id: String,
    pub uncompressed_size: u64,
}

/// One platform's manifest, config and layers.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub platform: Platform,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<LayerBlob>,
}

/// What a writer produced and every digest a test needs to check an import or a pull.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    /// The directory or tar file written.
    pub path: PathBuf,
    pub format: ImageFormat,
    /// The top-level digest: the index's with several platforms, else the manifest's. For
    /// [`ImageFormat::DockerSaveLegacy`], which holds no manifest, it is the digest of the OCI
    /// manifest Docker 25+ would save for the same image (config plus uncompressed layers with
    /// OCI media types); an importer may build a different one, so check `platforms[0].config`
    /// and the layers' diff_ids instead.
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    pub platforms: Vec<PlatformImage>,
    /// Every distinct blob the output references: layers, configs, manifests, index. For the
    /// legacy Docker format only the config and layers.
    pub blobs: Vec<Blob>,
    /// Sum of the sizes in `blobs`.
    pub total_bytes: u64,
    /// The blob a [`Tamper`] targeted (the first platform's last layer), if any. Its entry in
    /// `blobs` keeps the real digest and size.
    pub tampered: Option<Blob>,
}

impl GeneratedImage {
    /// The first platform's config digest.
    pub fn config_digest(&self) -> &str {
        self.platforms
            .first()
            .map_or("", |p| p.config.digest.as_str())
    }

    /// The first platform's layer diff_ids, in order.
    pub fn diff_ids(&self) -> Vec<&str> {
        self.platforms.first().map_or_else(Vec::new, |p| {
            p.layers.iter().map(|l| l.diff_id.as_str()).collect()
        })
    }

    /// Where a blob lives inside an OCI layout directory; `None` for tar outputs.
    pub fn layout_blob_path(&self, digest: &str) -> Option<PathBuf> {
        (self.format == ImageFormat::OciLayout).then(|| blob_path(&self.path, digest))
    }
}

/// A way to spoil an `oci-archive`, for import tests that must reject it cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// An extra entry named `../evil` (written raw: the tar crate refuses `..` otherwise).
    PathTraversal,
    /// An extra entry with the absolute name `/tmp/shoal-evil`.
    AbsolutePath,
    /// The manifest declares this size for the first platform's last layer.
    AbsurdSize(u64),
    /// The first platform's last layer is left out of the archive.
    MissingBlob,
    /// One byte of the first platform's last layer is flipped, so it no longer matches its name.
    WrongDigest,
}

// ---------------------------------------------------------------------------------------------
// Writers

impl ImageSpec {
    /// Writes an OCI image layout directory at `dir` (created if needed): `oci-layout`,
    /// `blobs/sha256/<hex>` and, last, `index.json` naming the top-level manifest or index,
    /// annotated with `tag` as `org.opencontainers.image.ref.name` when given.
    pub fn write_oci_layout(&self, dir: &Path, tag: Option<&str>) -> Result<GeneratedImage> {
        let image = self.assemble(dir, &self.registry_options(None))?;
        fs::write(dir.join("oci-layout"), oci_layout_marker()).context("writing oci-layout")?;
        let index = layout_index(&[layout_entry(&image.top, tag)]);
        fs::write(dir.join("index.json"), index).context("writing index.json")?;
        Ok(image.into_generated(dir, ImageFormat::OciLayout, image_blobs, None))
    }

    /// Writes the OCI layout as a tar file, like `skopeo copy ... oci-archive:PATH:TAG`, with
    /// `index.json` as the last entry.
    pub fn write_oci_archive(&self, path: &Path, tag: Option<&str>) -> Result<GeneratedImage> {
        self.write_archive(path, tag, None)
    }

    /// [`Self::write_oci_archive`], spoiled as `tamper` says.
    pub fn write_oci_archive_with(
        &self,
        path: &Path,
        tag: Option<&str>,
        tamper: Tamper,
    ) -> Result<GeneratedImage> {
        self.write_archive(path, tag, Some(tamper))
    }

    /// Writes the legacy `docker save` format of Docker ≤ 24: `<id>/VERSION`, `<id>/json`,
    /// `<id>/layer.tar` (uncompressed) per layer, `<config-hex>.json`, `manifest.json` and
    /// `repositories`. Single platform only; `media_types` and `gzip` do not apply.
    pub fn write_docker_save_legacy(
        &self,
        path: &Path,
        repo_tags: &[&str],
    ) -> Result<GeneratedImage> {
        self.ensure_single_platform(ImageFormat::DockerSaveLegacy)?;
        let refs = parse_docker_refs(repo_tags)?;
        let staging = staging_dir(path)?;
        let image = self.assemble(staging.path(), &docker_save_options())?;
        let entries = legacy_entries(staging.path(), &image.platforms[0], &refs)?;
        write_tar(path, sorted(entries))?;
        Ok(image.into_generated(path, ImageFormat::DockerSaveLegacy, legacy_blobs, None))
    }

    /// Writes the `docker save` format of Docker 25+: an OCI layout in a tar with uncompressed
    /// layers (`application/vnd.oci.image.layer.v1.tar`), index.json entries annotated per tag,
    /// plus `manifest.json` and `repositories` for older readers. Single platform only.
    pub fn write_docker_save_oci(&self, path: &Path, repo_tags: &[&str]) -> Result<GeneratedImage> {
        self.ensure_single_platform(ImageFormat::DockerSaveOci)?;
        let refs = parse_docker_refs(repo_tags)?;
        let staging = staging_dir(path)?;
        let image = self.assemble(staging.path(), &docker_save_options())?;
        let mut entries = vec![
            ArchiveEntry::dir("blobs/"),
            ArchiveEntry::dir("blobs/sha256/"),
        ];
        entries.extend(blob_entries(staging.path(), &image.blobs, None));
        entries.push(ArchiveEntry::bytes("oci-layout", oci_layout_marker()));
        entries.push(ArchiveEntry::bytes(
            "index.json",
            docker_oci_index(&image.top, &refs),
        ));
        let image_files = &image.platforms[0];
        let config_name = format!("blobs/sha256/{}", image_files.config.hex());
        let layer_names = image_files
            .layers
            .iter()
            .map(|l| format!("blobs/sha256/{}", l.blob.hex()))
            .collect();
        let top_layer_id = image_files.layers.last().map(|l| l.blob.hex());
        entries.extend(docker_manifest_entries(
            &refs,
            config_name,
            layer_names,
            top_layer_id,
        )?);
        write_tar(path, sorted(entries))?;
        Ok(image.into_generated(path, ImageFormat::DockerSaveOci, image_blobs, None))
    }

    fn write_archive(
        &self,
        path: &Path,
        tag: Option<&str>,
        tamper: Option<Tamper>,
    ) -> Result<GeneratedImage> {
        let staging = staging_dir(path)?;
        let image = self.assemble(staging.path(), &self.registry_options(tamper))?;
        let target = tamper.map(|_| image.tamper_target()).transpose()?;
        let mut skipped = None;
        match (tamper, &target) {
            (Some(Tamper::WrongDigest), Some(blob)) => {
                corrupt_file(&blob_path(staging.path(), &blob.digest), blob.size / 2)?;
            }
            (Some(Tamper::MissingBlob), Some(blob)) => skipped = Some(blob.digest.as_str()),
            _ => {}
        }
        let mut entries = vec![ArchiveEntry::bytes("oci-layout", oci_layout_marker())];
        entries.push(ArchiveEntry::dir("blobs/"));
        entries.push(ArchiveEntry::dir("blobs/sha256/"));
        entries.extend(blob_entries(staging.path(), &image.blobs, skipped));
        match tamper {
            Some(Tamper::PathTraversal) => {
                entries.push(ArchiveEntry::raw("../evil", b"shoal traversal probe\n"))
            }
            Some(Tamper::AbsolutePath) => entries.push(ArchiveEntry::raw(
                "/tmp/shoal-evil",
                b"shoal absolute probe\n",
            )),
            _ => {}
        }
        entries.push(ArchiveEntry::bytes(
            "index.json",
            layout_index(&[layout_entry(&image.top, tag)]),
        ));
        write_tar(path, entries)?;
        Ok(image.into_generated(path, ImageFormat::OciArchive, image_blobs, target))
    }

    fn registry_options(&self, tamper: Option<Tamper>) -> AssembleOptions {
        let declared_size = match tamper {
            Some(Tamper::AbsurdSize(size)) => Some(size),
            _ => None,
        };
        AssembleOptions {
            media_types: self.media_types,
            encoding: LayerEncoding::Gzip(self.gzip),
            declared_size,
        }
    }
}

fn docker_save_options() -> AssembleOptions {
    AssembleOptions {
        media_types: MediaTypes::Oci,
        encoding: LayerEncoding::Uncompressed,
        declared_size: None,
    }
}

/// A temporary directory beside `output`, so staged blobs sit on the same filesystem (not on a
/// possibly RAM-backed /tmp) and vanish when the archive is written.
fn staging_dir(output: &Path) -> Result<tempfile::TempDir> {
    let parent = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".shoal-image-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))
}

fn oci_layout_marker() -> Vec<u8> {
    br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()
}

fn layout_entry(top: &Blob, tag: Option<&str>) -> Value {
    let mut entry = top.descriptor();
    if let Some(tag) = tag {
        entry["annotations"] = json!({ ANNOTATION_REF_NAME: tag });
    }
    entry
}

fn layout_index(entries: &[Value]) -> Vec<u8> {
    json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries })
        .to_string()
        .into_bytes()
}

fn blob_entries(root: &Path, blobs: &[Blob], skipped: Option<&str>) -> Vec<ArchiveEntry> {
    blobs
        .iter()
        .filter(|blob| Some(blob.digest.as_str()) != skipped)
        .map(|blob| {
            ArchiveEntry::file(
                &format!("blobs/sha256/{}", blob.hex()),
                blob_path(root, &blob.digest),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Docker save formats

/// A `repo:tag` as `docker save` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DockerRef {
    /// The repository as given (`alpine`, `example.com/team/app`).
    repo: String,
    tag: String,
    /// The fully qualified name (`docker.io/library/alpine:3`), as containerd stores it.
    full: String,
}

fn parse_docker_refs(repo_tags: &[&str]) -> Result<Vec<DockerRef>> {
    repo_tags.iter().map(|r| parse_docker_ref(r)).collect()
}

fn parse_docker_ref(repo_tag: &str) -> Result<DockerRef> {
    ensure!(
        !repo_tag.is_empty() && !repo_tag.contains('@'),
        "not a repo:tag reference: {repo_tag:?}"
    );
    let name_start = repo_tag.rfind('/').map_or(0, |slash| slash + 1);
    let (repo, tag) = match repo_tag[name_start..].rfind(':') {
        Some(colon) => repo_tag.split_at(name_start + colon),
        None => (repo_tag, ":latest"),
    };
    let tag = &tag[1..];
    ensure!(
        !repo.is_empty() && !tag.is_empty(),
        "not a repo:tag reference: {repo_tag:?}"
    );
    let first = repo.split('/').next().unwrap_or(repo);
    let has_domain =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = match (has_domain, repo.contains('/')) {
        (true, _) => format!("{repo}:{tag}"),
        (false, true) => format!("docker.io/{repo}:{tag}"),
        (false, false) => format!("docker.io/library/{repo}:{tag}"),
    };
    Ok(DockerRef {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        full,
    })
}

fn docker_oci_index(manifest: &Blob, refs: &[DockerRef]) -> Vec<u8> {
    if refs.is_empty() {
        return layout_index(&[manifest.descriptor()]);
    }
    let entries: Vec<Value> = refs
        .iter()
        .map(|r| {
            let mut entry = manifest.descriptor();
            entry["annotations"] =
                json!({ ANNOTATION_CONTAINERD_NAME: r.full, ANNOTATION_REF_NAME: r.tag });
            entry
        })
        .collect();
    layout_index(&entries)
}

/// `manifest.json` and (when tagged) `repositories`: the index older Docker readers use, naming
/// the config and layer files by their paths inside the archive.
fn docker_manifest_entries(
    refs: &[DockerRef],
    config_name: String,
    layer_names: Vec<String>,
    top_layer_id: Option<&str>,
) -> Result<Vec<ArchiveEntry>> {
    let repo_tags: Vec<String> = refs
        .iter()
        .map(|r| format!("{}:{}", r.repo, r.tag))
        .collect();
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": if repo_tags.is_empty() { Value::Null } else { json!(repo_tags) },
        "Layers": layer_names,
    }]);
    let mut entries = vec![ArchiveEntry::bytes(
        "manifest.json",
        manifest.to_string().into_bytes(),
    )];
    if let (Some(top_layer_id), false) = (top_layer_id, refs.is_empty()) {
        entries.push(ArchiveEntry::bytes(
            "repositories",
            repositories_json(refs, top_layer_id)?,
        ));
    }
    Ok(entries)
}

fn repositories_json(refs: &[DockerRef], top_id: &str) -> Result<Vec<u8>> {
    let mut repositories = serde_json::Map::new();
    for r in refs {
        let tags = repositories
            .entry(r.repo.clone())
            .or_insert_with(|| json!({}));
        let tags = tags
            .as_object_mut()
            .ok_or_else(|| anyhow!("repositories entry is not an object"))?;
        tags.insert(r.tag.clone(), json!(top_id));
    }
    Ok(Value::Object(repositories).to_string().into_bytes())
}

/// Docker's v1 layer ids: a chain where each id hashes its parent's id and its own diff_id.
fn legacy_layer_ids(layers: &[LayerBlob]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(layers.len());
    for layer in layers {
        let parent = ids.last().map_or("", String::as_str);
        ids.push(hex::encode(Sha256::digest(format!(
            "{parent}\n{}",
            layer.diff_id
        ))));
    }
    ids
}

fn legacy_entries(
    root: &Path,
    image: &PlatformImage,
    refs: &[DockerRef],
) -> Result<Vec<ArchiveEntry>> {
    let ids = legacy_layer_ids(&image.layers);
    let config_name = format!("{}.json", image.config.hex());
    let mut entries = vec![ArchiveEntry::file(
        &config_name,
        blob_path(root, &image.config.digest),
    )];
    for (position, (layer, id)) in image.layers.iter().zip(&ids).enumerate() {
        let parent = position.checked_sub(1).map(|p| ids[p].as_str());
        entries.push(ArchiveEntry::dir(&format!("{id}/")));
        entries.push(ArchiveEntry::bytes(
            &format!("{id}/VERSION"),
            b"1.0".to_vec(),
        ));
        entries.push(ArchiveEntry::bytes(
            &format!("{id}/json"),
            legacy_layer_json(id, parent, &image.platform),
        ));
        entries.push(ArchiveEntry::file(
            &format!("{id}/layer.tar"),
            blob_path(root, &layer.blob.digest),
        ));
    }
    let layer_names = ids.iter().map(|id| format!("{id}/layer.tar")).collect();
    entries.extend(docker_manifest_entries(
        refs,
        config_name,
        layer_names,
        ids.last().map(String::as_str),
    )?);
    Ok(entries)
}

fn legacy_layer_json(id: &str, parent: Option<&str>, platform: &Platform) -> Vec<u8> {
    let mut value = json!({ "id": id, "created": CREATED, "os": platform.os, "architecture": platform.architecture });
    if let Some(parent) = parent {
        value["parent"] = json!(parent);
    }
    value.to_string().into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Assembling blobs: layers, configs, manifests, index

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerEncoding {
    Gzip(GzipLevel),
    Uncompressed,
}

#[derive(Debug, Clone)]
struct AssembleOptions {
    media_types: MediaTypes,
    encoding: LayerEncoding,
    /// Size the first platform's manifest declares for its last layer, instead of the real one.
    declared_size: Option<u64>,
}

/// Every blob of an image, written under `<root>/blobs/sha256/`.
#[derive(Debug)]
struct Assembled {
    platforms: Vec<PlatformImage>,
    top: Blob,
    blobs: Vec<Blob>,
}

impl Assembled {
    fn tamper_target(&self) -> Result<Blob> {
        let first = self.platforms.first().and_then(|p| p.layers.last());
        first
            .map(|l| l.blob.clone())
            .ok_or_else(|| anyhow!("tampering needs an image with at least one layer"))
    }

    fn into_generated(
        self,
        path: &Path,
        format: ImageFormat,
        select_blobs: fn(&Assembled) -> Vec<Blob>,
        tampered: Option<Blob>,
    ) -> GeneratedImage {
        let blobs = select_blobs(&self);
        GeneratedImage {
            path: path.to_owned(),
            format,
            manifest_digest: self.top.digest,
            manifest_media_type: self.top.media_type,
            manifest_size: self.top.size,
            platforms: self.platforms,
            total_bytes: blobs.iter().map(|b| b.size).sum(),
            blobs,
            tampered,
        }
    }
}

fn image_blobs(image: &Assembled) -> Vec<Blob> {
    image.blobs.clone()
}

fn legacy_blobs(image: &Assembled) -> Vec<Blob> {
    let per_platform = |p: &PlatformImage| {
        let mut blobs = vec![p.config.clone()];
        blobs.extend(p.layers.iter().map(|l| l.blob.clone()));
        blobs
    };
    image.platforms.iter().flat_map(per_platform).collect()
}

/// What one layer contains. Layer 0 is shared by all platforms, so its plan ignores the platform.
#[derive(Debug, Clone)]
struct LayerPlan {
    index: usize,
    seed: u64,
    payload_bytes: u64,
    /// Whether this is the base layer carrying the root filesystem skeleton.
    base: bool,
    with_busybox: bool,
}

impl ImageSpec {
    /// The distinct layers to generate: layer 0 once, then layers 1.. for each platform.
    fn layer_plans(&self, platform_count: usize) -> Vec<LayerPlan> {
        let mut plans = Vec::new();
        for platform in 0..platform_count {
            for (index, &payload_bytes) in self.layers.iter().enumerate() {
                if index == 0 && platform > 0 {
                    continue;
                }
                let seed = mix(self.seed, platform as u64, index as u64);
                plans.push(LayerPlan {
                    index,
                    seed,
                    payload_bytes,
                    base: index == 0,
                    with_busybox: self.with_busybox,
                });
            }
        }
        plans
    }

    /// Position in [`Self::layer_plans`] of layer `index` of platform `platform`.
    fn plan_position(&self, platform: usize, index: usize) -> usize {
        match index {
            0 => 0,
            _ => platform * (self.layers.len() - 1) + index,
        }
    }

    fn assemble(&self, root: &Path, options: &AssembleOptions) -> Result<Assembled> {
        ensure!(
            !self.with_busybox || !self.layers.is_empty(),
            "with_busybox needs at least one layer"
        );
        let blob_dir = root.join("blobs").join("sha256");
        fs::create_dir_all(&blob_dir)
            .with_context(|| format!("creating {}", blob_dir.display()))?;
        let platforms = self.effective_platforms();
        let layers = generate_layers(&blob_dir, &self.layer_plans(platforms.len()), options)?;
        let mut blobs = BlobList::default();
        layers.iter().for_each(|l| blobs.push(&l.blob));
        let mut images = Vec::with_capacity(platforms.len());
        for (position, platform) in platforms.into_iter().enumerate() {
            let layers: Vec<LayerBlob> = (0..self.layers.len())
                .map(|i| layers[self.plan_position(position, i)].clone())
                .collect();
            let config = write_json_blob(
                &blob_dir,
                &self.config_json(&platform, &layers),
                options.media_types.config(),
            )?;
            let declared_size = options.declared_size.filter(|_| position == 0);
            let manifest_json = manifest_json(options.media_types, &config, &layers, declared_size);
            let manifest =
                write_json_blob(&blob_dir, &manifest_json, options.media_types.manifest())?;
            blobs.push(&config);
            blobs.push(&manifest);
            images.push(PlatformImage {
                platform,
                manifest,
                config,
                layers,
            });
        }
        let top = match images.as_slice() {
            [single] => single.manifest.clone(),
            _ => write_json_blob(
                &blob_dir,
                &index_json(options.media_types, &images),
                options.media_types.index(),
            )?,
        };
        blobs.push(&top);
        Ok(Assembled {
            platforms: images,
            top,
            blobs: blobs.0,
        })
    }

    fn config_json(&self, platform: &Platform, layers: &[LayerBlob]) -> Value {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let history: Vec<Value> = (0..layers.len())
            .map(|i| json!({ "created": CREATED, "created_by": format!("shoal-tests image generator: layer {i}") }))
            .collect();
        let mut config = json!({
            "created": CREATED,
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {
                "Env": [DEFAULT_PATH_ENV],
                "Cmd": ["/bin/sh"],
                "WorkingDir": "/",
                "Labels": { "org.shoal.tests.seed": self.seed.to_string() },
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        if let Some(variant) = &platform.variant {
            config["variant"] = json!(variant);
        }
        config
    }
}

fn manifest_json(
    media_types: MediaTypes,
    config: &Blob,
    layers: &[LayerBlob],
    last_layer_size: Option<u64>,
) -> Value {
    let mut descriptors: Vec<Value> = layers.iter().map(|l| l.blob.descriptor()).collect();
    if let (Some(size), Some(last)) = (last_layer_size, descriptors.last_mut()) {
        last["size"] = json!(size);
    }
    json!({
        "schemaVersion": 2,
        "mediaType": media_types.manifest(),
        "config": config.descriptor(),
        "layers": descriptors,
    })
}

fn index_json(media_types: MediaTypes, images: &[PlatformImage]) -> Value {
    let manifests: Vec<Value> = images
        .iter()
        .map(|image| {
            let mut entry = image.manifest.descriptor();
            entry["platform"] = image.platform.to_json();
            entry
        })
        .collect();
    json!({ "schemaVersion": 2, "mediaType": media_types.index(), "manifests": manifests })
}

/// Blobs in the order they were made, each digest once.
#[derive(Debug, Default)]
struct BlobList(Vec<Blob>);

impl BlobList {
    fn push(&mut self, blob: &Blob) {
        if !self.0.iter().any(|b| b.digest == blob.digest) {
            self.0.push(blob.clone());
        }
    }
}

fn write_json_blob(blob_dir: &Path, value: &Value, media_type: &str) -> Result<Blob> {
    let bytes = serde_json::to_vec(value).context("serialising JSON")?;
    let digest = sha256_digest(&bytes);
    let path = blob_dir.join(digest_hex(&digest));
    fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(Blob {
        digest,
        size: bytes.len() as u64,
        media_type: media_type.to_owned(),
    })
}

/// Writes every planned layer, on as many threads as there are cores; results keep plan order.
fn generate_layers(
    blob_dir: &Path,
    plans: &[LayerPlan],
    options: &AssembleOptions,
) -> Result<Vec<LayerBlob>> {
    let workers = thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(plans.len())
        .max(1);
    let media_type = options
        .media_types
        .layer(matches!(options.encoding, LayerEncoding::Gzip(_)));
    let encoding = options.encoding;
    thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                scope.spawn(move || -> Result<Vec<(usize, LayerBlob)>> {
                    let mine = plans.iter().enumerate().skip(worker).step_by(workers);
                    mine.map(|(i, plan)| {
                        Ok((i, write_layer(blob_dir, i, plan, encoding, media_type)?))
                    })
                    .collect()
                })
            })
            .collect();
        let mut layers = Vec::with_capacity(plans.len());
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| anyhow!("a layer generator thread panicked"))??;
            layers.extend(part);
        }
        layers.sort_by_key(|(i, _)| *i);
        Ok(layers.into_iter().map(|(_, layer)| layer).collect())
    })
}

/// Streams one layer tar, through gzip when asked, to `blob_dir/<hex>`, hashing both forms.
fn write_layer(
    blob_dir: &Path,
    position: usize,
    plan: &LayerPlan,
    encoding: LayerEncoding,
    media_type: &str,
) -> Result<LayerBlob> {
    let temp_path = blob_dir.join(format!(".layer-{position}.partial"));
    let file =
        File::create(&temp_path).with_context(|| format!("creating {}", temp_path.display()))?;
    let file = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    let (file, tar, blob) = match encoding {
        LayerEncoding::Uncompressed => {
            let (file, tar) = write_layer_tar(HashingWriter::new(file), plan)?.finish();
            (file, tar.clone(), tar)
        }
        LayerEncoding::Gzip(level) => {
            let gzip = GzEncoder::new(HashingWriter::new(file), level.into());
            let (gzip, tar) = write_layer_tar(HashingWriter::new(gzip), plan)?.finish();
            let (file, blob) = gzip.finish().context("finishing gzip stream")?.finish();
            (file, tar, blob)
        }
    };
    file.into_inner()
        .map_err(io::IntoInnerError::into_error)
        .context("flushing layer")?;
    let (digest, size) = blob;
    fs::rename(&temp_path, blob_dir.join(digest_hex(&digest))).context("naming layer blob")?;
    let blob = Blob {
        digest,
        size,
        media_type: media_type.to_owned(),
    };
    Ok(LayerBlob {
        blob,
        diff_id: tar.0,
        uncompressed_size: tar.1,
    })
}

// ---------------------------------------------------------------------------------------------
// Layer contents

fn write_layer_tar<W: Write>(writer: W, plan: &LayerPlan) -> Result<W> {
    let mut tar = Builder::new(writer);
    if plan.base {
        append_root_skeleton(&mut tar)?;
        if plan.with_busybox {
            append_busybox(&mut tar)?;
        }
    }
    let dir = format!("shoal/layer-{}", plan.index);
    append_dir(&mut tar, "shoal/")?;
    append_dir(&mut tar, &format!("{dir}/"))?;
    let readme = format!(
        "shoal-tests generated layer {}\nseed {:016x}\n",
        plan.index, plan.seed
    );
    append_bytes(&mut tar, &format!("{dir}/README"), readme.as_bytes(), 0o644)?;
    for (number, size) in file_sizes(plan.payload_bytes).into_iter().enumerate() {
        let content = PrngReader::new(mix(plan.seed, number as u64, 1), size);
        append_stream(
            &mut tar,
            &format!("{dir}/data-{number:03}.bin"),
            size,
            content,
        )?;
    }
    tar.into_inner().context("finishing layer tar")
}

/// What a runtime expects to find or mount over in a root filesystem.
fn append_root_skeleton<W: Write>(tar: &mut Builder<W>) -> Result<()> {
    for dir in ["bin/", "dev/", "etc/", "proc/", "sys/"] {
        append_dir(tar, dir)?;
    }
    append_dir_mode(tar, "root/", 0o700)?;
    append_dir_mode(tar, "tmp/", 0o1777)?;
    append_bytes(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    append_bytes(tar, "etc/group", b"root:x:0:\n", 0o644)?;
    append_bytes(
        tar,
        "etc/os-release",
        b"NAME=\"Shoal test image\"\nID=shoal-test\n",
        0o644,
    )
}

fn append_busybox<W: Write>(tar: &mut Builder<W>) -> Result<()> {
    let file = File::open(BUSYBOX_PATH)
        .with_context(|| format!("opening {BUSYBOX_PATH} (Debian busybox-static)"))?;
    let size = file.metadata().context("reading busybox metadata")?.len();
    let mut header = entry_header(EntryType::Regular, size, 0o755);
    tar.append_data(&mut header, "bin/busybox", file)
        .context("adding bin/busybox")?;
    for applet in ["bin/sh", "bin/true"] {
        let mut header = entry_header(EntryType::Symlink, 0, 0o777);
        tar.append_link(&mut header, applet, "busybox")
            .with_context(|| format!("adding {applet}"))?;
    }
    Ok(())
}

/// Splits a layer's payload into files of at most [`FILE_BYTES_MAX`].
fn file_sizes(payload_bytes: u64) -> Vec<u64> {
    let mut sizes = vec![FILE_BYTES_MAX; (payload_bytes / FILE_BYTES_MAX) as usize];
    let remainder = payload_bytes % FILE_BYTES_MAX;
    if remainder != 0 {
        sizes.push(remainder);
    }
    sizes
}

fn entry_header(kind: EntryType, size: u64, mode: u32) -> Header {
    let mut header = Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(ENTRY_MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_dir<W: Write>(tar: &mut Builder<W>, name: &str) -> Result<()> {
    append_dir_mode(tar, name, 0o755)
}

fn append_dir_mode<W: Write>(tar: &mut Builder<W>, name: &str, mode: u32) -> Result<()> {
    let mut header = entry_header(EntryType::Directory, 0, mode);
    tar.append_data(&mut header, name, io::empty())
        .with_context(|| format!("adding directory {name}"))
}

fn append_bytes<W: Write>(tar: &mut Builder<W>, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let mut header = entry_header(EntryType::Regular, bytes.len() as u64, mode);
    tar.append_data(&mut header, name, bytes)
        .with_context(|| format!("adding {name}"))
}

fn append_stream<W: Write>(
    tar: &mut Builder<W>,
    name: &str,
    size: u64,
    content: impl Read,
) -> Result<()> {
    let mut header = entry_header(EntryType::Regular, size, 0o644);
    tar.append_data(&mut header, name, content)
        .with_context(|| format!("adding {name}"))
}

/// Appends a regular file whose name is written byte for byte, bypassing the tar crate's path
/// checks, which is the only way to make `..` or absolute entries.
fn append_raw_name<W: Write>(tar: &mut Builder<W>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut header = entry_header(EntryType::Regular, bytes.len() as u64, 0o644);
    let field = &mut header.as_old_mut().name;
    ensure!(name.len() < field.len(), "raw entry name too long: {name}");
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
    header.set_cksum();
    tar.append(&header, bytes)
        .with_context(|| format!("adding raw entry {name}"))
}

// ---------------------------------------------------------------------------------------------
// Archive output

#[derive(Debug)]
enum EntryContent {
    Dir,
    Bytes(Vec<u8>),
    File(PathBuf),
    /// Bytes under a name that is not checked (hostile entries).
    Raw(Vec<u8>),
}

#[derive(Debug)]
struct ArchiveEntry {
    name: String,
    content: EntryContent,
}

impl ArchiveEntry {
    fn dir(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            content: EntryContent::Dir,
        }
    }

    fn bytes(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.to_owned(),
            content: EntryContent::Bytes(bytes),
        }
    }

    fn file(name: &str, path: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            content: EntryContent::File(path),
        }
    }

    fn raw(name: &str, bytes: &[u8]) -> Self {
        Self {
            name: name.to_owned(),
            content: EntryContent::Raw(bytes.to_vec()),
        }
    }
}

/// Entries by name, the order `docker save` writes them in.
fn sorted(mut entries: Vec<ArchiveEntry>) -> Vec<ArchiveEntry> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

fn write_tar(path: &Path, entries: Vec<ArchiveEntry>) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut tar = Builder::new(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file));
    for entry in entries {
        match entry.content {
            EntryContent::Dir => append_dir(&mut tar, &entry.name)?,
            EntryContent::Bytes(bytes) => append_bytes(&mut tar, &entry.name, &bytes, 0o644)?,
            EntryContent::Raw(bytes) => append_raw_name(&mut tar, &entry.name, &bytes)?,
            EntryContent::File(source) => {
                let file =
                    File::open(&source).with_context(|| format!("opening {}", source.display()))?;
                let size = file.metadata().context("reading blob metadata")?.len();
                append_stream(&mut tar, &entry.name, size, file)?;
            }
        }
    }
    let writer = tar.into_inner().context("finishing archive")?;
    writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)
        .context("flushing archive")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hostile-input helpers

/// Flips every bit of the byte at `offset` of `path`, in place.
pub fn corrupt_file(path: &Path, offset: u64) -> Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    ensure!(
        offset < len,
        "offset {offset} is past the end of {} ({len} bytes)",
        path.display()
    );
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut byte)?;
    byte[0] ^= 0xff;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&byte)?;
    Ok(())
}

/// Cuts `path` down to its first `len` bytes.
pub fn truncate_file(path: &Path, len: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let current = file.metadata()?.len();
    if len > current {
        bail!(
            "cannot truncate {} ({current} bytes) to a larger {len}",
            path.display()
        );
    }
    file.set_len(len)
        .with_context(|| format!("truncating {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Digests and pseudo-random content

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn blob_path(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs").join("sha256").join(digest_hex(digest))
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer and (`sha256:<hex>`, byte count) of everything written.
    fn finish(self) -> (W, (String, u64)) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, (digest, self.bytes))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Derives an independent seed from a seed and two labels.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut rng = SplitMix64::new(
        seed ^ mix64(a.wrapping_add(0x51)) ^ mix64(b.wrapping_add(0x5eed).rotate_left(17)),
    );
    rng.next_u64()
}

/// `len` pseudo-random bytes; the 8-byte word at position `w` is a pure function of seed and
/// `w`, so the stream is the same whatever sizes the reader is asked for.
#[derive(Debug)]
struct PrngReader {
    seed: u64,
    position: u64,
    len: u64,
}

impl PrngReader {
    fn new(seed: u64, len: u64) -> Self {
        Self {
            seed,
            position: 0,
            len,
        }
    }

    fn word(&self, index: u64) -> [u8; 8] {
        mix64(self.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes()
    }
}

impl Read for PrngReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.len - self.position).unwrap_or(usize::MAX));
        let buf = &mut buf[..want];
        let mut filled = 0;
        // Unaligned head, byte by byte, up to the next word boundary.
        while filled < buf.len() && !(self.position + filled as u64).is_multiple_of(8) {
            let at = self.position + filled as u64;
            buf[filled] = self.word(at / 8)[(at % 8) as usize];
            filled += 1;
        }
        let mut words = buf[filled..].chunks_exact_mut(8);
        for chunk in &mut words {
            chunk.copy_from_slice(&self.word((self.position + filled as u64) / 8));
            filled += 8;
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let word = self.word((self.position + filled as u64) / 8);
            let tail_len = tail.len();
            tail.copy_from_slice(&word[..tail_len]);
            filled += tail_len;
        }
        self.position += filled as u64;
        Ok(filled)
    }
}

#[cfg(test)]
mod tests;

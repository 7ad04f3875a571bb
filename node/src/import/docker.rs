//! Describing a legacy `docker save` archive (Docker up to 24): `manifest.json` naming a
//! config file and uncompressed `layer.tar` files. The store keeps registry content, so the
//! import writes the OCI image manifest a registry would serve for it: the config as
//! `application/vnd.oci.image.config.v1+json` and each layer as an uncompressed
//! `application/vnd.oci.image.layer.v1.tar`. Each layer is checked against the config's
//! `rootfs.diff_ids`, the only digests such an archive carries.

use shoal_protocol::{Digest, media_type};

use super::archive::ArchiveContents;
use super::{ImportError, ManifestGraph, NamedImage, parse_tag_name};
use crate::store::Staging;

/// Most images one `manifest.json` may list.
const IMAGES_PER_ARCHIVE_MAX: usize = 1_000;

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(serde::Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(serde::Deserialize)]
struct RootFs {
    diff_ids: Vec<Digest>,
}

pub(super) fn describe(
    contents: &ArchiveContents,
    staging: &mut Staging,
    graph: &mut ManifestGraph,
) -> Result<Vec<NamedImage>, ImportError> {
    let saved: Vec<SavedImage> =
        serde_json::from_slice(contents.small("manifest.json").unwrap_or_default())
            .map_err(|error| ImportError::BadLayout(format!("manifest.json: {error}")))?;
    if saved.is_empty() || saved.len() > IMAGES_PER_ARCHIVE_MAX {
        return Err(ImportError::BadLayout(format!(
            "manifest.json lists {} images",
            saved.len()
        )));
    }
    saved
        .iter()
        .map(|image| describe_one(contents, staging, graph, image))
        .collect()
}

fn describe_one(
    contents: &ArchiveContents,
    staging: &mut Staging,
    graph: &mut ManifestGraph,
    image: &SavedImage,
) -> Result<NamedImage, ImportError> {
    let config_bytes = config_bytes(contents, staging, &image.config)?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|error| ImportError::BadLayout(format!("config {}: {error}", image.config)))?;
    if config.rootfs.diff_ids.len() != image.layers.len() {
        return Err(ImportError::BadLayout(format!(
            "config {} lists {} layers but manifest.json lists {}",
            image.config,
            config.rootfs.diff_ids.len(),
            image.layers.len()
        )));
    }
    let mut layers = Vec::new();
    for (path, diff_id) in image.layers.iter().zip(&config.rootfs.diff_ids) {
        let (digest, size) = contents.staged(path).ok_or_else(|| {
            ImportError::BadLayout(format!("layer {path} listed in manifest.json is missing"))
        })?;
        if digest != *diff_id {
            return Err(ImportError::BadLayout(format!(
                "layer {path} has digest {digest} but the config says {diff_id}"
            )));
        }
        layers.push(serde_json::json!({ "mediaType": media_type::OCI_LAYER_TAR, "digest": digest, "size": size }));
    }
    let (config_digest, config_size) =
        staging.write_blob(&config_bytes[..], None, &image.config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": { "mediaType": media_type::OCI_CONFIG, "digest": config_digest, "size": config_size },
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|error| ImportError::BadLayout(format!("cannot encode manifest: {error}")))?;
    let (digest, size) = staging.write_blob(&manifest_bytes[..], None, "generated manifest")?;
    graph.walk(
        staging,
        digest,
        media_type::OCI_MANIFEST,
        size,
        "manifest.json",
        0,
    )?;
    let names = image
        .repo_tags
        .iter()
        .flatten()
        .map(|name| parse_tag_name(name))
        .collect::<Result<_, _>>()?;
    Ok(NamedImage {
        digest,
        media_type: media_type::OCI_MANIFEST.to_owned(),
        names,
    })
}

fn config_bytes(
    contents: &ArchiveContents,
    staging: &Staging,
    path: &str,
) -> Result<Vec<u8>, ImportError> {
    if let Some(bytes) = contents.small(path) {
        return Ok(bytes.to_vec());
    }
    let missing =
        || ImportError::BadLayout(format!("config {path} listed in manifest.json is missing"));
    let (digest, _) = contents.staged(path).ok_or_else(missing)?;
    let limit = shoal_protocol::manifest::MANIFEST_BYTES_MAX as u64;
    staging.read_small(&digest, limit)?.ok_or_else(missing)
}

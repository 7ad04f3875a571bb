//! Describing an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), as skopeo,
//! umoci, buildkit and Docker 25+ `docker save` write it.

use shoal_protocol::{ImageRef, ParsedManifest, media_type};

use super::archive::ArchiveContents;
use super::{ImportError, ManifestGraph, NamedImage, parse_tag_name};
use crate::store::Staging;

/// The full image name containerd and Docker 25+ record in `index.json`.
const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation: either a bare tag or a full reference.
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayout {
    image_layout_version: String,
}

pub(super) fn describe(
    contents: &ArchiveContents,
    staging: &mut Staging,
    graph: &mut ManifestGraph,
) -> Result<Vec<NamedImage>, ImportError> {
    let layout = contents.small("oci-layout").ok_or_else(|| {
        ImportError::BadLayout("index.json without an oci-layout file".to_owned())
    })?;
    let layout: OciLayout = serde_json::from_slice(layout)
        .map_err(|error| ImportError::BadLayout(format!("oci-layout: {error}")))?;
    if !layout.image_layout_version.starts_with("1.") {
        return Err(ImportError::BadLayout(format!(
            "image layout version {} is not supported",
            layout.image_layout_version
        )));
    }
    let index_bytes = contents.small("index.json").unwrap_or_default();
    let index = ParsedManifest::parse(index_bytes, Some(media_type::OCI_INDEX))
        .map_err(|error| ImportError::BadLayout(format!("index.json: {error}")))?;
    if index.manifests.is_empty() {
        return Err(ImportError::BadLayout(
            "index.json lists no images".to_owned(),
        ));
    }
    let mut images = Vec::new();
    for descriptor in &index.manifests {
        graph.walk(
            staging,
            descriptor.digest,
            &descriptor.media_type,
            descriptor.size,
            "index.json",
            0,
        )?;
        images.push(NamedImage {
            digest: descriptor.digest,
            media_type: descriptor.media_type.clone(),
            names: names(&descriptor.annotations)?,
        });
    }
    Ok(images)
}

fn names(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<ImageRef>, ImportError> {
    let full_name = annotations.get(CONTAINERD_IMAGE_NAME).or_else(|| {
        annotations
            .get(OCI_REF_NAME)
            .filter(|name| name.contains('/') || name.contains(':'))
    });
    full_name
        .map(|name| parse_tag_name(name))
        .into_iter()
        .collect()
}

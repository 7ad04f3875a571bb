//! A one-layer image written straight into a store, for the store's own tests.

use shoal_protocol::{Digest, RepoName, media_type};

use super::{Commit, ManifestRecord, Store};

/// Stores a one-layer image in `repo`: (manifest, config, layer). Without `with_layer` the
/// layer's bytes are left out (the image is incomplete); with `tagged` the manifest is tagged
/// `1`.
pub(crate) fn store_image(
    store: &Store,
    repo: &str,
    layer: &[u8],
    with_layer: bool,
    tagged: bool,
) -> [Digest; 3] {
    store_image_in(store, "docker.io", repo, layer, with_layer, tagged)
}

/// [`store_image`] in a repository of `namespace`.
pub(crate) fn store_image_in(
    store: &Store,
    namespace: &str,
    repo: &str,
    layer: &[u8],
    with_layer: bool,
    tagged: bool,
) -> [Digest; 3] {
    let mut staging = store.staging().unwrap();
    let (layer, layer_size) = staging.write_blob(layer, None, "layer").unwrap();
    let config_bytes = format!("{{\"layer\":\"{layer}\"}}");
    let (config, config_size) = staging
        .write_blob(config_bytes.as_bytes(), None, "config")
        .unwrap();
    let manifest_bytes = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer, "size": layer_size}],
    })
    .to_string();
    let (manifest, size) = staging
        .write_blob(manifest_bytes.as_bytes(), None, "manifest")
        .unwrap();
    let repo = RepoName::new(namespace, repo).unwrap();
    let record = ManifestRecord {
        media_type: media_type::OCI_MANIFEST.to_owned(),
        size,
        artifact_type: None,
        subject: None,
        annotations: Default::default(),
    };
    let mut blobs = vec![manifest, config];
    if with_layer {
        blobs.push(layer);
    }
    staging
        .commit(Commit {
            blobs: blobs.into_iter().collect(),
            manifests: vec![(manifest, record)],
            repo_manifests: vec![(repo.clone(), manifest)],
            tags: tagged
                .then(|| (repo, "1".parse().unwrap(), manifest))
                .into_iter()
                .collect(),
        })
        .unwrap();
    [manifest, config, layer]
}

//! Unit tests of the image generator: digests, diff_ids, platforms, archive entries, determinism.

use super::*;
use flate2::read::GzDecoder;
use tar::Archive;

fn small_spec(seed: u64) -> ImageSpec {
    ImageSpec::new(seed).layer(100_000).layer(300_000)
}

fn sha(bytes: &[u8]) -> String {
    sha256_digest(bytes)
}

/// Every entry of a tar file: raw name and content.
fn tar_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = Archive::new(bytes);
    let mut entries = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        entries.push((name, content));
    }
    entries
}

fn entry<'a>(entries: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    let found = entries.iter().find(|(n, _)| n == name);
    &found.unwrap_or_else(|| panic!("no entry {name}")).1
}

fn names(entries: &[(String, Vec<u8>)]) -> Vec<&str> {
    entries.iter().map(|(n, _)| n.as_str()).collect()
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn oci_layout_blobs_match_their_digests_and_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let image = small_spec(1)
        .write_oci_layout(dir.path(), Some("v1"))
        .unwrap();
    assert_eq!(
        fs::read(dir.path().join("oci-layout")).unwrap(),
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    for blob in &image.blobs {
        let bytes = fs::read(image.layout_blob_path(&blob.digest).unwrap()).unwrap();
        assert_eq!(sha(&bytes), blob.digest);
        assert_eq!(bytes.len() as u64, blob.size);
    }
    assert_eq!(image.blobs.len(), 4, "two layers, a config, a manifest");
    assert_eq!(
        image.total_bytes,
        image.blobs.iter().map(|b| b.size).sum::<u64>()
    );

    let index = json_of(&fs::read(dir.path().join("index.json")).unwrap());
    let top = &index["manifests"][0];
    assert_eq!(top["digest"], image.manifest_digest.as_str());
    assert_eq!(top["mediaType"], OCI_MANIFEST);
    assert_eq!(top["annotations"][ANNOTATION_REF_NAME], "v1");

    let manifest = json_of(&fs::read(blob_path(dir.path(), &image.manifest_digest)).unwrap());
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["digest"], image.config_digest());
    assert_eq!(manifest["config"]["mediaType"], OCI_CONFIG);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (declared, layer) in layers.iter().zip(&image.platforms[0].layers) {
        assert_eq!(declared["digest"], layer.blob.digest.as_str());
        assert_eq!(declared["size"], layer.blob.size);
        assert_eq!(declared["mediaType"], OCI_LAYER_GZIP);
    }
}

#[test]
fn diff_ids_are_the_digests_of_the_uncompressed_layers() {
    let dir = tempfile::tempdir().unwrap();
    let image = small_spec(2).write_oci_layout(dir.path(), None).unwrap();
    let config = json_of(&fs::read(blob_path(dir.path(), image.config_digest())).unwrap());
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["rootfs"]["diff_ids"], json!(image.diff_ids()));
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    for (index, layer) in image.platforms[0].layers.iter().enumerate() {
        let tar = gunzip(&fs::read(blob_path(dir.path(), &layer.blob.digest)).unwrap());
        assert_eq!(sha(&tar), layer.diff_id);
        assert_eq!(tar.len() as u64, layer.uncompressed_size);
        let entries = tar_entries(&tar);
        let data = entry(&entries, &format!("shoal/layer-{index}/data-000.bin"));
        assert_eq!(data.len() as u64, small_spec(2).layers[index]);
        assert!(names(&entries).contains(&format!("shoal/layer-{index}/README").as_str()));
    }
    let base = tar_entries(&gunzip(
        &fs::read(blob_path(
            dir.path(),
            &image.platforms[0].layers[0].blob.digest,
        ))
        .unwrap(),
    ));
    for expected in ["bin/", "etc/passwd", "tmp/", "proc/"] {
        assert!(
            names(&base).contains(&expected),
            "base layer lacks {expected}"
        );
    }
}

#[test]
fn multi_platform_index_lists_every_platform_and_shares_only_the_first_layer() {
    for media_types in [MediaTypes::Oci, MediaTypes::Docker] {
        let dir = tempfile::tempdir().unwrap();
        let spec = small_spec(3)
            .platform("linux", "amd64")
            .platform_variant("linux", "arm64", "v8")
            .media_types(media_types);
        let image = spec.write_oci_layout(dir.path(), None).unwrap();
        assert_eq!(image.manifest_media_type, media_types.index());
        let index = json_of(&fs::read(blob_path(dir.path(), &image.manifest_digest)).unwrap());
        assert_eq!(index["mediaType"], media_types.index());
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0]["platform"],
            json!({"os": "linux", "architecture": "amd64"})
        );
        assert_eq!(
            entries[1]["platform"],
            json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
        );
        for (entry, platform) in entries.iter().zip(&image.platforms) {
            assert_eq!(entry["digest"], platform.manifest.digest.as_str());
            assert_eq!(entry["mediaType"], media_types.manifest());
            let config =
                json_of(&fs::read(blob_path(dir.path(), &platform.config.digest)).unwrap());
            assert_eq!(
                config["architecture"],
                platform.platform.architecture.as_str()
            );
        }
        let (amd, arm) = (&image.platforms[0].layers, &image.platforms[1].layers);
        assert_eq!(amd[0], arm[0], "first layer is shared");
        assert_ne!(
            amd[1].blob.digest, arm[1].blob.digest,
            "later layers are per platform"
        );
        assert_eq!(amd[1].blob.media_type, media_types.layer(true));
        // 3 distinct layers, 2 configs, 2 manifests, 1 index, each listed once.
        assert_eq!(image.blobs.len(), 8);
    }
}

#[test]
fn oci_archive_lists_the_layout_with_index_json_last() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    let image = small_spec(4)
        .write_oci_archive(&path, Some("latest"))
        .unwrap();
    let entries = tar_entries(&fs::read(&path).unwrap());
    let mut expected = vec![
        "oci-layout".to_owned(),
        "blobs/".to_owned(),
        "blobs/sha256/".to_owned(),
    ];
    expected.extend(
        image
            .blobs
            .iter()
            .map(|b| format!("blobs/sha256/{}", b.hex())),
    );
    expected.push("index.json".to_owned());
    assert_eq!(names(&entries), expected);
    for blob in &image.blobs {
        assert_eq!(
            sha(entry(&entries, &format!("blobs/sha256/{}", blob.hex()))),
            blob.digest
        );
    }
    let index = json_of(entry(&entries, "index.json"));
    assert_eq!(
        index["manifests"][0]["digest"],
        image.manifest_digest.as_str()
    );
    assert_eq!(
        index["manifests"][0]["annotations"][ANNOTATION_REF_NAME],
        "latest"
    );
    let staging_left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(staging_left.len(), 1, "only the archive remains");
}

#[test]
fn docker_save_legacy_holds_config_and_uncompressed_layers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.tar");
    let image = small_spec(5)
        .write_docker_save_legacy(&path, &["app:1.0"])
        .unwrap();
    let entries = tar_entries(&fs::read(&path).unwrap());
    let manifest = json_of(entry(&entries, "manifest.json"));
    let config_name = format!("{}.json", digest_hex(image.config_digest()));
    assert_eq!(manifest[0]["Config"], config_name.as_str());
    assert_eq!(manifest[0]["RepoTags"], json!(["app:1.0"]));
    assert_eq!(sha(entry(&entries, &config_name)), image.config_digest());
    let layer_paths = manifest[0]["Layers"].as_array().unwrap();
    assert_eq!(layer_paths.len(), 2);
    for (layer_path, diff_id) in layer_paths.iter().zip(image.diff_ids()) {
        let layer_path = layer_path.as_str().unwrap();
        assert_eq!(sha(entry(&entries, layer_path)), diff_id);
        let id = layer_path.trim_end_matches("/layer.tar");
        assert_eq!(entry(&entries, &format!("{id}/VERSION")), b"1.0");
        assert_eq!(json_of(entry(&entries, &format!("{id}/json")))["id"], id);
    }
    let top_id = layer_paths[1]
        .as_str()
        .unwrap()
        .trim_end_matches("/layer.tar");
    assert_eq!(
        json_of(entry(&entries, "repositories")),
        json!({"app": {"1.0": top_id}})
    );
    assert_eq!(image.blobs.len(), 3, "config and two layers");
    assert!(
        names(&entries).windows(2).all(|w| w[0] <= w[1]),
        "entries sorted like docker save"
    );
}

#[test]
fn docker_save_oci_has_annotations_manifest_json_and_uncompressed_layers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker25.tar");
    let image = small_spec(6)
        .write_docker_save_oci(&path, &["app:1.0", "example.com/team/app"])
        .unwrap();
    let entries = tar_entries(&fs::read(&path).unwrap());
    for blob in &image.blobs {
        assert_eq!(
            sha(entry(&entries, &format!("blobs/sha256/{}", blob.hex()))),
            blob.digest
        );
    }
    for layer in &image.platforms[0].layers {
        assert_eq!(layer.blob.digest, layer.diff_id);
        assert_eq!(layer.blob.media_type, OCI_LAYER_TAR);
    }
    let index = json_of(entry(&entries, "index.json"));
    let annotations: Vec<&Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["annotations"])
        .collect();
    assert_eq!(
        annotations[0][ANNOTATION_CONTAINERD_NAME],
        "docker.io/library/app:1.0"
    );
    assert_eq!(annotations[0][ANNOTATION_REF_NAME], "1.0");
    assert_eq!(
        annotations[1][ANNOTATION_CONTAINERD_NAME],
        "example.com/team/app:latest"
    );
    let manifest = json_of(entry(&entries, "manifest.json"));
    assert_eq!(
        manifest[0]["Config"],
        format!("blobs/sha256/{}", digest_hex(image.config_digest()))
    );
    assert_eq!(
        manifest[0]["RepoTags"],
        json!(["app:1.0", "example.com/team/app:latest"])
    );
    let oci_manifest = json_of(entry(
        &entries,
        &format!("blobs/sha256/{}", digest_hex(&image.manifest_digest)),
    ));
    assert_eq!(oci_manifest["layers"][0]["mediaType"], OCI_LAYER_TAR);
    assert_eq!(
        entry(&entries, "oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
}

#[test]
fn docker_formats_agree_on_config_and_layers() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = small_spec(7)
        .write_docker_save_legacy(&dir.path().join("a.tar"), &[])
        .unwrap();
    let modern = small_spec(7)
        .write_docker_save_oci(&dir.path().join("b.tar"), &[])
        .unwrap();
    assert_eq!(legacy.config_digest(), modern.config_digest());
    assert_eq!(legacy.manifest_digest, modern.manifest_digest);
    assert_eq!(legacy.diff_ids(), modern.diff_ids());
    let two_platforms = small_spec(7)
        .platform("linux", "amd64")
        .platform("linux", "arm64");
    assert!(
        two_platforms
            .write_docker_save_legacy(&dir.path().join("c.tar"), &[])
            .is_err()
    );
    assert!(
        two_platforms
            .write_docker_save_oci(&dir.path().join("d.tar"), &[])
            .is_err()
    );
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small_spec(8)
        .platform("linux", "amd64")
        .platform("linux", "arm64");
    let first = spec
        .write_oci_archive(&dir.path().join("a.tar"), Some("t"))
        .unwrap();
    let second = spec
        .write_oci_archive(&dir.path().join("b.tar"), Some("t"))
        .unwrap();
    assert_eq!(first.manifest_digest, second.manifest_digest);
    assert_eq!(
        fs::read(dir.path().join("a.tar")).unwrap(),
        fs::read(dir.path().join("b.tar")).unwrap()
    );
    let other = small_spec(9)
        .write_oci_archive(&dir.path().join("c.tar"), Some("t"))
        .unwrap();
    assert_ne!(
        other.platforms[0].layers[0].diff_id,
        first.platforms[0].layers[0].diff_id
    );
}

#[test]
fn tampered_archives_are_spoiled_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.tar");
    let spec = small_spec(10);

    spec.write_oci_archive_with(&path, None, Tamper::PathTraversal)
        .unwrap();
    assert!(names(&tar_entries(&fs::read(&path).unwrap())).contains(&"../evil"));
    spec.write_oci_archive_with(&path, None, Tamper::AbsolutePath)
        .unwrap();
    assert!(names(&tar_entries(&fs::read(&path).unwrap())).contains(&"/tmp/shoal-evil"));

    let image = spec
        .write_oci_archive_with(&path, None, Tamper::AbsurdSize(u64::MAX))
        .unwrap();
    let entries = tar_entries(&fs::read(&path).unwrap());
    let manifest = json_of(entry(
        &entries,
        &format!("blobs/sha256/{}", digest_hex(&image.manifest_digest)),
    ));
    assert_eq!(manifest["layers"][1]["size"], u64::MAX);
    assert_eq!(
        manifest["layers"][1]["digest"],
        image.tampered.unwrap().digest.as_str()
    );

    let image = spec
        .write_oci_archive_with(&path, None, Tamper::MissingBlob)
        .unwrap();
    let missing = format!("blobs/sha256/{}", image.tampered.unwrap().hex());
    let entries = tar_entries(&fs::read(&path).unwrap());
    assert!(!names(&entries).contains(&missing.as_str()));
    assert_eq!(entries.len(), 3 + image.blobs.len() - 1 + 1);

    let image = spec
        .write_oci_archive_with(&path, None, Tamper::WrongDigest)
        .unwrap();
    let target = image.tampered.unwrap();
    let entries = tar_entries(&fs::read(&path).unwrap());
    let stored = entry(&entries, &format!("blobs/sha256/{}", target.hex()));
    assert_eq!(stored.len() as u64, target.size);
    assert_ne!(sha(stored), target.digest);
}

#[test]
fn corrupt_and_truncate_change_files_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    fs::write(&path, b"abcdef").unwrap();
    corrupt_file(&path, 2).unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        [b'a', b'b', !b'c', b'd', b'e', b'f']
    );
    assert!(corrupt_file(&path, 6).is_err());
    truncate_file(&path, 3).unwrap();
    assert_eq!(fs::read(&path).unwrap().len(), 3);
    assert!(truncate_file(&path, 10).is_err());
}

#[test]
fn docker_references_are_qualified_like_docker() {
    let cases = [
        (
            "alpine",
            "alpine",
            "latest",
            "docker.io/library/alpine:latest",
        ),
        (
            "alpine:3.20",
            "alpine",
            "3.20",
            "docker.io/library/alpine:3.20",
        ),
        ("team/app:v1", "team/app", "v1", "docker.io/team/app:v1"),
        (
            "localhost:5000/app",
            "localhost:5000/app",
            "latest",
            "localhost:5000/app:latest",
        ),
        (
            "127.0.0.1:5050/a/b:c",
            "127.0.0.1:5050/a/b",
            "c",
            "127.0.0.1:5050/a/b:c",
        ),
    ];
    for (input, repo, tag, full) in cases {
        let parsed = parse_docker_ref(input).unwrap();
        assert_eq!(
            (
                parsed.repo.as_str(),
                parsed.tag.as_str(),
                parsed.full.as_str()
            ),
            (repo, tag, full),
            "{input}"
        );
    }
    for bad in ["", "app@sha256:00", "app:"] {
        assert!(parse_docker_ref(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn busybox_layer_holds_a_runnable_shell() {
    let dir = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(11)
        .layer(1000)
        .with_busybox(true)
        .write_oci_layout(dir.path(), None)
        .unwrap();
    let base = &image.platforms[0].layers[0];
    let tar = gunzip(&fs::read(blob_path(dir.path(), &base.blob.digest)).unwrap());
    let mut archive = Archive::new(tar.as_slice());
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        seen.push((name, entry.header().mode().unwrap(), entry.size(), link));
    }
    let busybox = seen.iter().find(|(n, ..)| n == "bin/busybox").unwrap();
    assert_eq!(busybox.1, 0o755);
    assert_eq!(busybox.2, fs::metadata(BUSYBOX_PATH).unwrap().len());
    let sh = seen.iter().find(|(n, ..)| n == "bin/sh").unwrap();
    assert_eq!(sh.3.as_deref(), Some("busybox"));
    assert!(
        ImageSpec::new(11)
            .with_busybox(true)
            .write_oci_layout(dir.path(), None)
            .is_err()
    );
}

#[test]
fn sized_specs_split_into_realistic_layers() {
    let spec = ImageSpec::sized(12, 200 << 20);
    assert_eq!(spec.layers.iter().sum::<u64>(), 200 << 20);
    assert!(
        spec.layers.len() >= 4 && spec.layers.len() <= 10,
        "{:?}",
        spec.layers
    );
    let last = spec.layers.len() - 1;
    assert!(
        spec.layers[..last]
            .iter()
            .all(|&s| (SIZED_LAYER_BYTES_MIN..SIZED_LAYER_BYTES_MAX).contains(&s))
    );
    assert_eq!(ImageSpec::sized(12, 200 << 20).layers, spec.layers);
    assert_eq!(
        file_sizes(FILE_BYTES_MAX * 2 + 5),
        vec![FILE_BYTES_MAX, FILE_BYTES_MAX, 5]
    );
    assert!(file_sizes(0).is_empty());
}

#[test]
fn prng_stream_ignores_read_sizes_and_does_not_compress() {
    let mut whole = Vec::new();
    PrngReader::new(13, 10_001).read_to_end(&mut whole).unwrap();
    assert_eq!(whole.len(), 10_001);
    let mut pieces = Vec::new();
    let mut reader = PrngReader::new(13, 10_001);
    for size in [1, 3, 7, 8, 13, 4096].iter().cycle() {
        let mut buf = vec![0; *size];
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        pieces.extend_from_slice(&buf[..n]);
    }
    assert_eq!(pieces, whole);
    let mut gzip = GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&whole).unwrap();
    assert!(
        gzip.finish().unwrap().len() > 10_000,
        "random content must not compress"
    );
}

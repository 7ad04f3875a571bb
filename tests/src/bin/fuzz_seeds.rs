//! fuzz-seeds: writes the seed corpora of the fuzz targets in `fuzz/` from real inputs — wire
//! frames of every message, a signed announcement, chunk indexes, the manifests, indexes and
//! import archives of generated images, gateway paths, references and Range headers — so that
//! fuzzing starts from inputs the decoders accept rather than from nothing.
//!
//!   cargo run -p shoal-tests --bin fuzz_seeds -- fuzz/corpus
//!
//! Each seed is `DIR/<target>/seed-<name>`; existing seeds are overwritten (the output is
//! deterministic), other files (inputs the fuzzer found, regressions) are left alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use libp2p_identity::Keypair;
use shoal_protocol::announce::Announcement;
use shoal_protocol::chunk::CHUNK_BYTES_MIN;
use shoal_protocol::{
    AnnouncementCursor, Bitmap, ChunkIndex, ChunkIndexBuilder, Digest, Request, Response,
    SignedAnnouncement, Tag, media_type, wire,
};
use shoal_tests::image::{GeneratedImage, GzipLevel, ImageSpec, MediaTypes};

struct Seeds {
    root: PathBuf,
    written: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        self.written += 1;
        Ok(())
    }
}

fn main() -> Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: fuzz_seeds CORPUS_DIR (normally fuzz/corpus)")?;
    let scratch = tempfile::tempdir()?;
    let mut seeds = Seeds { root, written: 0 };

    let single = ImageSpec::new(1)
        .gzip(GzipLevel::Store)
        .layer(1500)
        .layer(200);
    let oci = single.write_oci_layout(&scratch.path().join("oci"), Some("1"))?;
    let docker = single
        .clone()
        .media_types(MediaTypes::Docker)
        .write_oci_layout(&scratch.path().join("docker"), Some("1"))?;
    let multi = ImageSpec::new(2)
        .gzip(GzipLevel::Store)
        .layer(300)
        .platform("linux", "amd64")
        .platform("linux", "arm64")
        .write_oci_layout(&scratch.path().join("multi"), Some("1"))?;

    manifests(&mut seeds, &oci, &docker, &multi)?;
    archives(&mut seeds, &single, scratch.path())?;
    let (indexes, announcement) = indexes_and_announcement(&oci)?;
    for (name, index) in ["empty", "one", "many"].into_iter().zip(&indexes) {
        seeds.put("chunk_index", name, &wire::encode(index)?)?;
    }
    seeds.put("announcement", "signed", &announcement.encode()?)?;
    wire_frames(&mut seeds, &indexes[2], &announcement)?;
    text_seeds(&mut seeds, &oci)?;
    println!(
        "wrote {} seeds under {}",
        seeds.written,
        seeds.root.display()
    );
    Ok(())
}

fn blob_bytes(image: &GeneratedImage, digest: &str) -> Result<Vec<u8>> {
    let path = image
        .layout_blob_path(digest)
        .context("seeds come from OCI layouts")?;
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

fn manifests(
    seeds: &mut Seeds,
    oci: &GeneratedImage,
    docker: &GeneratedImage,
    multi: &GeneratedImage,
) -> Result<()> {
    // The manifest target's first byte picks the expected media type: 0 none, 1 OCI manifest,
    // 2 OCI index, 3 Docker manifest.
    let cases = [
        ("oci-manifest", 1u8, blob_bytes(oci, &oci.manifest_digest)?),
        (
            "oci-manifest-untyped",
            0,
            blob_bytes(oci, &oci.manifest_digest)?,
        ),
        (
            "docker-manifest",
            3,
            blob_bytes(docker, &docker.manifest_digest)?,
        ),
        ("oci-index", 2, blob_bytes(multi, &multi.manifest_digest)?),
        (
            "layout-index",
            0,
            std::fs::read(oci.path.join("index.json"))?,
        ),
    ];
    for (name, selector, bytes) in cases {
        let mut seed = vec![selector];
        seed.extend_from_slice(&bytes);
        seeds.put("manifest", name, &seed)?;
    }
    Ok(())
}

fn archives(seeds: &mut Seeds, spec: &ImageSpec, scratch: &Path) -> Result<()> {
    let oci_tar = scratch.join("oci.tar");
    spec.write_oci_archive(&oci_tar, Some("1"))?;
    let legacy_tar = scratch.join("legacy.tar");
    spec.write_docker_save_legacy(&legacy_tar, &["team/app:1"])?;
    let docker_oci_tar = scratch.join("docker-oci.tar");
    spec.write_docker_save_oci(&docker_oci_tar, &["team/app:1"])?;
    for (name, path) in [
        ("oci-archive", &oci_tar),
        ("docker-save-legacy", &legacy_tar),
        ("docker-save-oci", &docker_oci_tar),
    ] {
        seeds.put("import_archive", name, &std::fs::read(path)?)?;
    }
    let mut gzipped = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzipped, &std::fs::read(&oci_tar)?)?;
    seeds.put("import_archive", "oci-archive-gz", &gzipped.finish()?)?;
    Ok(())
}

fn index_of(bytes: &[u8]) -> Result<ChunkIndex> {
    let mut builder = ChunkIndexBuilder::new(Digest::of(bytes), CHUNK_BYTES_MIN)?;
    builder.update(bytes);
    Ok(builder.finish()?)
}

/// Chunk indexes of an empty, a one-chunk and a several-chunk blob, and an announcement of the
/// OCI image signed by a fixed key.
fn indexes_and_announcement(oci: &GeneratedImage) -> Result<(Vec<ChunkIndex>, SignedAnnouncement)> {
    let several: Vec<u8> = (0..3 * CHUNK_BYTES_MIN + 100)
        .map(|i| (i % 251) as u8)
        .collect();
    let indexes = vec![index_of(b"")?, index_of(b"one chunk")?, index_of(&several)?];
    let mut index_roots = Vec::new();
    for blob in &oci.blobs {
        let bytes = blob_bytes(oci, &blob.digest)?;
        index_roots.push((blob.digest.parse::<Digest>()?, index_of(&bytes)?.root()));
    }
    let mut announcement = Announcement {
        repository: "docker.io/team/app".into(),
        tag: "1".parse::<Tag>()?,
        manifest: oci.manifest_digest.parse()?,
        media_type: media_type::OCI_MANIFEST.into(),
        size: oci.manifest_size,
        sequence: 3,
        time_unix_ms: 1_700_000_000_000,
        index_roots,
    };
    announcement.normalize_roots();
    let keypair = Keypair::ed25519_from_bytes([7; 32])?;
    Ok((indexes, SignedAnnouncement::sign(&announcement, &keypair)?))
}

fn wire_frames(seeds: &mut Seeds, index: &ChunkIndex, signed: &SignedAnnouncement) -> Result<()> {
    let blob = index.blob();
    let requests = [
        ("have", Request::Have { blob }),
        ("index", Request::Index { blob }),
        ("chunk", Request::Chunk { blob, chunk: 2 }),
        (
            "announcements-first",
            Request::Announcements { after: None },
        ),
        (
            "announcements-after",
            Request::Announcements {
                after: Some(AnnouncementCursor {
                    repository: "docker.io/team/app".into(),
                    tag: "1".into(),
                    publisher: signed.publisher.clone(),
                }),
            },
        ),
        (
            "fetch",
            Request::Fetch {
                blob,
                repository: "docker.io/library/alpine".into(),
                manifest: false,
            },
        ),
    ];
    for (name, request) in requests {
        seeds.put("wire_request", name, &request.encode()?)?;
    }
    let mut chunks = Bitmap::new(index.chunk_count());
    chunks.set(1);
    let responses = [
        (
            "have",
            Response::Have {
                blob_size: index.blob_size(),
                chunk_bytes: index.chunk_bytes(),
                chunks,
                complete: false,
            },
        ),
        ("index", Response::Index(index.clone())),
        ("chunk", Response::Chunk(b"chunk bytes".to_vec())),
        (
            "announcements",
            Response::Announcements {
                announcements: vec![signed.clone()],
                next: None,
            },
        ),
        ("not-found", Response::NotFound),
        ("busy", Response::Busy),
        ("busy-spreading", Response::BusySpreading),
        ("fetching", Response::Fetching),
    ];
    for (name, response) in responses {
        seeds.put("wire_response", name, &response.encode()?)?;
    }
    Ok(())
}

fn text_seeds(seeds: &mut Seeds, oci: &GeneratedImage) -> Result<()> {
    let digest = &oci.manifest_digest;
    let paths = [
        "/v2/".to_owned(),
        "/v2/_catalog".to_owned(),
        "/v2/library/alpine/manifests/latest".to_owned(),
        format!("/v2/team/app/manifests/{digest}"),
        format!("/v2/a/b/c/blobs/{digest}"),
        "/v2/team/app/tags/list".to_owned(),
        format!("/v2/team/app/referrers/{digest}"),
        "/v2/team/app/blobs/uploads/".to_owned(),
        "/v2/x/manifests/1\nghcr.io".to_owned(),
        "/v2/x/manifests/1\nlocalhost:5000".to_owned(),
    ];
    for (i, path) in paths.iter().enumerate() {
        seeds.put("gateway_path", &i.to_string(), path.as_bytes())?;
    }
    let references = [
        "alpine".to_owned(),
        "alpine:3.20".to_owned(),
        "docker.io/library/alpine:3.20".to_owned(),
        "index.docker.io/team/app".to_owned(),
        format!("localhost:5000/x@{digest}"),
        format!("ghcr.io/a/b:v1.2@{digest}"),
        "[::1]:5000/a/b".to_owned(),
        digest.clone(),
        "Registry.Example:443".to_owned(),
    ];
    for (i, reference) in references.iter().enumerate() {
        seeds.put("reference", &i.to_string(), reference.as_bytes())?;
    }
    let ranges = [
        (10u64, "bytes=0-"),
        (10, "bytes=2-5"),
        (10, "bytes=-3"),
        (10, "bytes=10-"),
        (0, "bytes=0-0"),
        (u64::MAX, "bytes=18446744073709551614-18446744073709551615"),
        (10, "items=0-1"),
        (10, "bytes=0-1,3-4"),
    ];
    for (i, (size, header)) in ranges.iter().enumerate() {
        let mut seed = size.to_le_bytes().to_vec();
        seed.extend_from_slice(header.as_bytes());
        seeds.put("range", &i.to_string(), &seed)?;
    }
    Ok(())
}

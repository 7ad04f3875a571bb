//! What a container of a generated image prints: the check that a runtime really unpacked
//! every layer of what it pulled ([`RunCheck`]), shared by the real-client tests.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use flate2::read::GzDecoder;
use sha2::{Digest as _, Sha256};

use crate::image::GeneratedImage;

/// A command for a container of `image` (amd64) and the exact output it must print: every
/// layer's README, then the sha256 of every layer's first data file, as read from the layer
/// blobs of the generated layout.
#[derive(Debug)]
pub struct RunCheck {
    args: Vec<String>,
    expected: String,
}

impl RunCheck {
    pub fn new(image: &GeneratedImage) -> Result<Self> {
        let platform = image.platforms.first().context("image without platforms")?;
        let mut readmes = String::new();
        let mut sums = String::new();
        let mut readme_paths = Vec::new();
        let mut data_paths = Vec::new();
        for (index, layer) in platform.layers.iter().enumerate() {
            let blob = image
                .layout_blob_path(&layer.blob.digest)
                .context("not an OCI layout")?;
            let readme = format!("shoal/layer-{index}/README");
            let data = format!("shoal/layer-{index}/data-000.bin");
            let (readme_bytes, data_digest) = read_layer_files(&blob, &readme, &data)?;
            readmes.push_str(std::str::from_utf8(&readme_bytes)?);
            sums.push_str(&format!("{data_digest}  /{data}\n"));
            readme_paths.push(format!("/{readme}"));
            data_paths.push(format!("/{data}"));
        }
        let script = format!(
            "/bin/busybox cat {} && /bin/busybox sha256sum {}",
            readme_paths.join(" "),
            data_paths.join(" ")
        );
        Ok(Self {
            args: vec!["/bin/sh".to_owned(), "-c".to_owned(), script],
            expected: readmes + &sums,
        })
    }

    pub fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// Fails unless `output` (a container's stdout) is exactly the expected text.
    pub fn check(&self, client: &str, output: &str) -> Result<()> {
        ensure!(
            output == self.expected,
            "{client}: the container printed\n{output}\nexpected\n{}",
            self.expected
        );
        Ok(())
    }
}

/// The bytes of `readme` and the hex sha256 of `data` inside the gzipped layer tar at `blob`.
fn read_layer_files(blob: &Path, readme: &str, data: &str) -> Result<(Vec<u8>, String)> {
    let mut archive = tar::Archive::new(GzDecoder::new(File::open(blob)?));
    let (mut readme_bytes, mut data_digest) = (None, None);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path == readme {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            readme_bytes = Some(bytes);
        } else if path == data {
            let mut hasher = Sha256::new();
            std::io::copy(&mut entry, &mut hasher)?;
            data_digest = Some(hex::encode(hasher.finalize()));
        }
    }
    Ok((
        readme_bytes.with_context(|| format!("{readme} missing from {}", blob.display()))?,
        data_digest.with_context(|| format!("{data} missing from {}", blob.display()))?,
    ))
}

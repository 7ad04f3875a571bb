//! Content digests: `sha256:<64 lowercase hex>`, the address of every blob and manifest.
//!
//! Only sha256 is accepted. OCI allows sha512 too, but no registry in use produces it and a
//! digest this node cannot verify is worse than a clear refusal.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A verified-format sha256 digest. Holding one means the string was well formed, not that any
/// bytes were checked against it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} does not use the sha256 algorithm")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} is not `sha256:` followed by 64 lowercase hex digits")]
    Malformed(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn from_sha256_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits without the algorithm prefix, as used in blob file names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(DigestError::Malformed(s.to_owned()));
        };
        if algorithm != "sha256" {
            let valid_algorithm = !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
            return Err(if valid_algorithm {
                DigestError::UnsupportedAlgorithm(s.to_owned())
            } else {
                DigestError::Malformed(s.to_owned())
            });
        }
        let lower_hex = encoded.len() == 64
            && encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !lower_hex {
            return Err(DigestError::Malformed(s.to_owned()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(encoded, &mut bytes)
            .map_err(|_| DigestError::Malformed(s.to_owned()))?;
        Ok(Digest(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Human-readable formats (JSON in manifests, metadata and the admin socket) carry the
/// `sha256:<hex>` string; binary formats (the peer wire codec) carry the 32 raw bytes, which is
/// less than half the size and needs no parsing.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(deserializer).map(Digest)
        }
    }
}

/// Hashes bytes as they stream past and counts them, so a writer can check digest and size
/// without a second pass over the data.
#[derive(Debug, Default, Clone)]
pub struct Sha256Writer {
    hasher: Sha256,
    bytes: u64,
}

impl Sha256Writer {
    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(self) -> (Digest, u64) {
        (Digest(self.hasher.finalize().into()), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_empty_input_is_the_well_known_value() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
        assert_eq!(EMPTY.parse::<Digest>(), Ok(Digest::of(b"")));
    }

    #[test]
    fn malformed_digests_are_refused() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
            "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "../../etc/passwd",
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(DigestError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "sha512:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn streaming_hash_matches_one_shot_hash() {
        let mut writer = Sha256Writer::default();
        writer.update(b"hello ");
        writer.update(b"world");
        assert_eq!(writer.finish(), (Digest::of(b"hello world"), 11));
    }

    #[test]
    fn json_carries_the_string_form() {
        let digest = Digest::of(b"");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
    }

    proptest! {
        #[test]
        fn binary_form_is_the_raw_bytes(bytes in any::<[u8; 32]>()) {
            let digest = Digest::from_sha256_bytes(bytes);
            let frame = crate::wire::encode(&digest).unwrap();
            prop_assert_eq!(frame.len(), 1 + 32);
            prop_assert_eq!(&frame[1..], &bytes[..]);
            prop_assert_eq!(crate::wire::decode::<Digest>(&frame, 64).unwrap(), digest);
        }

        #[test]
        fn display_and_parse_round_trip(bytes in any::<[u8; 32]>()) {
            let digest = Digest::from_sha256_bytes(bytes);
            prop_assert_eq!(digest.to_string().parse::<Digest>(), Ok(digest));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,80}") {
            let _ = s.parse::<Digest>();
        }
    }
}

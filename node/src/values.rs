//! Plain value types that the configuration and the services share: sizes, rates and the disk
//! budget. A leaf: it imports no other module of the node (but `rate.rs`, whose `ByteRate` and
//! unit parsing move here when the peer exchange gets its own folder), so `config.rs` can name
//! these without importing the services that use them.

use std::str::FromStr;

pub use crate::rate::ByteRate;
use crate::rate::{byte_unit, split_quantity};

/// The low watermark when none is configured: evicting 10% below the budget leaves room for a
/// few layers before the next pass.
pub const DEFAULT_LOW_WATERMARK_PERCENT: u8 = 90;

/// A size such as `10GiB`, `500MB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<ByteSize> {
        let invalid = || {
            anyhow::anyhow!(
                "invalid size {text:?}: use a number with a unit such as 10GiB, 500MB or 1TiB"
            )
        };
        let (number, unit) = split_quantity(text).ok_or_else(invalid)?;
        let bytes = number * byte_unit(unit).ok_or_else(invalid)?;
        if !bytes.is_finite() || bytes < 1.0 {
            return Err(invalid());
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl TryFrom<String> for ByteSize {
    type Error = anyhow::Error;

    fn try_from(text: String) -> anyhow::Result<ByteSize> {
        text.parse()
    }
}

/// How much the store may hold, and how far eviction goes once it holds more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_bytes: u64,
    /// Percent of `max_bytes` that eviction brings the store down to.
    pub low_watermark_percent: u8,
}

impl Budget {
    pub fn new(max_bytes: u64, low_watermark_percent: u8) -> anyhow::Result<Budget> {
        anyhow::ensure!(
            (1..=100).contains(&low_watermark_percent),
            "the low watermark is a percentage of --cache-max, from 1 to 100, not {low_watermark_percent}"
        );
        Ok(Budget {
            max_bytes,
            low_watermark_percent,
        })
    }

    /// The budget `--cache-max` and `--cache-low-watermark` (or the config file) ask for.
    pub fn configured(
        max: Option<ByteSize>,
        low_watermark_percent: Option<u8>,
    ) -> anyhow::Result<Option<Budget>> {
        match (max, low_watermark_percent) {
            (Some(max), percent) => {
                Budget::new(max.0, percent.unwrap_or(DEFAULT_LOW_WATERMARK_PERCENT)).map(Some)
            }
            (None, Some(_)) => anyhow::bail!("--cache-low-watermark needs --cache-max"),
            (None, None) => Ok(None),
        }
    }

    /// The bytes eviction aims at.
    pub fn low_watermark_bytes(&self) -> u64 {
        (u128::from(self.max_bytes) * u128::from(self.low_watermark_percent) / 100) as u64
    }

    /// Whether a store of `stored_bytes` must shed some.
    pub fn is_exceeded(&self, stored_bytes: u64) -> bool {
        stored_bytes > self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_watermark_is_a_percentage_of_the_budget() {
        let budget = Budget::new(10 << 30, 90).unwrap();
        assert_eq!(budget.low_watermark_bytes(), (10u64 << 30) / 10 * 9);
        assert!(!budget.is_exceeded(10 << 30));
        assert!(budget.is_exceeded((10 << 30) + 1));
        // No overflow at the top of the range, and 100% means "just under the budget".
        let huge = Budget::new(u64::MAX, 100).unwrap();
        assert_eq!(huge.low_watermark_bytes(), u64::MAX);
        assert_eq!(Budget::new(1000, 1).unwrap().low_watermark_bytes(), 10);
        assert_eq!(Budget::new(999, 50).unwrap().low_watermark_bytes(), 499);
        assert!(Budget::new(1000, 0).is_err());
        assert!(Budget::new(1000, 101).is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("10GiB".parse::<ByteSize>().unwrap(), ByteSize(10 << 30));
        assert_eq!("500MB".parse::<ByteSize>().unwrap(), ByteSize(500_000_000));
        assert_eq!("1.5 TiB".parse::<ByteSize>().unwrap(), ByteSize(3 << 39));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        for bad in ["", "big", "10GiB/s", "10Mbit", "-1GiB", "0"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }
}

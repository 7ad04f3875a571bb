//! Plain value types that the configuration and the services share: sizes, rates and the disk
//! budget. A leaf: it imports no other module of the node, so `config.rs` and the services
//! (the exchange's rate limiter, the disk budget) can all name these without importing each
//! other.

use std::str::FromStr;

/// A rate in bytes per second, parsed from `20MiB/s`, `500KB/s`, `1GiB/s` or a plain number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteRate(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid rate {0:?}: use a number with a unit such as 20MiB/s, 500KB/s or 1GiB/s")]
pub struct RateParseError(String);

impl FromStr for ByteRate {
    type Err = RateParseError;

    fn from_str(s: &str) -> Result<ByteRate, RateParseError> {
        let error = || RateParseError(s.to_owned());
        let text = s.trim();
        let text = text.strip_suffix("/s").unwrap_or(text);
        let (number, unit) = split_quantity(text).ok_or_else(error)?;
        let multiplier = match unit {
            "Kbit" | "kbit" => 1e3 / 8.0,
            "Mbit" | "mbit" => 1e6 / 8.0,
            "Gbit" | "gbit" => 1e9 / 8.0,
            _ => byte_unit(unit).ok_or_else(error)?,
        };
        let rate = number * multiplier;
        if !rate.is_finite() || rate < 1.0 {
            return Err(error());
        }
        Ok(ByteRate(rate as u64))
    }
}

/// Splits `1.5GiB` into `1.5` and `"GiB"`.
fn split_quantity(text: &str) -> Option<(f64, &str)> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// Bytes in one `unit`: `B` (or none), `KB` to `TB` in powers of 1000, `KiB` to `TiB` in
/// powers of 1024.
fn byte_unit(unit: &str) -> Option<f64> {
    Some(match unit {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

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
    fn rates_parse_with_units() {
        assert_eq!("20MiB/s".parse(), Ok(ByteRate(20 * 1024 * 1024)));
        assert_eq!("10MB/s".parse(), Ok(ByteRate(10_000_000)));
        assert_eq!("50Mbit/s".parse(), Ok(ByteRate(6_250_000)));
        assert_eq!("1.5GiB".parse(), Ok(ByteRate(1_610_612_736)));
        assert_eq!("4096".parse(), Ok(ByteRate(4096)));
        for bad in ["", "fast", "10XB/s", "-5MiB/s", "0", "0.1"] {
            assert!(bad.parse::<ByteRate>().is_err(), "{bad}");
        }
    }

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

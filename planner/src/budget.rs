//! Byte sizes as users write them: `8GiB`, `8GB`, `8192MiB`, `0.5TiB`, `512` (bytes).

use std::fmt;
use std::str::FromStr;

/// A number of bytes, parsed from and printed in human units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a byte-size string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot read {input:?} as a size: {reason}; write a number and a unit such as 8GiB, 8GB, 8192MiB or 0.5TiB"
)]
pub struct ParseByteSizeError {
    /// The text that was given.
    pub input: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

const UNITS: &[(&str, u64)] = &[
    ("tib", 1 << 40),
    ("gib", 1 << 30),
    ("mib", 1 << 20),
    ("kib", 1 << 10),
    ("tb", 1_000_000_000_000),
    ("gb", 1_000_000_000),
    ("mb", 1_000_000),
    ("kb", 1_000),
    ("t", 1 << 40),
    ("g", 1 << 30),
    ("m", 1 << 20),
    ("k", 1 << 10),
    ("b", 1),
];

impl FromStr for ByteSize {
    type Err = ParseByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason| ParseByteSizeError {
            input: input.to_string(),
            reason,
        };
        let text = input.trim().to_ascii_lowercase();
        // The unit is the trailing letters ("1e3gib": number 1e3, unit gib).
        let split = text
            .rfind(|c: char| !c.is_ascii_alphabetic())
            .map_or(0, |i| i + 1);
        let (number, unit) = text.split_at(split);
        let number = number.trim();
        if number.is_empty() {
            return Err(error("no number"));
        }
        let multiplier = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit.trim())
                .map(|(_, m)| *m)
                .ok_or_else(|| error("unknown unit"))?
        };
        let value: f64 = number.parse().map_err(|_| error("not a number"))?;
        if value.is_infinite() && value > 0.0 {
            return Err(error("too large"));
        }
        if !value.is_finite() || value < 0.0 {
            return Err(error("must be a positive number"));
        }
        let bytes = value * multiplier as f64;
        if bytes > u64::MAX as f64 {
            return Err(error("too large"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0 as f64;
        let units = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, size) in units {
            if self.0 >= size {
                return write!(f, "{:.2} {name}", bytes / size as f64);
            }
        }
        write!(f, "{} B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!("8GiB".parse::<ByteSize>().unwrap(), ByteSize(8 << 30));
        assert_eq!("8GB".parse::<ByteSize>().unwrap(), ByteSize(8_000_000_000));
        assert_eq!("8192MiB".parse::<ByteSize>().unwrap(), ByteSize(8 << 30));
        assert_eq!("0.5TiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 39));
        assert_eq!("512".parse::<ByteSize>().unwrap(), ByteSize(512));
        assert_eq!(" 2 gib ".parse::<ByteSize>().unwrap(), ByteSize(2 << 30));
    }

    #[test]
    fn rejects_nonsense_with_a_hint() {
        let err = "eight gigs".parse::<ByteSize>().unwrap_err();
        assert!(err.to_string().contains("8GiB"), "{err}");
        assert!("8XB".parse::<ByteSize>().is_err());
        assert!("-1GiB".parse::<ByteSize>().is_err());
        assert!("GiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(ByteSize(8 << 30).to_string(), "8.00 GiB");
        assert_eq!(ByteSize(1536).to_string(), "1.50 KiB");
        assert_eq!(ByteSize(12).to_string(), "12 B");
    }
}

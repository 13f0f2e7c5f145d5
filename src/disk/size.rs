//! Size specifications of the block-device YAML: `512MiB`, `8M`, `1.5GiB`, `4096`
//! (bytes) and, for partitions, `50%` of the space still free.

/// A partition size as written in the layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeSpec {
    /// Bytes.
    Absolute(u64),
    /// Percent (0 < p <= 100) of the space not yet given to earlier partitions.
    Percent(f64),
}

/// Binary units first so `MiB` is not read as `M` followed by junk.
const UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("K", 1_000),
    ("B", 1),
    ("", 1),
];

/// Parse an absolute size. Decimal prefixes (`M`, `MB`) are powers of 1000 and binary
/// ones (`MiB`) powers of 1024, as in diskimage-builder.
pub fn parse_absolute(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim_start();
    let factor = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|&(_, f)| f)
        .ok_or_else(|| {
            format!("{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, K, M, G, T, KB, MB, GB, TB)")
        })?;
    if number.is_empty() {
        return Err(format!("{text:?}: no number"));
    }
    let bytes = if let Ok(whole) = number.parse::<u64>() {
        whole.checked_mul(factor)
    } else {
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: {number:?} is not a number"))?;
        let bytes = value * factor as f64;
        (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
    };
    bytes.ok_or_else(|| format!("{text:?}: too large"))
}

/// Parse a partition size: a percentage or an absolute size.
pub fn parse_size_spec(text: &str) -> Result<SizeSpec, String> {
    match text.trim().strip_suffix('%') {
        Some(number) => {
            let percent: f64 = number
                .trim()
                .parse()
                .map_err(|_| format!("{text:?}: {number:?} is not a number"))?;
            if !(percent > 0.0 && percent <= 100.0) {
                return Err(format!(
                    "{text:?}: a percentage must be above 0 and at most 100"
                ));
            }
            Ok(SizeSpec::Percent(percent))
        }
        None => match parse_absolute(text)? {
            0 => Err(format!("{text:?}: size is zero")),
            bytes => Ok(SizeSpec::Absolute(bytes)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_dib() {
        assert_eq!(parse_absolute("512MiB"), Ok(512 << 20));
        assert_eq!(parse_absolute("8M"), Ok(8_000_000));
        assert_eq!(parse_absolute("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_absolute("1.5KiB"), Ok(1536));
        assert_eq!(parse_absolute("4096"), Ok(4096));
        assert!(parse_absolute("12 parsecs").is_err());
        assert!(parse_absolute("MiB").is_err());
        assert!(parse_absolute("99999999999TiB").is_err());
    }

    #[test]
    fn percentages_are_bounded() {
        assert_eq!(parse_size_spec("100%"), Ok(SizeSpec::Percent(100.0)));
        assert_eq!(parse_size_spec("550MiB"), Ok(SizeSpec::Absolute(550 << 20)));
        assert!(parse_size_spec("0%").is_err());
        assert!(parse_size_spec("101%").is_err());
        assert!(parse_size_spec("0MiB").is_err());
    }
}

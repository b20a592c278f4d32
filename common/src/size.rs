//! Byte sizes as people write them: `2TB`, `512MiB`, `1.5 GB`.

/// A size that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    #[error("{0:?} is not a size (examples: 500GB, 2TB, 512MiB)")]
    NotASize(String),
    #[error("unknown size unit {0:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")]
    Unit(String),
    #[error("{0:?} has no unit; write {0}GB, {0}GiB, or {0}B if you mean bytes")]
    NoUnit(String),
}

/// A size given on a command line: like [`parse_bytes`], but a bare
/// number other than 0 is refused — `--storage 10` is far more likely a
/// forgotten `GB` than ten bytes.
pub fn parse_size_arg(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return match t.parse::<f64>() {
            Ok(0.0) => Ok(0),
            _ => Err(SizeError::NoUnit(t.to_string())),
        };
    }
    parse_bytes(s)
}

/// Parses `123`, `10GB`, `1.5TB`, `512MiB` (SI and binary units, any case).
pub fn parse_bytes(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| SizeError::NotASize(s.to_string()))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "pb" => 1e15,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => return Err(SizeError::Unit(u.to_string())),
    };
    let v = n * mult;
    if !v.is_finite() || v > u64::MAX as f64 {
        return Err(SizeError::NotASize(s.to_string()));
    }
    Ok(v.round() as u64)
}

/// Bytes in SI units with two decimals: `1.50 GB`, `999 B`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_format() {
        assert_eq!(parse_bytes("2TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_bytes("1.5 gb"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("42"), Ok(42));
        assert!(matches!(parse_bytes("2 parsecs"), Err(SizeError::Unit(_))));
        assert!(matches!(parse_bytes("lots"), Err(SizeError::NotASize(_))));
        assert!(parse_bytes("1e30TB").is_err());
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(parse_size_arg("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size_arg("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size_arg("0"), Ok(0));
        assert_eq!(parse_size_arg("4096B"), Ok(4096));
        let e = parse_size_arg("10").expect_err("bare");
        assert!(e.to_string().contains("10GB"), "{e}");
        assert_eq!(format_bytes(1_500_000_000), "1.50 GB");
    }
}

//! Kubernetes resource quantities (`4Gi`, `512M`, `1e9`, `100k`) as byte counts.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a Kubernetes quantity (examples: 4Gi, 512Mi, 10G, 1e9)")]
pub struct QuantityError {
    pub value: String,
}

/// Parses a quantity into a whole number of bytes (fractions are rounded up).
pub fn parse_bytes(value: &str) -> Result<u64, QuantityError> {
    let err = || QuantityError {
        value: value.to_owned(),
    };
    let s = value.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(err());
    }
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| err())?;
            if !(0..=18).contains(&exp) {
                return Err(err());
            }
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    let n: f64 = number.parse().map_err(|_| err())?;
    let bytes = (n * multiplier).ceil();
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_exponents() {
        for (q, b) in [
            ("0", 0),
            ("1024", 1024),
            ("4Gi", 4 << 30),
            ("512Mi", 512 << 20),
            ("1.5Gi", 3 << 29),
            ("10G", 10_000_000_000),
            ("100k", 100_000),
            ("1e9", 1_000_000_000),
            ("2Ki", 2048),
        ] {
            assert_eq!(parse_bytes(q).unwrap(), b, "{q}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for q in ["", "Gi", "4GB", "-1Gi", "1..2", "4 Gi x", "1e99", "abc"] {
            assert!(parse_bytes(q).is_err(), "{q}");
        }
    }
}

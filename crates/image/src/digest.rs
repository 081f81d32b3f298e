//! sha256 digests as CRI and the store spell them.

use std::fmt;

/// A sha256 digest. Displays as lowercase hex; [`Digest::id`] gives the `sha256:<hex>` form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a sha256 digest (expected sha256: followed by 64 lowercase hex digits)")]
pub struct DigestError {
    pub value: String,
}

impl Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(hex_digits: &str) -> Result<Digest, DigestError> {
        let err = || DigestError {
            value: hex_digits.to_owned(),
        };
        if hex_digits.len() != 64
            || !hex_digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut out).map_err(|_| err())?;
        Ok(Digest(out))
    }

    /// Parses `sha256:<hex>`.
    pub fn from_id(id: &str) -> Result<Digest, DigestError> {
        match id.strip_prefix("sha256:") {
            Some(hex_digits) => Digest::from_hex(hex_digits).map_err(|_| DigestError {
                value: id.to_owned(),
            }),
            None => Err(DigestError {
                value: id.to_owned(),
            }),
        }
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The CRI image ID: `sha256:<hex>`.
    pub fn id(&self) -> String {
        format!("sha256:{}", self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn round_trips() {
        let d = Digest::from_hex(HEX).unwrap();
        assert_eq!(d.hex(), HEX);
        assert_eq!(d.id(), format!("sha256:{HEX}"));
        assert_eq!(Digest::from_id(&d.id()).unwrap(), d);
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "abc",
            &HEX.to_uppercase(),
            &HEX[1..],
            &format!("{HEX}0"),
            &format!("sha512:{HEX}"),
            &format!("sha256:{}", &HEX[2..]),
        ] {
            assert!(Digest::from_id(bad).is_err(), "{bad}");
        }
        assert!(Digest::from_hex(&format!("g{}", &HEX[1..])).is_err());
    }
}

//! The checksum an image must have: `sha256:HEX` or `sha512:HEX`, over every byte of
//! the file as served (what `sha256sum` prints for it).

use sha2::{Digest, Sha256, Sha512};

use super::StreamError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(String),
    Sha512(String),
}

impl std::str::FromStr for Checksum {
    type Err = StreamError;

    fn from_str(s: &str) -> Result<Self, StreamError> {
        let bad = || StreamError::BadChecksum(s.to_owned());
        let (algo, hex) = s.split_once(':').ok_or_else(bad)?;
        let hex = hex.trim().to_ascii_lowercase();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        match (algo.trim().to_ascii_lowercase().as_str(), hex.len()) {
            ("sha256", 64) => Ok(Checksum::Sha256(hex)),
            ("sha512", 128) => Ok(Checksum::Sha512(hex)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

impl Checksum {
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "sha256",
            Checksum::Sha512(_) => "sha512",
        }
    }

    pub fn hex(&self) -> &str {
        match self {
            Checksum::Sha256(h) | Checksum::Sha512(h) => h,
        }
    }

    /// True when `actual` (lowercase hex of the same algorithm) is this checksum.
    pub fn matches(&self, actual: &str) -> bool {
        self.hex() == actual
    }

    pub fn hasher(&self) -> Hasher {
        match self {
            Checksum::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Checksum::Sha512(_) => Hasher::Sha512(Box::new(Sha512::new())),
        }
    }
}

/// A running hash of the algorithm a `Checksum` names.
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// Lowercase hex of the digest.
    pub fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => crate::deploy::images::hex(&h.finalize()),
            Hasher::Sha512(h) => crate::deploy::images::hex(&h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_algorithms_and_rejects_the_rest() {
        let s256 = format!("sha256:{}", "Ab".repeat(32));
        let c: Checksum = s256.parse().unwrap();
        assert_eq!(c, Checksum::Sha256("ab".repeat(32)));
        assert!(
            format!("sha512:{}", "0".repeat(128))
                .parse::<Checksum>()
                .is_ok()
        );
        for bad in [
            "",
            "sha256",
            "sha256:abc",
            "md5:00",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(bad.parse::<Checksum>().is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_input_hashes_like_sha256sum() {
        let c: Checksum = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        assert_eq!(
            c.hasher().finish(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

//! CHAP as iSCSI uses it (RFC 1994, RFC 7143 §12.1.3): MD5 only (CHAP_A=5),
//! response = MD5(identifier || secret || challenge).
//!
//! Binary values travel as `0x` hex or `0b` base64; CHAP_I is decimal.
//! Secrets shorter than 12 bytes are refused (RFC 7143 §9.2.1 asks for at
//! least 96 bits), challenges are 16 random bytes or more, responses are
//! compared in constant time, and a target never accepts its own challenge
//! back (reflection).

use base64::Engine;
use md5::{Digest, Md5};
use thiserror::Error;

/// CHAP_A value of MD5, the only algorithm iSCSI requires.
pub const ALGORITHM_MD5: u32 = 5;
/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 12;
/// Length of the challenges generated here.
pub const CHALLENGE_LEN: usize = 32;
/// Shortest challenge accepted from a peer.
pub const MIN_CHALLENGE_LEN: usize = 16;
/// Longest challenge accepted from a peer (the 1024-byte binary limit).
pub const MAX_CHALLENGE_LEN: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChapError {
    #[error("CHAP secret for {user:?} is {length} bytes; at least {MIN_SECRET_LEN} are required")]
    SecretTooShort { user: String, length: usize },
    #[error("CHAP_A offers {offered:?}, which does not include MD5 (5)")]
    NoMd5 { offered: String },
    #[error("{key} value {value:?} is not 0x-hex or 0b-base64")]
    BadBinary { key: &'static str, value: String },
    #[error("CHAP_I value {value:?} is not a number from 0 to 255")]
    BadIdentifier { value: String },
    #[error(
        "CHAP challenge is {length} bytes; between {MIN_CHALLENGE_LEN} and {MAX_CHALLENGE_LEN} are required"
    )]
    BadChallengeLength { length: usize },
    #[error("the peer sent our own challenge back")]
    ReflectedChallenge,
    #[error("no random bytes for a CHAP challenge: {0}")]
    Random(String),
}

/// Refuses a secret too short to resist offline guessing.
pub fn check_secret(user: &str, secret: &str) -> Result<(), ChapError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(ChapError::SecretTooShort {
            user: user.to_string(),
            length: secret.len(),
        });
    }
    Ok(())
}

/// True when a CHAP_A list (comma separated) contains MD5.
pub fn offers_md5(list: &str) -> Result<(), ChapError> {
    if list
        .split(',')
        .any(|a| a.trim().parse::<u32>() == Ok(ALGORITHM_MD5))
    {
        Ok(())
    } else {
        Err(ChapError::NoMd5 {
            offered: list.chars().take(80).collect(),
        })
    }
}

/// Encodes binary as `0x` + lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("0x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Decodes a `0x`/`0X` hex or `0b`/`0B` base64 binary value of `key`.
pub fn decode_binary(key: &'static str, value: &str) -> Result<Vec<u8>, ChapError> {
    let fail = || ChapError::BadBinary {
        key,
        value: value.chars().take(80).collect(),
    };
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        // An odd digit count has an implied leading zero.
        let padded;
        let hex = if !hex.len().is_multiple_of(2) {
            padded = format!("0{hex}");
            padded.as_str()
        } else {
            hex
        };
        if hex.is_empty() || !hex.is_ascii() {
            return Err(fail());
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| fail()))
            .collect();
    }
    if let Some(b64) = value
        .strip_prefix("0b")
        .or_else(|| value.strip_prefix("0B"))
    {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| fail());
    }
    Err(fail())
}

/// Parses CHAP_I (decimal, or 0x hex, 0..=255).
pub fn parse_identifier(value: &str) -> Result<u8, ChapError> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => value.parse::<u8>().ok(),
    };
    parsed.ok_or_else(|| ChapError::BadIdentifier {
        value: value.chars().take(20).collect(),
    })
}

/// A challenge one side sends: identifier and random bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub identifier: u8,
    pub bytes: Vec<u8>,
}

impl Challenge {
    /// A fresh random challenge.
    pub fn generate() -> Result<Challenge, ChapError> {
        let mut buf = [0u8; CHALLENGE_LEN + 1];
        getrandom::fill(&mut buf).map_err(|err| ChapError::Random(err.to_string()))?;
        Ok(Challenge {
            identifier: buf[0],
            bytes: buf[1..].to_vec(),
        })
    }

    /// Reads a peer's CHAP_I and CHAP_C.
    pub fn from_keys(identifier: &str, challenge: &str) -> Result<Challenge, ChapError> {
        let identifier = parse_identifier(identifier)?;
        let bytes = decode_binary("CHAP_C", challenge)?;
        if !(MIN_CHALLENGE_LEN..=MAX_CHALLENGE_LEN).contains(&bytes.len()) {
            return Err(ChapError::BadChallengeLength {
                length: bytes.len(),
            });
        }
        Ok(Challenge { identifier, bytes })
    }

    /// CHAP_I and CHAP_C as sent on the wire.
    pub fn to_keys(&self) -> [(String, String); 2] {
        [
            ("CHAP_I".to_string(), self.identifier.to_string()),
            ("CHAP_C".to_string(), encode_hex(&self.bytes)),
        ]
    }

    /// The response a holder of `secret` gives to this challenge.
    pub fn response(&self, secret: &[u8]) -> [u8; 16] {
        let mut md5 = Md5::new();
        md5.update([self.identifier]);
        md5.update(secret);
        md5.update(&self.bytes);
        md5.finalize().into()
    }

    /// Checks a received response in constant time.
    pub fn verify(&self, secret: &[u8], received: &[u8]) -> bool {
        constant_time_eq(&self.response(secret), received)
    }
}

/// Byte-slice equality whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// Refuses a peer challenge equal to the one this side sent (a reflection
/// attack would make us compute the answer to our own question).
pub fn check_not_reflected(ours: &Challenge, theirs: &Challenge) -> Result<(), ChapError> {
    if ours.bytes == theirs.bytes {
        Err(ChapError::ReflectedChallenge)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_is_md5_of_id_secret_challenge() {
        // Oracle: md5sum of the bytes 0x01 "secretsecret" 0x00..0x0f.
        let challenge = Challenge {
            identifier: 1,
            bytes: (0u8..16).collect(),
        };
        let mut input = vec![1u8];
        input.extend_from_slice(b"secretsecret");
        input.extend(0u8..16);
        let expected: [u8; 16] = Md5::digest(&input).into();
        assert_eq!(challenge.response(b"secretsecret"), expected);
        assert!(challenge.verify(b"secretsecret", &expected));
        assert!(!challenge.verify(b"secretsecreT", &expected));
        assert!(!challenge.verify(b"secretsecret", &expected[..15]));
    }

    #[test]
    fn rfc_1321_md5_vector_through_the_chap_layout() {
        // MD5("abc") = 900150983cd24fb0d6963f7d28e17f72 with id 'a', secret "b", challenge "c".
        let challenge = Challenge {
            identifier: b'a',
            bytes: b"c".to_vec(),
        };
        assert_eq!(
            encode_hex(&challenge.response(b"b")),
            "0x900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("CHAP_R", "0x0a0B").unwrap(), vec![10, 11]);
        assert_eq!(decode_binary("CHAP_R", "0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(decode_binary("CHAP_R", "0bAQID").unwrap(), vec![1, 2, 3]);
        assert!(decode_binary("CHAP_R", "0x").is_err());
        assert!(decode_binary("CHAP_R", "0xzz").is_err());
        assert!(decode_binary("CHAP_R", "0xé1").is_err());
        assert!(decode_binary("CHAP_R", "abcd").is_err());
        assert!(decode_binary("CHAP_R", "0b!!").is_err());
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_binary("CHAP_C", &encode_hex(&bytes)).unwrap(), bytes);
    }

    #[test]
    fn identifiers_and_algorithms() {
        assert_eq!(parse_identifier("255"), Ok(255));
        assert!(parse_identifier("256").is_err());
        assert!(offers_md5("7,5").is_ok());
        assert!(offers_md5("7,6").is_err());
    }

    #[test]
    fn challenges_are_random_and_round_trip() {
        let a = Challenge::generate().unwrap();
        let b = Challenge::generate().unwrap();
        assert_ne!(a.bytes, b.bytes);
        assert!(a.bytes.len() >= MIN_CHALLENGE_LEN);
        let [(_, id), (_, c)] = a.to_keys();
        assert_eq!(Challenge::from_keys(&id, &c).unwrap(), a);
        assert!(check_not_reflected(&a, &a).is_err());
        assert!(check_not_reflected(&a, &b).is_ok());
        assert!(matches!(
            Challenge::from_keys("1", "0x0102"),
            Err(ChapError::BadChallengeLength { length: 2 })
        ));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(check_secret("u", "elevenchars").is_err());
        assert!(check_secret("u", "twelve-chars").is_ok());
    }
}

//! Password hashes for /etc/shadow: sha512-crypt (`$6$`) and yescrypt (`$y$`),
//! with a random salt, and the choice virt-customize makes by guest: yescrypt
//! where the guest's libxcrypt defaults to it, sha512-crypt elsewhere.

use crate::customize::ops::PasswordCrypto;
use crate::customize::osinfo::OsRelease;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("hashing the password of {user} with {algorithm}: {reason}")]
    Hash {
        user: String,
        algorithm: &'static str,
        reason: String,
    },
    #[error("no randomness for a password: {0}")]
    Random(String),
}

/// Hash `password` with `crypto` (the user only names the account in errors).
pub fn hash(password: &str, crypto: PasswordCrypto, user: &str) -> Result<String, PasswordError> {
    let fail = |algorithm: &'static str, reason: String| PasswordError::Hash {
        user: user.to_string(),
        algorithm,
        reason,
    };
    match crypto {
        PasswordCrypto::Sha512 => {
            use sha_crypt::PasswordHasher;
            // 12 bytes encode to the 16 salt characters sha512-crypt uses;
            // crypt(3) would silently cut a longer salt and never match.
            let mut salt = [0u8; 12];
            getrandom::fill(&mut salt).map_err(|e| PasswordError::Random(e.to_string()))?;
            sha_crypt::ShaCrypt::default()
                .hash_password_with_salt(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| fail("sha512-crypt", e.to_string()))
        }
        PasswordCrypto::Yescrypt => {
            use yescrypt::PasswordHasher;
            yescrypt::Yescrypt::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| fail("yescrypt", e.to_string()))
        }
    }
}

/// The default for a guest, as virt-customize picks it: yescrypt on Debian
/// 11+, Ubuntu 22.04+, Fedora 35+ and EL 9+; sha512-crypt otherwise.
pub fn default_for(os: Option<&OsRelease>) -> PasswordCrypto {
    let Some(os) = os else {
        return PasswordCrypto::Sha512;
    };
    let major = os.major_version().unwrap_or(0);
    let family_min = match os.id.as_str() {
        "debian" => Some(11),
        "ubuntu" => Some(22),
        "fedora" => Some(35),
        "rhel" | "centos" | "rocky" | "almalinux" | "ol" => Some(9),
        _ => None,
    };
    match family_min {
        Some(min) if major >= min => PasswordCrypto::Yescrypt,
        _ => PasswordCrypto::Sha512,
    }
}

/// A random password of 16 characters from an unambiguous alphabet.
pub fn random_password() -> Result<String, PasswordError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::new();
    while out.len() < 16 {
        let mut buf = [0u8; 32];
        getrandom::fill(&mut buf).map_err(|e| PasswordError::Random(e.to_string()))?;
        // Reject bytes past the largest multiple of the alphabet: no bias.
        let limit = 256 - (256 % ALPHABET.len());
        for b in buf {
            if (b as usize) < limit && out.len() < 16 {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

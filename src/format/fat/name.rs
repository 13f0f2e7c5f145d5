//! Names: which long names FAT accepts, 8.3 short names (exact ones and generated
//! ones with `~N` tails), the long-name checksum, and volume labels.

use std::collections::{HashMap, HashSet};

use super::FatError;

/// A short name as stored: 8 bytes of base and 3 of extension, space padded.
pub type ShortName = [u8; 11];

/// Longest long name, in UTF-16 code units.
pub const MAX_LONG_NAME: usize = 255;

/// Characters besides A-Z and 0-9 that short names may contain.
const SHORT_SPECIAL: &[u8] = b"!#$%&'()-@^_`{}~";

/// Characters a long name must not contain (besides controls below 0x20).
const LONG_FORBIDDEN: &str = "\"*/:<>?\\|";

/// Characters a volume label must not contain (besides controls below 0x20).
const LABEL_FORBIDDEN: &[u8] = b"\"*+,./:;<=>?[\\]|";

fn is_short_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_SPECIAL.contains(&b)
}

/// Why `name` cannot be a FAT long name, if it cannot.
pub fn check_long_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("reserved name");
    }
    if name
        .chars()
        .any(|c| (c as u32) < 0x20 || LONG_FORBIDDEN.contains(c))
    {
        return Err("contains a control character or one of \" * / : < > ? \\ |");
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Err("ends with a dot or a space");
    }
    if name.encode_utf16().count() > MAX_LONG_NAME {
        return Err("longer than 255 UTF-16 characters");
    }
    Ok(())
}

/// The stored form of `name` if it is already a valid upper-case 8.3 name
/// (1-8 characters, optionally a dot and 1-3 characters), else `None`.
pub fn exact_short_name(name: &str) -> Option<ShortName> {
    let bytes = name.as_bytes();
    let (base, ext) = match bytes.iter().position(|&b| b == b'.') {
        Some(dot) => (&bytes[..dot], &bytes[dot + 1..]),
        None => (bytes, &bytes[bytes.len()..]),
    };
    let has_dot = base.len() < bytes.len();
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || (has_dot && ext.is_empty()) {
        return None;
    }
    if !base.iter().chain(ext).all(|&b| is_short_char(b)) {
        return None;
    }
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base);
    out[8..8 + ext.len()].copy_from_slice(ext);
    Some(out)
}

/// Map one character of a long name into the short-name alphabet; `None` drops it.
fn short_char(c: char) -> Option<u8> {
    match c {
        ' ' | '.' => None,
        c if c.is_ascii() => {
            let up = c.to_ascii_uppercase() as u8;
            Some(if is_short_char(up) { up } else { b'_' })
        }
        _ => Some(b'_'),
    }
}

/// The base (at most 8 bytes, never empty) and extension (at most 3 bytes) that
/// generated short names of `long` start from.
fn basis(long: &str) -> (Vec<u8>, Vec<u8>) {
    let trimmed = long.trim_start_matches(['.', ' ']);
    let (base, ext) = match trimmed.rfind('.') {
        Some(dot) => (&trimmed[..dot], &trimmed[dot + 1..]),
        None => (trimmed, ""),
    };
    let mut base: Vec<u8> = base.chars().filter_map(short_char).take(8).collect();
    if base.is_empty() {
        base.push(b'_');
    }
    let ext = ext.chars().filter_map(short_char).take(3).collect();
    (base, ext)
}

/// Hands out the short names of one directory, never the same one twice.
#[derive(Default)]
pub struct ShortNames {
    used: HashSet<ShortName>,
    /// Next tail number to try for a (base, extension) basis.
    next_tail: HashMap<(Vec<u8>, Vec<u8>), u32>,
}

impl ShortNames {
    /// Claim `name`; false if it is already taken.
    pub fn claim(&mut self, name: ShortName) -> bool {
        self.used.insert(name)
    }

    /// A fresh short name for `long`: `BASE~N.EXT` with the smallest free N.
    /// `None` only if all tails up to `~999999` are taken.
    pub fn generate(&mut self, long: &str) -> Option<ShortName> {
        let key = basis(long);
        let (base, ext) = (&key.0, &key.1);
        let mut n = self.next_tail.get(&key).copied().unwrap_or(1);
        while n <= 999_999 {
            let tail = format!("~{n}");
            let keep = base.len().min(8 - tail.len());
            let mut candidate = [b' '; 11];
            candidate[..keep].copy_from_slice(&base[..keep]);
            candidate[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
            candidate[8..8 + ext.len()].copy_from_slice(ext);
            n += 1;
            if self.used.insert(candidate) {
                self.next_tail.insert(key, n);
                return Some(candidate);
            }
        }
        None
    }
}

/// The checksum of a short name that its long-name entries carry.
pub fn lfn_checksum(short: &ShortName) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Validate a volume label and give its stored form (upper-cased, space padded).
pub fn label_bytes(label: &str) -> Result<ShortName, FatError> {
    let bad = |reason: &str| FatError::BadLabel {
        label: label.to_string(),
        reason: reason.to_string(),
    };
    if !label.is_ascii() {
        return Err(bad("only ASCII characters are allowed"));
    }
    if label.len() > 11 {
        return Err(bad("longer than 11 characters"));
    }
    if label.trim().is_empty() {
        return Err(bad("empty"));
    }
    if label.starts_with(' ') {
        return Err(bad("starts with a space"));
    }
    if let Some(c) = label
        .bytes()
        .find(|&b| b < 0x20 || b == 0x7f || LABEL_FORBIDDEN.contains(&b))
    {
        return Err(bad(&format!(
            "character {:?} is not allowed in a label",
            char::from(c)
        )));
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.to_ascii_uppercase().as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &ShortName) -> String {
        String::from_utf8_lossy(name).into_owned()
    }

    #[test]
    fn exact_names() {
        assert_eq!(s(&exact_short_name("README.TXT").unwrap()), "README  TXT");
        assert_eq!(s(&exact_short_name("A").unwrap()), "A          ");
        assert_eq!(s(&exact_short_name("12345678.ABC").unwrap()), "12345678ABC");
        assert_eq!(s(&exact_short_name("$~A_{}.!#").unwrap()), "$~A_{}  !# ");
        for bad in [
            "readme.txt",
            "README.txt",
            "123456789",
            "A.ABCD",
            "A.B.C",
            ".A",
            "A.",
            "A B",
            "A+B",
            "",
            "Ä",
        ] {
            assert_eq!(exact_short_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn generated_names_with_tails() {
        let mut names = ShortNames::default();
        let g = |names: &mut ShortNames, long: &str| s(&names.generate(long).unwrap());
        assert_eq!(g(&mut names, "longfilename1.txt"), "LONGFI~1TXT");
        assert_eq!(g(&mut names, "longfilename2.txt"), "LONGFI~2TXT");
        assert_eq!(g(&mut names, "LongFileName3.TXT"), "LONGFI~3TXT");
        assert_eq!(g(&mut names, "My Documents"), "MYDOCU~1   ");
        assert_eq!(g(&mut names, ".bashrc"), "BASHRC~1   ");
        assert_eq!(g(&mut names, "archive.tar.gz"), "ARCHIV~1GZ ");
        assert_eq!(g(&mut names, "a+b=c[1].jpeg"), "A_B_C_~1JPE");
        assert_eq!(g(&mut names, "日本語.txt"), "___~1   TXT");
        for i in 4..=9 {
            assert_eq!(
                g(&mut names, &format!("longfilename{i}.txt")),
                format!("LONGFI~{i}TXT")
            );
        }
        // Two-digit tails shorten the base further.
        assert_eq!(g(&mut names, "longfilename10.txt"), "LONGF~10TXT");
        // A name claimed first is skipped by the generator.
        assert!(names.claim(*b"SHORT~1 TXT"));
        assert!(!names.claim(*b"SHORT~1 TXT"));
        assert_eq!(g(&mut names, "short file.txt"), "SHORTF~1TXT");
        assert_eq!(g(&mut names, "short.txt"), "SHORT~2 TXT");
    }

    #[test]
    fn many_collisions_stay_unique() {
        let mut names = ShortNames::default();
        let mut seen = HashSet::new();
        for i in 0..20_000 {
            let n = names.generate(&format!("collide-{i}.dat")).unwrap();
            assert!(seen.insert(n), "duplicate {}", s(&n));
        }
        assert_eq!(s(&names.generate("collide-x.dat").unwrap()), "CO~20001DAT");
    }

    #[test]
    fn checksum() {
        // Values of the rotate-right-and-add rule worked out by hand, and one read
        // from a long-name entry that mtools wrote.
        assert_eq!(lfn_checksum(b"           "), {
            let mut sum: u8 = 0;
            for _ in 0..11 {
                sum = (((sum & 1) << 7) | (sum >> 1)).wrapping_add(b' ');
            }
            sum
        });
        assert_eq!(lfn_checksum(&[0; 11]), 0);
        assert_eq!(lfn_checksum(b"A\0\0\0\0\0\0\0\0\0\0"), 0x50);
        assert_eq!(lfn_checksum(b"\0\0\0\0\0\0\0\0\0\0\x01"), 1);
        assert_eq!(lfn_checksum(b"LONGFI~1TXT"), 0xd4);
    }

    #[test]
    fn long_names() {
        assert!(check_long_name("My File (1).tar.gz").is_ok());
        assert!(check_long_name("ünïcødé 日本").is_ok());
        assert!(check_long_name(&"x".repeat(255)).is_ok());
        assert!(check_long_name(&"x".repeat(256)).is_err());
        assert!(check_long_name("a:b").is_err());
        assert!(check_long_name("a\nb").is_err());
        assert!(check_long_name("trailing.").is_err());
        assert!(check_long_name("trailing ").is_err());
        assert!(check_long_name("..").is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(s(&label_bytes("boot").unwrap()), "BOOT       ");
        assert_eq!(s(&label_bytes("EFI SYSTEM").unwrap()), "EFI SYSTEM ");
        assert_eq!(s(&label_bytes("ABCDEFGHIJK").unwrap()), "ABCDEFGHIJK");
        for bad in ["ABCDEFGHIJKL", "", "   ", " X", "A.B", "A*", "É", "a\tb"] {
            assert!(label_bytes(bad).is_err(), "{bad:?}");
        }
    }
}

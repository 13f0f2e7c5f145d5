//! The Unix `ar` archive that wraps a .deb: the global magic "!<arch>\n", then per
//! member a 60-byte header (name 16, mtime 12, uid 6, gid 6, octal mode 8, decimal
//! size 10, terminator "`\n") and the data, padded to an even offset. Only the
//! common (System V / GNU) short names are needed for .deb files.

use std::io::{Read, Seek, SeekFrom};

pub const AR_MAGIC: &[u8; 8] = b"!<arch>\n";
const MEMBER_HEADER: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum ArError {
    #[error("not an ar archive: magic is {0:?}, expected \"!<arch>\\n\"")]
    BadMagic(String),
    #[error("ar archive: member header at offset {offset}: {reason}")]
    BadHeader { offset: u64, reason: String },
    #[error(
        "ar archive: member {name:?} (header at offset {offset}) declares {size} bytes but only {left} remain in the file"
    )]
    PastEof {
        name: String,
        offset: u64,
        size: u64,
        left: u64,
    },
    #[error("ar archive: read error at offset {offset}: {source}")]
    Read { offset: u64, source: std::io::Error },
}

/// One member: its name (trailing '/' and spaces removed) and where its data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Offset of the member header.
    pub header_offset: u64,
    /// Offset and size of the member data.
    pub offset: u64,
    pub size: u64,
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> Result<(), ArError> {
    r.seek(SeekFrom::Start(offset))
        .and_then(|_| r.read_exact(buf))
        .map_err(|source| ArError::Read { offset, source })
}

/// List the members of an ar archive of `len` bytes.
pub fn members<R: Read + Seek>(r: &mut R, len: u64) -> Result<Vec<Member>, ArError> {
    let mut magic = [0u8; 8];
    let n = len.min(8) as usize;
    read_at(r, 0, &mut magic[..n])?;
    if n < 8 || &magic != AR_MAGIC {
        return Err(ArError::BadMagic(
            String::from_utf8_lossy(&magic[..n]).into_owned(),
        ));
    }
    let mut out = Vec::new();
    let mut pos = 8u64;
    // A single padding byte may end the archive.
    while len - pos > 1 {
        if len - pos < MEMBER_HEADER {
            return Err(ArError::BadHeader {
                offset: pos,
                reason: format!("only {} bytes left, a header takes 60", len - pos),
            });
        }
        let mut h = [0u8; MEMBER_HEADER as usize];
        read_at(r, pos, &mut h)?;
        let bad = |reason: String| ArError::BadHeader {
            offset: pos,
            reason,
        };
        if &h[58..60] != b"`\n" {
            return Err(bad(format!(
                "terminator is {:?}, expected \"`\\n\"",
                String::from_utf8_lossy(&h[58..60])
            )));
        }
        let name = std::str::from_utf8(&h[..16])
            .map_err(|_| bad("name is not text".into()))?
            .trim_end_matches(' ');
        let name = name.strip_suffix('/').unwrap_or(name).to_string();
        if name.starts_with("#1/") {
            return Err(bad(format!("BSD long name {name:?} is not supported")));
        }
        let size_field = std::str::from_utf8(&h[48..58])
            .ok()
            .map(|s| s.trim_end_matches(' '))
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        let size: u64 = size_field.and_then(|s| s.parse().ok()).ok_or_else(|| {
            bad(format!(
                "size field {:?} is not a decimal number",
                String::from_utf8_lossy(&h[48..58])
            ))
        })?;
        let data = pos + MEMBER_HEADER;
        if size > len - data {
            return Err(ArError::PastEof {
                name,
                offset: pos,
                size,
                left: len - data,
            });
        }
        out.push(Member {
            name,
            header_offset: pos,
            offset: data,
            size,
        });
        pos = data + size + (size & 1);
        if pos > len {
            // Padding byte missing at the very end: tolerated, as ar tools do.
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    pub(crate) fn header(name: &str, size: usize) -> Vec<u8> {
        let h = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            name, 0, 0, 0, 100644, size
        );
        assert_eq!(h.len(), 60);
        h.into_bytes()
    }

    pub(crate) fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = AR_MAGIC.to_vec();
        for (name, data) in members {
            out.extend(header(name, data.len()));
            out.extend_from_slice(data);
            if !data.len().is_multiple_of(2) {
                out.push(b'\n');
            }
        }
        out
    }

    fn list(bytes: &[u8]) -> Result<Vec<Member>, ArError> {
        members(&mut Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn lists_members() {
        let a = archive(&[("debian-binary", b"2.0\n"), ("data.tar/", b"abc")]);
        let m = list(&a).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "debian-binary");
        assert_eq!((m[0].offset, m[0].size), (68, 4));
        assert_eq!(m[1].name, "data.tar");
        assert_eq!(&a[m[1].offset as usize..][..3], b"abc");
        // Without the final padding byte.
        assert_eq!(list(&a[..a.len() - 1]).unwrap().len(), 2);
    }

    #[test]
    fn rejects_broken_archives() {
        assert!(matches!(list(b"!<arch"), Err(ArError::BadMagic(_))));
        assert!(matches!(list(b"!<bogus>\n"), Err(ArError::BadMagic(_))));
        let a = archive(&[("debian-binary", b"2.0\n")]);
        // Header cut short.
        assert!(matches!(list(&a[..40]), Err(ArError::BadHeader { .. })));
        // Size past the end of the file.
        let mut b = a.clone();
        b[8 + 48..8 + 58].copy_from_slice(b"999999    ");
        let err = list(&b).unwrap_err();
        assert!(
            matches!(err, ArError::PastEof { size: 999_999, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("debian-binary"));
        // Non-numeric size, bad terminator.
        let mut b = a.clone();
        b[8 + 48] = b'-';
        assert!(list(&b).unwrap_err().to_string().contains("size field"));
        let mut b = a.clone();
        b[8 + 58] = b'x';
        assert!(list(&b).unwrap_err().to_string().contains("terminator"));
    }
}

//! The cpio archive inside an RPM payload, read as a stream. Supported: the "new
//! ASCII" format (magic 070701) and its CRC variant (070702): a 110-byte header of
//! hex fields, the NUL-terminated name, padding to 4, the data, padding to 4; the
//! archive ends with an entry named "TRAILER!!!".
//!
//! Hardlinks: members of a link set share (dev, ino); the data is stored once,
//! usually with the last member, the others have size 0. Every member of the set
//! gets a copy of the data.
//!
//! RPM's "stripped" format (070701's cousin 07070X, which moves all metadata into
//! the RPM header) is written only for packages holding a file of 4 GiB or more,
//! which is over kiln's payload limit anyway; it is reported as unsupported.

use std::collections::HashMap;
use std::io::{self, Read};

use crate::format::pkgarchive::{
    ArchiveEntry, EntryKind, Limited, MAX_PATH_BYTES, read_all, special_type_name,
};

pub const NEWC_MAGIC: &[u8; 6] = b"070701";
pub const CRC_MAGIC: &[u8; 6] = b"070702";
pub const STRIPPED_MAGIC: &[u8; 6] = b"07070X";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("cpio payload ends early at offset {offset} (reading {what})")]
    Truncated { offset: u64, what: &'static str },
    #[error("cpio payload: read error at offset {offset}: {source}")]
    Read { offset: u64, source: io::Error },
    #[error(
        "cpio payload: header at offset {offset} has magic {found:?}; only the newc format (070701/070702) is supported"
    )]
    BadMagic { offset: u64, found: String },
    #[error(
        "cpio payload: header at offset {offset} uses RPM's stripped format (07070X), written only for files of 4 GiB or more; not supported"
    )]
    Stripped { offset: u64 },
    #[error("cpio payload: header at offset {offset}: field {field} is not hex: {value:?}")]
    BadField {
        offset: u64,
        field: &'static str,
        value: String,
    },
    #[error("cpio payload: entry at offset {offset}: name size {size} is out of range (1..={max})")]
    NameSize { offset: u64, size: u64, max: usize },
    #[error("cpio payload: entry at offset {offset}: name is not NUL-terminated UTF-8")]
    BadName { offset: u64 },
    #[error("cpio payload: symlink {name:?} at offset {offset}: target {reason}")]
    BadLink {
        offset: u64,
        name: String,
        reason: &'static str,
    },
    #[error("cpio payload: entry {name:?} at offset {offset} has data but is a {kind}")]
    DataOnNonFile {
        offset: u64,
        name: String,
        kind: &'static str,
    },
}

struct Stream<R> {
    inner: Limited<R>,
}

impl<R: Read> Stream<R> {
    fn offset(&self) -> u64 {
        self.inner.position()
    }

    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), CpioError> {
        let offset = self.offset();
        self.inner.read_exact(buf).map_err(|source| {
            if source.kind() == io::ErrorKind::UnexpectedEof {
                CpioError::Truncated { offset, what }
            } else {
                CpioError::Read { offset, source }
            }
        })
    }

    fn skip_pad(&mut self) -> Result<(), CpioError> {
        let pad = (4 - (self.offset() % 4) as usize) % 4;
        let mut buf = [0u8; 3];
        self.exact(&mut buf[..pad], "padding")
    }

    fn data(&mut self, size: u64) -> Result<Vec<u8>, CpioError> {
        let offset = self.offset();
        let mut take = (&mut self.inner).take(size);
        let data =
            read_all(&mut take, size).map_err(|source| CpioError::Read { offset, source })?;
        if (data.len() as u64) < size {
            return Err(CpioError::Truncated {
                offset: offset + data.len() as u64,
                what: "file data",
            });
        }
        Ok(data)
    }
}

fn hex(field: &[u8], name: &'static str, offset: u64) -> Result<u32, CpioError> {
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or_else(|| CpioError::BadField {
            offset,
            field: name,
            value: String::from_utf8_lossy(field).into_owned(),
        })
}

/// (dev major, dev minor, inode) of a hardlink set.
type LinkKey = (u32, u32, u32);
/// Indices of the set's members in the output, and the data once seen.
type LinkSet = (Vec<usize>, Option<Vec<u8>>);

/// Read every entry of a newc cpio stream (already decompressed and bounded).
pub fn read_newc<R: Read>(inner: Limited<R>) -> Result<Vec<ArchiveEntry>, CpioError> {
    let mut s = Stream { inner };
    let mut out: Vec<ArchiveEntry> = Vec::new();
    // Hardlink sets: (dev major, dev minor, ino) -> indices into `out`, data.
    let mut links: HashMap<LinkKey, LinkSet> = HashMap::new();
    loop {
        let at = s.offset();
        let mut h = [0u8; HEADER_LEN];
        s.exact(&mut h, "entry header")?;
        let magic = &h[..6];
        if magic == STRIPPED_MAGIC {
            return Err(CpioError::Stripped { offset: at });
        }
        if magic != NEWC_MAGIC && magic != CRC_MAGIC {
            return Err(CpioError::BadMagic {
                offset: at,
                found: String::from_utf8_lossy(magic).into_owned(),
            });
        }
        let field = |i: usize, name: &'static str| hex(&h[6 + 8 * i..14 + 8 * i], name, at);
        let ino = field(0, "c_ino")?;
        let mode = field(1, "c_mode")?;
        let uid = field(2, "c_uid")?;
        let gid = field(3, "c_gid")?;
        let nlink = field(4, "c_nlink")?;
        let size = u64::from(field(6, "c_filesize")?);
        let devmajor = field(7, "c_devmajor")?;
        let devminor = field(8, "c_devminor")?;
        let namesize = field(11, "c_namesize")?;
        if namesize == 0 || namesize as usize > MAX_PATH_BYTES + 1 {
            return Err(CpioError::NameSize {
                offset: at,
                size: u64::from(namesize),
                max: MAX_PATH_BYTES + 1,
            });
        }
        let mut name = vec![0u8; namesize as usize];
        s.exact(&mut name, "entry name")?;
        if name.pop() != Some(0) || name.contains(&0) {
            return Err(CpioError::BadName { offset: at });
        }
        let name = String::from_utf8(name).map_err(|_| CpioError::BadName { offset: at })?;
        s.skip_pad()?;
        if name == TRAILER {
            // Read the rest of the stream (padding) so the decompressor checks
            // its end-of-stream checksum: a cut or corrupted tail is an error.
            let offset = s.offset();
            io::copy(&mut s.inner, &mut io::sink())
                .map_err(|source| CpioError::Read { offset, source })?;
            break;
        }
        let data = s.data(size)?;
        s.skip_pad()?;
        let kind = match mode & 0o170000 {
            0o100000 => {
                if nlink > 1 {
                    let set = links.entry((devmajor, devminor, ino)).or_default();
                    set.0.push(out.len());
                    if !data.is_empty() {
                        set.1 = Some(data.clone());
                    }
                }
                EntryKind::File(data)
            }
            0o040000 => {
                if !data.is_empty() {
                    return Err(CpioError::DataOnNonFile {
                        offset: at,
                        name,
                        kind: "directory",
                    });
                }
                EntryKind::Dir
            }
            0o120000 => {
                if data.is_empty() || data.len() > MAX_PATH_BYTES {
                    return Err(CpioError::BadLink {
                        offset: at,
                        name,
                        reason: "is empty or longer than 4096 bytes",
                    });
                }
                match String::from_utf8(data) {
                    Ok(t) if !t.contains('\0') => EntryKind::Symlink(t),
                    _ => {
                        return Err(CpioError::BadLink {
                            offset: at,
                            name,
                            reason: "is not UTF-8 text",
                        });
                    }
                }
            }
            other => EntryKind::Special(special_type_name(other)),
        };
        out.push(ArchiveEntry {
            path: name,
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
        });
    }
    for (members, data) in links.into_values() {
        if let Some(data) = data {
            for i in members {
                out[i].kind = EntryKind::File(data.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One newc entry (header, name, padding, data, padding).
    pub(crate) fn entry(name: &str, mode: u32, ino: u32, nlink: u32, data: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        )
        .into_bytes();
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out
    }

    pub(crate) fn trailer() -> Vec<u8> {
        entry(TRAILER, 0, 0, 1, b"")
    }

    fn parse(bytes: &[u8]) -> Result<Vec<ArchiveEntry>, CpioError> {
        read_newc(Limited::new(bytes, u64::MAX))
    }

    #[test]
    fn reads_entries_and_hardlinks() {
        let mut a = Vec::new();
        a.extend(entry("./lib", 0o40755, 1, 2, b""));
        a.extend(entry("./lib/a.ko", 0o100644, 2, 1, b"hello"));
        a.extend(entry("./lib/link", 0o120777, 3, 1, b"a.ko"));
        a.extend(entry("./lib/h1", 0o100600, 9, 2, b""));
        a.extend(entry("./lib/h2", 0o100600, 9, 2, b"shared"));
        a.extend(trailer());
        let e = parse(&a).unwrap();
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].kind, EntryKind::Dir);
        assert_eq!(e[0].mode, 0o755);
        assert_eq!(e[1].kind, EntryKind::File(b"hello".to_vec()));
        assert_eq!(e[2].kind, EntryKind::Symlink("a.ko".into()));
        assert_eq!(e[3].kind, EntryKind::File(b"shared".to_vec()));
        assert_eq!(e[4].kind, EntryKind::File(b"shared".to_vec()));
        assert_eq!(e[3].mode, 0o600);
    }

    #[test]
    fn rejects_broken_archives() {
        let mut a = entry("./x", 0o100644, 1, 1, b"data");
        a.extend(trailer());
        // Truncated anywhere: clean error.
        for cut in [0, 50, 112, 118, a.len() - 4] {
            let err = parse(&a[..cut]).unwrap_err();
            assert!(matches!(err, CpioError::Truncated { .. }), "{cut}: {err}");
        }
        // Bad hex in the size field.
        let mut b = a.clone();
        b[54] = b'z';
        let err = parse(&b).unwrap_err();
        assert!(err.to_string().contains("c_filesize"), "{err}");
        // Old binary cpio magic / stripped.
        let mut b = a.clone();
        b[..6].copy_from_slice(b"070707");
        assert!(matches!(parse(&b), Err(CpioError::BadMagic { .. })));
        b[..6].copy_from_slice(b"07070X");
        assert!(matches!(parse(&b), Err(CpioError::Stripped { .. })));
        // Huge name size.
        let mut b = a.clone();
        b[94..102].copy_from_slice(b"ffffffff");
        assert!(matches!(parse(&b), Err(CpioError::NameSize { .. })));
        // Huge declared data size but short stream: truncated, no huge allocation.
        let mut b = a.clone();
        b[54..62].copy_from_slice(b"fffffff0");
        assert!(matches!(parse(&b), Err(CpioError::Truncated { .. })));
        // A device node is reported as special, not read as a file.
        let mut c = entry("./dev/sda", 0o60660, 1, 1, b"");
        c.extend(trailer());
        assert_eq!(
            parse(&c).unwrap()[0].kind,
            EntryKind::Special("block device")
        );
    }
}

//! Debian binary packages (.deb), read without dpkg: an `ar` archive whose first
//! member is "debian-binary" ("2.0"), followed by control.tar[.gz|.xz|.zst] and
//! data.tar[.gz|.xz|.zst|.bz2|.lzma]. The data tarball is read with the `tar`
//! crate (GNU and PAX long names, links, modes, owners).

pub mod ar;

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};

use crate::format::pkgarchive::{
    self, ArchiveEntry, Compression, EntryKind, MAX_PATH_BYTES, read_all,
};
pub use ar::{ArError, Member};

/// Bound on the decompressed control tarball.
const MAX_CONTROL_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error(transparent)]
    Ar(#[from] ArError),
    #[error("deb: the first member is {0:?}, expected \"debian-binary\"")]
    FirstMember(String),
    #[error("deb: debian-binary says {0:?}; only format version 2.0 is supported")]
    Version(String),
    #[error("deb: no {0} member")]
    MissingMember(&'static str),
    #[error("deb: member {name:?} has an unsupported compression suffix")]
    UnknownCompression { name: String },
    #[error("deb: member {name:?} should be {declared} by its name but starts with {head:02x?}")]
    CompressionMismatch {
        name: String,
        declared: Compression,
        head: Vec<u8>,
    },
    #[error("deb: member {name:?} at offset {offset}: {source}")]
    Read {
        name: String,
        offset: u64,
        source: io::Error,
    },
    #[error("deb: {member}: tar entry {path:?} (header at offset {offset}): {reason}")]
    Entry {
        member: String,
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("deb: {member} has no control file")]
    NoControl { member: String },
    #[error("deb: control file: {0}")]
    Control(String),
}

/// The members of a .deb that matter.
#[derive(Debug, Clone)]
pub struct Deb {
    pub control: Member,
    pub data: Member,
}

/// Package, Version and Architecture from the control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebInfo {
    pub package: String,
    pub version: String,
    pub architecture: String,
}

/// Check the ar structure and debian-binary, and locate the control and data members.
pub fn open<R: Read + Seek>(r: &mut R, len: u64) -> Result<Deb, DebError> {
    let members = ar::members(r, len)?;
    let first = members
        .first()
        .ok_or(DebError::MissingMember("debian-binary"))?;
    if first.name != "debian-binary" {
        return Err(DebError::FirstMember(first.name.clone()));
    }
    if first.size > 64 {
        return Err(DebError::Version(format!("<{} bytes>", first.size)));
    }
    let mut version = vec![0u8; first.size as usize];
    r.seek(SeekFrom::Start(first.offset))
        .and_then(|_| r.read_exact(&mut version))
        .map_err(|source| DebError::Read {
            name: first.name.clone(),
            offset: first.offset,
            source,
        })?;
    let version = String::from_utf8_lossy(&version).into_owned();
    if version.trim_end() != "2.0" {
        return Err(DebError::Version(version));
    }
    let find = |prefix: &'static str| {
        members
            .iter()
            .find(|m| m.name == prefix || m.name.starts_with(&format!("{prefix}.")))
            .cloned()
            .ok_or(DebError::MissingMember(prefix))
    };
    Ok(Deb {
        control: find("control.tar")?,
        data: find("data.tar")?,
    })
}

fn member_compression(name: &str) -> Option<Compression> {
    let ext = name
        .strip_prefix("control.tar")
        .or_else(|| name.strip_prefix("data.tar"))?;
    match ext {
        "" => Some(Compression::None),
        ".gz" => Some(Compression::Gzip),
        ".xz" => Some(Compression::Xz),
        ".zst" => Some(Compression::Zstd),
        ".bz2" => Some(Compression::Bzip2),
        ".lzma" => Some(Compression::Lzma),
        _ => None,
    }
}

/// A bounded, decompressing reader over one member.
fn member_reader<'a, R: Read + Seek + 'a>(
    r: &'a mut R,
    m: &Member,
    limit: u64,
) -> Result<pkgarchive::Limited<Box<dyn Read + 'a>>, DebError> {
    let declared = member_compression(&m.name).ok_or_else(|| DebError::UnknownCompression {
        name: m.name.clone(),
    })?;
    let rd = |source| DebError::Read {
        name: m.name.clone(),
        offset: m.offset,
        source,
    };
    r.seek(SeekFrom::Start(m.offset)).map_err(rd)?;
    let raw = io::BufReader::new(r.take(m.size));
    let (head, stream) = pkgarchive::peek::<_, 8>(raw).map_err(rd)?;
    if declared != Compression::None {
        let sniffed = Compression::sniff(&head);
        let lzma_guess = declared == Compression::Lzma && sniffed.is_none();
        if sniffed != Some(declared) && !lzma_guess {
            return Err(DebError::CompressionMismatch {
                name: m.name.clone(),
                declared,
                head,
            });
        }
    }
    pkgarchive::decoder(declared, stream, limit).map_err(rd)
}

/// Strip "./" and "/" prefixes and trailing "/" so names compare as tar meant them.
fn link_key(path: &str) -> &str {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            break;
        }
    }
    p.trim_end_matches('/')
}

/// Read every entry of a tar stream. `member` names the tarball in errors.
fn read_tar<R: Read>(member: &str, r: R) -> Result<Vec<ArchiveEntry>, DebError> {
    let mut archive = tar::Archive::new(r);
    let tar_err = |offset: u64, path: &str, e: io::Error| DebError::Entry {
        member: member.to_string(),
        path: path.to_string(),
        offset,
        reason: e.to_string(),
    };
    let entries = archive.entries().map_err(|e| tar_err(0, "", e))?;
    let mut out: Vec<ArchiveEntry> = Vec::new();
    let mut files: HashMap<String, usize> = HashMap::new();
    let mut last_offset = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_err(last_offset, "<after previous entry>", e))?;
        let offset = entry.raw_header_position();
        last_offset = offset;
        let path_bytes = entry.path_bytes().into_owned();
        let path_lossy = String::from_utf8_lossy(&path_bytes).into_owned();
        let fail = |reason: String| DebError::Entry {
            member: member.to_string(),
            path: path_lossy.clone(),
            offset,
            reason,
        };
        let path = String::from_utf8(path_bytes).map_err(|_| fail("path is not UTF-8".into()))?;
        if path.len() > MAX_PATH_BYTES || path.contains('\0') {
            return Err(fail("path is too long or contains NUL".into()));
        }
        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| fail(format!("mode field: {e}")))?
            & 0o7777;
        let uid = header
            .uid()
            .ok()
            .and_then(|u| u32::try_from(u).ok())
            .ok_or_else(|| fail("uid field is invalid or too large".into()))?;
        let gid = header
            .gid()
            .ok()
            .and_then(|g| u32::try_from(g).ok())
            .ok_or_else(|| fail("gid field is invalid or too large".into()))?;
        let ty = header.entry_type();
        let link_target = || -> Result<String, DebError> {
            let t = entry
                .link_name_bytes()
                .ok_or_else(|| fail("link without a target".into()))?;
            if t.is_empty() || t.len() > MAX_PATH_BYTES || t.contains(&0) {
                return Err(fail("link target is empty or too long".into()));
            }
            String::from_utf8(t.into_owned()).map_err(|_| fail("link target is not UTF-8".into()))
        };
        use tar::EntryType as T;
        let kind = match ty {
            T::Regular | T::Continuous => {
                let size = entry.size();
                let data = read_all(&mut entry, size).map_err(|e| fail(e.to_string()))?;
                files.insert(link_key(&path).to_string(), out.len());
                EntryKind::File(data)
            }
            T::Directory => EntryKind::Dir,
            T::Symlink => EntryKind::Symlink(link_target()?),
            T::Link => {
                let target = link_target()?;
                let &i = files.get(link_key(&target)).ok_or_else(|| {
                    fail(format!(
                        "hardlink to {target:?}, which is not an earlier regular file"
                    ))
                })?;
                files.insert(link_key(&path).to_string(), out.len());
                out[i].kind.clone()
            }
            T::Char => EntryKind::Special("character device"),
            T::Block => EntryKind::Special("block device"),
            T::Fifo => EntryKind::Special("fifo"),
            T::XGlobalHeader => continue,
            other => {
                return Err(fail(format!(
                    "unsupported tar entry type {:?} ({:?})",
                    other.as_byte() as char,
                    other
                )));
            }
        };
        out.push(ArchiveEntry {
            path,
            kind,
            mode,
            uid,
            gid,
        });
    }
    Ok(out)
}

impl Deb {
    /// Every entry of data.tar, hardlinks turned into copies. `limit` bounds the
    /// decompressed size.
    pub fn data_entries<R: Read + Seek>(
        &self,
        r: &mut R,
        limit: u64,
    ) -> Result<Vec<ArchiveEntry>, DebError> {
        let reader = member_reader(r, &self.data, limit)?;
        read_tar(&self.data.name, reader)
    }

    pub fn info<R: Read + Seek>(&self, r: &mut R) -> Result<DebInfo, DebError> {
        let reader = member_reader(r, &self.control, MAX_CONTROL_BYTES)?;
        let entries = read_tar(&self.control.name, reader)?;
        let control = entries
            .into_iter()
            .find(|e| link_key(&e.path) == "control")
            .and_then(|e| match e.kind {
                EntryKind::File(d) => Some(d),
                _ => None,
            })
            .ok_or_else(|| DebError::NoControl {
                member: self.control.name.clone(),
            })?;
        parse_control(&control)
    }
}

/// Parse the fields needed from a deb822 control paragraph.
pub fn parse_control(bytes: &[u8]) -> Result<DebInfo, DebError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| DebError::Control("not UTF-8 text".into()))?;
    let mut fields: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            break; // end of the first paragraph
        }
        if line.starts_with([' ', '\t']) || line.starts_with('#') {
            continue; // continuation lines of multi-line fields, comments
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        } else {
            return Err(DebError::Control(format!("line {line:?} has no ':'")));
        }
    }
    let get = |k: &str, name: &str| {
        fields
            .get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| DebError::Control(format!("field {name} is missing")))
    };
    Ok(DebInfo {
        package: get("package", "Package")?,
        version: get("version", "Version")?,
        architecture: get("architecture", "Architecture")?,
    })
}

#[cfg(test)]
mod tests {
    use super::ar::tests::archive;
    use super::*;
    use std::io::Cursor;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, ty, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            // Write the name bytes directly so hostile names ("../x") survive.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn deb(version: &[u8], data: &[u8]) -> Vec<u8> {
        let control = tar_of(&[(
            "./control",
            tar::EntryType::Regular,
            b"Package: drv\nVersion: 1.0-1\nArchitecture: amd64\nDescription: x\n more\n",
            "",
        )]);
        archive(&[
            ("debian-binary", version),
            ("control.tar", &control),
            ("data.tar", data),
        ])
    }

    #[test]
    fn reads_hand_made_deb() {
        let data = tar_of(&[
            ("./", tar::EntryType::Directory, b"", ""),
            ("./lib/a.ko", tar::EntryType::Regular, b"ko!", ""),
            ("./lib/b.ko", tar::EntryType::Link, b"", "./lib/a.ko"),
            ("./lib/c", tar::EntryType::Symlink, b"", "a.ko"),
        ]);
        let bytes = deb(b"2.0\n", &data);
        let mut c = Cursor::new(&bytes);
        let d = open(&mut c, bytes.len() as u64).unwrap();
        let e = d.data_entries(&mut c, 1 << 20).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[2].kind, EntryKind::File(b"ko!".to_vec()));
        assert_eq!(e[3].kind, EntryKind::Symlink("a.ko".into()));
        assert_eq!(
            d.info(&mut c).unwrap(),
            DebInfo {
                package: "drv".into(),
                version: "1.0-1".into(),
                architecture: "amd64".into()
            }
        );
    }

    #[test]
    fn rejects_bad_debs() {
        let data = tar_of(&[("./x", tar::EntryType::Regular, b"x", "")]);
        let bytes = deb(b"3.0\n", &data);
        let err = open(&mut Cursor::new(&bytes), bytes.len() as u64).unwrap_err();
        assert!(err.to_string().contains("3.0"), "{err}");

        let data = tar_of(&[("./b", tar::EntryType::Link, b"", "./nowhere")]);
        let bytes = deb(b"2.0\n", &data);
        let mut c = Cursor::new(&bytes);
        let d = open(&mut c, bytes.len() as u64).unwrap();
        let err = d.data_entries(&mut c, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");

        // Truncated tarball: every cut gives an error or a shorter list, no panic.
        let data = tar_of(&[("./x", tar::EntryType::Regular, &[1u8; 700], "")]);
        for cut in (0..data.len()).step_by(61) {
            let bytes = deb(b"2.0\n", &data[..cut]);
            let mut c = Cursor::new(&bytes);
            let d = open(&mut c, bytes.len() as u64).unwrap();
            let _ = d.data_entries(&mut c, 1 << 20);
        }

        let bytes = archive(&[("control.tar", b"")]);
        assert!(matches!(
            open(&mut Cursor::new(&bytes), bytes.len() as u64),
            Err(DebError::FirstMember(_))
        ));
    }

    #[test]
    fn control_fields() {
        let info =
            parse_control(b"Package: a\nversion:  2\nArchitecture: all\n\nPackage: b\n").unwrap();
        assert_eq!(info.package, "a");
        assert_eq!(info.version, "2");
        assert!(parse_control(b"Package: a\n").is_err());
    }
}

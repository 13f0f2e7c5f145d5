//! `kiln initrd add --package FILE.rpm|FILE.deb`: the payload of a package (a
//! partner's kmod RPM or driver .deb) as `Staged` items, without rpm or dpkg on the
//! host. The kind is detected by magic bytes, not by the file name.
//!
//! Owners: a .deb's tarball carries numeric uid/gid, used as they are. An RPM names
//! owners in its header (FILEUSERNAME/FILEGROUPNAME); "root" is 0, and any other
//! name is also mapped to 0 with a note, since an initramfs has no user database
//! to resolve it against.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use crate::format::deb::{self, DebError};
use crate::format::pkgarchive::{ArchiveEntry, EntryKind, MAX_PAYLOAD_BYTES};
use crate::format::rpm::{self, RpmError};
use crate::initrd::staging::{Content, PathError, Staged, StagedKind, normalize_guest_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    Rpm,
    Deb,
}

impl fmt::Display for PackageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PackageKind::Rpm => "rpm",
            PackageKind::Deb => "deb",
        })
    }
}

/// What a package says about itself, for messages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackageInfo {
    pub name: String,
    /// rpm: "[epoch:]version-release"; deb: the Version field.
    pub version: String,
    pub arch: String,
    pub kind: PackageKind,
}

/// The staged payload of a package, with notes worth showing the user (owner
/// names that were mapped to root, and the like).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagePayload {
    pub items: Vec<Staged>,
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an RPM or .deb package (first bytes {magic:02x?})")]
    UnknownKind { path: PathBuf, magic: Vec<u8> },
    #[error("{path}: {source}")]
    Rpm { path: PathBuf, source: RpmError },
    #[error("{path}: {source}")]
    Deb { path: PathBuf, source: DebError },
    #[error("{path}: payload entry {entry:?}: {source}")]
    BadPath {
        path: PathBuf,
        entry: String,
        source: PathError,
    },
    #[error(
        "{path}: payload entry {entry:?} is a {what}; packages for an initrd may not contain device nodes, fifos or sockets"
    )]
    Special {
        path: PathBuf,
        entry: String,
        what: &'static str,
    },
    #[error("{path}: payload entry {entry:?} names the root directory but is not a directory")]
    RootNotDir { path: PathBuf, entry: String },
}

fn open(path: &Path) -> Result<(BufReader<File>, u64, PackageKind), PackageError> {
    let io = |source| PackageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut r = BufReader::new(file);
    let mut magic = [0u8; 8];
    let n = len.min(8) as usize;
    r.read_exact(&mut magic[..n]).map_err(io)?;
    r.rewind().map_err(io)?;
    let kind = if magic[..n].starts_with(&rpm::LEAD_MAGIC) {
        PackageKind::Rpm
    } else if &magic[..n] == deb::ar::AR_MAGIC {
        PackageKind::Deb
    } else {
        return Err(PackageError::UnknownKind {
            path: path.to_path_buf(),
            magic: magic[..n].to_vec(),
        });
    };
    Ok((r, len, kind))
}

/// Name, version, architecture and kind of a package file.
pub fn package_info(path: &Path) -> Result<PackageInfo, PackageError> {
    let (mut r, len, kind) = open(path)?;
    let rpm_err = |source| PackageError::Rpm {
        path: path.to_path_buf(),
        source,
    };
    let deb_err = |source| PackageError::Deb {
        path: path.to_path_buf(),
        source,
    };
    Ok(match kind {
        PackageKind::Rpm => {
            let i = rpm::read_headers(&mut r, len)
                .and_then(|h| h.info())
                .map_err(rpm_err)?;
            PackageInfo {
                name: i.name,
                version: i.version,
                arch: i.arch,
                kind,
            }
        }
        PackageKind::Deb => {
            let i = deb::open(&mut r, len)
                .and_then(|d| d.info(&mut r))
                .map_err(deb_err)?;
            PackageInfo {
                name: i.package,
                version: i.version,
                arch: i.architecture,
                kind,
            }
        }
    })
}

/// The files, directories and symlinks a package installs, as `Staged` items in
/// archive order.
pub fn package_payload(path: &Path) -> Result<Vec<Staged>, PackageError> {
    Ok(package_contents(path, MAX_PAYLOAD_BYTES)?.items)
}

/// Like `package_payload`, with notes, and with a bound on the decompressed payload.
pub fn package_contents(path: &Path, limit: u64) -> Result<PackagePayload, PackageError> {
    let (mut r, len, kind) = open(path)?;
    let mut notes = Vec::new();
    let (entries, owners) = match kind {
        PackageKind::Rpm => {
            let rpm_err = |source| PackageError::Rpm {
                path: path.to_path_buf(),
                source,
            };
            let h = rpm::read_headers(&mut r, len).map_err(rpm_err)?;
            let owners = h.file_owners().map_err(rpm_err)?;
            (h.payload(&mut r, limit).map_err(rpm_err)?, Some(owners))
        }
        PackageKind::Deb => {
            let deb_err = |source| PackageError::Deb {
                path: path.to_path_buf(),
                source,
            };
            let d = deb::open(&mut r, len).map_err(deb_err)?;
            (d.data_entries(&mut r, limit).map_err(deb_err)?, None)
        }
    };
    let items = stage_entries(path, entries, owners.as_ref(), &mut notes)?;
    Ok(PackagePayload { items, notes })
}

/// Map an owner name from an RPM header to an id for the initrd.
fn owner_id(name: &str, what: &str, entry: &str, notes: &mut Vec<String>) -> u32 {
    if name != "root" {
        notes.push(format!(
            "{entry}: {what} {name:?} is not known in an initramfs; using 0 (root)"
        ));
    }
    0
}

fn stage_entries(
    path: &Path,
    entries: Vec<ArchiveEntry>,
    owners: Option<&HashMap<String, (String, String)>>,
    notes: &mut Vec<String>,
) -> Result<Vec<Staged>, PackageError> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        // Archive names are relative ("./lib/x", "lib/x") or absolute ("/lib/x").
        let guest = match normalize_guest_path(&format!("/{}", e.path)) {
            Ok(p) => p,
            Err(PathError::Root(_)) if e.kind == EntryKind::Dir => continue,
            Err(PathError::Root(_)) => {
                return Err(PackageError::RootNotDir {
                    path: path.to_path_buf(),
                    entry: e.path,
                });
            }
            Err(source) => {
                return Err(PackageError::BadPath {
                    path: path.to_path_buf(),
                    entry: e.path,
                    source,
                });
            }
        };
        let kind = match e.kind {
            EntryKind::File(data) => StagedKind::File(Content::Bytes(data)),
            EntryKind::Dir => StagedKind::Dir,
            EntryKind::Symlink(t) => StagedKind::Symlink(t),
            EntryKind::Special(what) => {
                return Err(PackageError::Special {
                    path: path.to_path_buf(),
                    entry: e.path,
                    what,
                });
            }
        };
        let (uid, gid) = match owners {
            None => (e.uid, e.gid),
            Some(map) => match map.get(&guest) {
                Some((user, group)) => (
                    owner_id(user, "user", &guest, notes),
                    owner_id(group, "group", &guest, notes),
                ),
                // Not described by the header: fall back to the archive's numbers.
                None => (e.uid, e.gid),
            },
        };
        out.push(Staged {
            path: guest,
            kind,
            mode: e.mode,
            uid,
            gid,
        });
    }
    Ok(out)
}

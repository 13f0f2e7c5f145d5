//! Reading the source tree: regular files and directories only, names checked for
//! FAT, siblings sorted by name. Symbolic links are never followed.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::name::check_long_name;
use super::{FatError, MAX_FILE_SIZE};

/// Deepest directory nesting accepted below the source root.
pub const MAX_DEPTH: usize = 128;

pub struct SrcDir {
    pub path: PathBuf,
    /// Sorted by name.
    pub entries: Vec<SrcEntry>,
}

pub struct SrcEntry {
    pub name: String,
    pub path: PathBuf,
    pub kind: SrcKind,
}

pub enum SrcKind {
    File { size: u64 },
    Dir(SrcDir),
}

/// Read the tree under `root` (which may itself be reached through a symlink).
pub fn scan(root: &Path) -> Result<SrcDir, FatError> {
    let meta = fs::metadata(root).map_err(|source| FatError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(FatError::SourceNotDirectory {
            path: root.to_path_buf(),
        });
    }
    scan_dir(root, 0)
}

fn scan_dir(path: &Path, depth: usize) -> Result<SrcDir, FatError> {
    if depth > MAX_DEPTH {
        return Err(FatError::TooDeep {
            path: path.to_path_buf(),
            max: MAX_DEPTH,
        });
    }
    let read_err = |source| FatError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for item in fs::read_dir(path).map_err(read_err)? {
        let item = item.map_err(read_err)?;
        let child = item.path();
        let name = item
            .file_name()
            .into_string()
            .map_err(|_| FatError::NameNotUtf8 {
                path: child.clone(),
            })?;
        check_long_name(&name).map_err(|reason| FatError::BadName {
            path: child.clone(),
            reason,
        })?;
        // symlink_metadata: a link is reported as a link, never followed.
        let meta = fs::symlink_metadata(&child).map_err(|source| FatError::Read {
            path: child.clone(),
            source,
        })?;
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            return Err(FatError::Symlink { path: child });
        } else if ft.is_dir() {
            SrcKind::Dir(scan_dir(&child, depth + 1)?)
        } else if ft.is_file() {
            if meta.len() > MAX_FILE_SIZE {
                return Err(FatError::FileTooLarge {
                    path: child,
                    size: meta.len(),
                });
            }
            SrcKind::File { size: meta.len() }
        } else {
            let kind = if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else if ft.is_fifo() {
                "named pipe"
            } else if ft.is_socket() {
                "socket"
            } else {
                "special file"
            };
            return Err(FatError::SpecialFile { path: child, kind });
        };
        entries.push(SrcEntry {
            name,
            path: child,
            kind,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    check_case_collisions(&entries)?;
    Ok(SrcDir {
        path: path.to_path_buf(),
        entries,
    })
}

/// FAT looks names up case-insensitively, so siblings must differ in more than case.
fn check_case_collisions(entries: &[SrcEntry]) -> Result<(), FatError> {
    let mut seen: HashMap<String, &str> = HashMap::with_capacity(entries.len());
    for e in entries {
        if let Some(other) = seen.insert(e.name.to_uppercase(), &e.name) {
            return Err(FatError::CaseCollision {
                path: e.path.clone(),
                other: other.to_string(),
            });
        }
    }
    Ok(())
}

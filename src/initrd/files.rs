//! `kiln initrd add --file HOST:GUEST`: a host file, or a directory copied
//! recursively, placed at GUEST. Modes and owners are kept; symlinks inside a
//! copied directory stay symlinks (their targets are not followed). A symlink
//! named directly as HOST is followed, like `cp -r` does with its argument.
//!
//! The spec is split at its first ':' (HOST may not contain one; GUEST may).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::hostpath::file_item;
use super::staging::{PathError, Staged, StagedKind, normalize_guest_path};

/// Deepest directory nesting copied (a guard against pathological trees).
const MAX_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("--file {spec:?}: expected HOST:GUEST")]
    Spec { spec: String },
    #[error("--file {spec:?}: {source}")]
    Guest {
        spec: String,
        #[source]
        source: PathError,
    },
    #[error("--file {spec:?}: {path}: {source}")]
    Io {
        spec: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--file {spec:?}: {path}: {what} cannot be put in an initrd by --file")]
    Special {
        spec: String,
        path: PathBuf,
        what: &'static str,
    },
    #[error("--file {spec:?}: {path}: name is not UTF-8")]
    NotUtf8 { spec: String, path: PathBuf },
    #[error("--file {spec:?}: {path}: directories nest deeper than {MAX_DEPTH}")]
    TooDeep { spec: String, path: PathBuf },
}

/// Parse `HOST:GUEST` and list what it puts in the initrd, parents first.
pub fn host_file(spec: &str) -> Result<Vec<Staged>, FileError> {
    let (host, guest) = spec
        .split_once(':')
        .filter(|(h, g)| !h.is_empty() && !g.is_empty())
        .ok_or_else(|| FileError::Spec {
            spec: spec.to_string(),
        })?;
    let guest = normalize_guest_path(guest).map_err(|source| FileError::Guest {
        spec: spec.to_string(),
        source,
    })?;
    let host = Path::new(host);
    let meta = fs::metadata(host).map_err(|source| FileError::Io {
        spec: spec.to_string(),
        path: host.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    add(spec, host, &meta, guest, 0, &mut out)?;
    Ok(out)
}

fn add(
    spec: &str,
    host: &Path,
    meta: &fs::Metadata,
    guest: String,
    depth: usize,
    out: &mut Vec<Staged>,
) -> Result<(), FileError> {
    let io_err = |source| FileError::Io {
        spec: spec.to_string(),
        path: host.to_path_buf(),
        source,
    };
    let ft = meta.file_type();
    if ft.is_file() {
        out.push(file_item(guest, host, meta));
    } else if ft.is_symlink() {
        let target = fs::read_link(host).map_err(io_err)?;
        let target = target
            .into_os_string()
            .into_string()
            .map_err(|_| FileError::NotUtf8 {
                spec: spec.to_string(),
                path: host.to_path_buf(),
            })?;
        out.push(Staged {
            path: guest,
            kind: StagedKind::Symlink(target),
            mode: 0o777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
    } else if ft.is_dir() {
        if depth > MAX_DEPTH {
            return Err(FileError::TooDeep {
                spec: spec.to_string(),
                path: host.to_path_buf(),
            });
        }
        out.push(Staged {
            path: guest.clone(),
            kind: StagedKind::Dir,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
        let mut entries: Vec<(String, PathBuf)> = Vec::new();
        for e in fs::read_dir(host).map_err(io_err)? {
            let e = e.map_err(io_err)?;
            let name = e
                .file_name()
                .into_string()
                .map_err(|_| FileError::NotUtf8 {
                    spec: spec.to_string(),
                    path: e.path(),
                })?;
            entries.push((name, e.path()));
        }
        // Sorted, so the same tree gives the same list (reproducible archives).
        entries.sort();
        for (name, path) in entries {
            let m = fs::symlink_metadata(&path).map_err(|source| FileError::Io {
                spec: spec.to_string(),
                path: path.clone(),
                source,
            })?;
            add(spec, &path, &m, format!("{guest}/{name}"), depth + 1, out)?;
        }
    } else {
        let what = if ft.is_block_device() {
            "a block device"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_fifo() {
            "a FIFO"
        } else {
            "a socket"
        };
        return Err(FileError::Special {
            spec: spec.to_string(),
            path: host.to_path_buf(),
            what,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_errors_name_the_spec() {
        for bad in ["", "nocolon", ":/x", "/etc/hostname:", "/etc/hostname:rel"] {
            let e = host_file(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        let e = host_file("/nonexistent/x:/x").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x"), "{e}");
        assert!(matches!(
            host_file("/dev/null:/x"),
            Err(FileError::Special { .. })
        ));
    }
}

//! The file operations: write, append-line, upload, copy-in, copy, move,
//! delete, mkdir, touch, link, chmod, chown, truncate, truncate-recursive,
//! scrub and edit. All guest paths go through `GuestRoot`.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::customize::CustomizeError;
use crate::customize::edit::Substitution;
use crate::customize::guest::{GuestRoot, Kind, walk_files_for_writing};

fn local_err(path: &Path, source: std::io::Error) -> CustomizeError {
    CustomizeError::Local {
        path: path.to_path_buf(),
        source,
    }
}

pub fn write(root: &GuestRoot, file: &str, content: &str) -> Result<(), CustomizeError> {
    Ok(root.write(file, content.as_bytes(), 0o644)?)
}

/// Append `line`, after a line break if the file does not end in one; the
/// break is the file's own (CRLF if its first line ends so).
pub fn append_line(root: &GuestRoot, file: &str, line: &str) -> Result<(), CustomizeError> {
    let existing = root.read_opt(file)?.unwrap_or_default();
    let crlf = existing
        .iter()
        .position(|&b| b == b'\n')
        .is_some_and(|i| i > 0 && existing[i - 1] == b'\r');
    let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut add = Vec::new();
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        add.extend_from_slice(eol);
    }
    add.extend_from_slice(line.as_bytes());
    add.extend_from_slice(eol);
    let mut f = root.open_write(file, 0o644, true)?;
    f.write_all(&add).map_err(|source| {
        CustomizeError::Guest(crate::customize::guest::GuestError::Io {
            what: "appending to",
            path: file.to_string(),
            source,
        })
    })
}

/// Copy a local file to `dest` (a file name, or a directory to put it in),
/// with the local file's mode.
pub fn upload(root: &GuestRoot, local: &Path, dest: &str) -> Result<(), CustomizeError> {
    let bytes = std::fs::read(local).map_err(|e| local_err(local, e))?;
    let mode = std::fs::metadata(local)
        .map_err(|e| local_err(local, e))?
        .permissions()
        .mode()
        & 0o7777;
    let target = if root.kind_followed(dest)? == Some(Kind::Dir) {
        let name = local
            .file_name()
            .ok_or_else(|| local_err(local, std::io::Error::other("no file name")))?;
        format!("{}/{}", dest.trim_end_matches('/'), name.to_string_lossy())
    } else {
        dest.to_string()
    };
    root.write(&target, &bytes, mode)?;
    root.chmod(&target, mode)?;
    Ok(())
}

/// `--copy-in LOCAL:REMOTEDIR`: copy a local file or tree into an existing
/// guest directory, keeping modes and symlinks.
pub fn copy_in(root: &GuestRoot, local: &Path, remote_dir: &str) -> Result<(), CustomizeError> {
    if root.kind_followed(remote_dir)? != Some(Kind::Dir) {
        return Err(CustomizeError::NotADirectory(remote_dir.to_string()));
    }
    let name = local
        .file_name()
        .ok_or_else(|| local_err(local, std::io::Error::other("no file name")))?;
    let dest = format!(
        "{}/{}",
        remote_dir.trim_end_matches('/'),
        name.to_string_lossy()
    );
    copy_local_tree(root, local, &dest)
}

fn copy_local_tree(root: &GuestRoot, local: &Path, dest: &str) -> Result<(), CustomizeError> {
    let meta = std::fs::symlink_metadata(local).map_err(|e| local_err(local, e))?;
    let mode = meta.mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(local).map_err(|e| local_err(local, e))?;
        root.symlink(&target.to_string_lossy(), dest)?;
    } else if ft.is_dir() {
        root.mkdir(dest, mode)?;
        let mut entries: Vec<_> = std::fs::read_dir(local)
            .map_err(|e| local_err(local, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| local_err(local, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child = format!("{dest}/{}", entry.file_name().to_string_lossy());
            copy_local_tree(root, &entry.path(), &child)?;
        }
        root.chmod(dest, mode)?;
    } else if ft.is_file() {
        let bytes = std::fs::read(local).map_err(|e| local_err(local, e))?;
        root.write(dest, &bytes, mode)?;
        root.chmod(dest, mode)?;
    }
    Ok(())
}

/// `--copy SOURCE:DEST` inside the guest (files and trees; symlinks copied as links).
pub fn copy(root: &GuestRoot, source: &str, dest: &str) -> Result<(), CustomizeError> {
    let dest = if root.kind_followed(dest)? == Some(Kind::Dir) {
        let name = source
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(source);
        format!("{}/{}", dest.trim_end_matches('/'), name)
    } else {
        dest.to_string()
    };
    copy_guest_tree(root, source, &dest)
}

fn copy_guest_tree(root: &GuestRoot, source: &str, dest: &str) -> Result<(), CustomizeError> {
    match root.kind(source)? {
        None => Err(CustomizeError::Missing(source.to_string())),
        Some(Kind::Symlink) => {
            root.symlink(&root.read_link(source)?, dest)?;
            Ok(())
        }
        Some(Kind::Dir) => {
            let mode = root.stat(source)?.st_mode & 0o7777;
            root.mkdir(dest, mode)?;
            for name in root.list_dir(source)? {
                copy_guest_tree(root, &format!("{source}/{name}"), &format!("{dest}/{name}"))?;
            }
            Ok(())
        }
        Some(Kind::File) => {
            let st = root.stat(source)?;
            let bytes = root.read(source)?;
            root.write(dest, &bytes, st.st_mode & 0o7777)?;
            root.chmod(dest, st.st_mode & 0o7777)?;
            root.chown(dest, st.st_uid, st.st_gid)?;
            Ok(())
        }
        Some(Kind::Other) => Err(CustomizeError::Unsupported {
            path: source.to_string(),
            what: "copying device nodes, fifos or sockets",
        }),
    }
}

/// `--touch`: create when missing, else set the times to now.
pub fn touch(root: &GuestRoot, path: &str) -> Result<(), CustomizeError> {
    let f = root.open_write(path, 0o644, true)?;
    let now = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    };
    rustix::fs::futimens(&f, &now).map_err(|e| {
        CustomizeError::Guest(crate::customize::guest::GuestError::Io {
            what: "touching",
            path: path.to_string(),
            source: e.into(),
        })
    })
}

pub fn truncate(root: &GuestRoot, path: &str) -> Result<(), CustomizeError> {
    if root.kind_followed(path)?.is_none() {
        return Err(CustomizeError::Missing(path.to_string()));
    }
    root.open_write(path, 0o644, false)?;
    Ok(())
}

pub fn truncate_recursive(root: &GuestRoot, path: &str) -> Result<(), CustomizeError> {
    walk_files_for_writing(root, path, &mut |shown, file| {
        file.set_len(0)
            .map_err(|source| crate::customize::guest::GuestError::Io {
                what: "truncating",
                path: shown.to_string(),
                source,
            })
    })?;
    Ok(())
}

/// `--scrub`: overwrite the file's bytes with zeros, sync, then remove it.
pub fn scrub(root: &GuestRoot, path: &str) -> Result<(), CustomizeError> {
    if root.kind(path)? != Some(Kind::File) {
        // A link is only removed: its target may be another file entirely.
        return Ok(root.remove_all(path)?);
    }
    let len = root.stat(path)?.st_size as u64;
    let mut f = root.open_write_in_place(path)?;
    let io_err = |source| crate::customize::guest::GuestError::Io {
        what: "scrubbing",
        path: path.to_string(),
        source,
    };
    f.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(io_err)?;
        left -= n as u64;
    }
    f.sync_all().map_err(io_err)?;
    root.remove_all(path)?;
    Ok(())
}

pub fn edit(root: &GuestRoot, file: &str, expr: &str) -> Result<(), CustomizeError> {
    let sub = Substitution::parse(expr).map_err(|reason| CustomizeError::Edit {
        file: file.to_string(),
        reason,
    })?;
    let bytes = root.read(file)?;
    let text = String::from_utf8(bytes).map_err(|_| CustomizeError::Edit {
        file: file.to_string(),
        reason: "the file is not UTF-8 text".into(),
    })?;
    let changed = sub.apply(&text);
    if changed != text {
        root.write(file, changed.as_bytes(), 0o644)?;
    }
    Ok(())
}

pub fn link(root: &GuestRoot, target: &str, links: &[String]) -> Result<(), CustomizeError> {
    for l in links {
        root.symlink(target, l)?;
    }
    Ok(())
}

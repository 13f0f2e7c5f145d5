//! What `kiln initrd add` puts into an initramfs. The sources (host files, ELF
//! programs with their libraries, kernel modules with their dependencies, firmware,
//! package payloads) each produce a list of `Staged` items; the archive is then
//! rewritten once with all of them.

use std::path::PathBuf;

/// One thing to place in the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// Absolute path inside the initrd, normalized: starts with '/', no '.', '..'
    /// or empty components, no trailing '/'.
    pub path: String,
    pub kind: StagedKind,
    /// Permission bits (the low 12 bits of st_mode); the file type comes from `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagedKind {
    /// A regular file and where its bytes come from.
    File(Content),
    Dir,
    /// A symbolic link and its target, stored as given.
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Read from this host file when the archive is written.
    Host(PathBuf),
    /// Bytes produced in memory (a generated modules.dep, a file from a package).
    Bytes(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("guest path {0:?} must be absolute")]
    NotAbsolute(String),
    #[error("guest path {0:?} must not contain '..'")]
    Parent(String),
    #[error("guest path {0:?} is the root or empty")]
    Root(String),
}

/// Normalize a guest path: collapse '//' and '.', refuse '..' and relative paths.
pub fn normalize_guest_path(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute(path.to_string()));
    }
    let mut out = String::with_capacity(path.len());
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::Parent(path.to_string())),
            p => {
                out.push('/');
                out.push_str(p);
            }
        }
    }
    if out.is_empty() {
        return Err(PathError::Root(path.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_normalized_and_confined() {
        assert_eq!(
            normalize_guest_path("/usr//lib/./x.so").unwrap(),
            "/usr/lib/x.so"
        );
        assert_eq!(normalize_guest_path("/etc/").unwrap(), "/etc");
        assert!(normalize_guest_path("usr/lib").is_err());
        assert!(normalize_guest_path("/usr/../etc").is_err());
        assert!(normalize_guest_path("/").is_err());
    }
}

//! File access inside the image tree, confined to it: a symbolic link in the tree
//! (`/boot -> /mnt/x`, `vmlinuz -> /boot/vmlinuz-6.1`) is resolved as the guest
//! would resolve it, never towards a host file.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::BootError;
use crate::initrd::hostpath::{WalkError, abs_in_root, walk};

/// Host path of the existing object `inner` (a path inside `tree`), links resolved
/// inside the tree. `Ok(None)` when it does not exist.
pub fn resolve(tree: &Path, inner: &str) -> Result<Option<PathBuf>, BootError> {
    match walk(tree, inner, &abs_in_root) {
        Ok(w) => Ok(Some(w.host)),
        Err(WalkError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BootError::TreePath {
            path: inner.to_string(),
            source,
        }),
    }
}

/// Host path of the directory `inner`, created (mode 0755) where missing.
pub fn ensure_dir(tree: &Path, inner: &str) -> Result<PathBuf, BootError> {
    let mut host = tree.to_path_buf();
    let mut prefix = String::new();
    for part in inner.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(BootError::BadSpec {
                key: "path",
                problem: format!("{inner:?} contains '..'"),
            });
        }
        prefix.push('/');
        prefix.push_str(part);
        host = match resolve(tree, &prefix)? {
            Some(existing) => existing,
            None => {
                let dir = host.join(part);
                DirBuilder::new()
                    .mode(0o755)
                    .create(&dir)
                    .map_err(io_err(&dir))?;
                dir
            }
        };
        if !fs::metadata(&host).map_err(io_err(&host))?.is_dir() {
            return Err(BootError::TreePath {
                path: prefix,
                source: WalkError::NotDir(host),
            });
        }
    }
    Ok(host)
}

/// Write `bytes` as `dir/name` (mode 0644), replacing a regular file but refusing to
/// write through a symbolic link.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, BootError> {
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all(bytes).map_err(io_err(&path))?;
    Ok(path)
}

/// Copy the host file `src` to `dir/name`.
pub fn copy_file(src: &Path, dir: &Path, name: &str) -> Result<PathBuf, BootError> {
    let bytes = fs::read(src).map_err(io_err(src))?;
    write_file(dir, name, &bytes)
}

pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BootError + '_ {
    move |source| BootError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_links_stay_inside_the_tree() {
        let tree = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(tree.path().join("real")).unwrap();
        // "/boot" points at an absolute path that also exists on the host.
        symlink(outside.path(), tree.path().join("boot")).unwrap();
        // Inside the tree the link dangles: an error, and the host folder is untouched.
        assert!(ensure_dir(tree.path(), "/boot/grub").is_err());
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());

        symlink("/real", tree.path().join("efi")).unwrap();
        let dir = ensure_dir(tree.path(), "efi/EFI/BOOT").unwrap();
        assert_eq!(dir, tree.path().join("real/EFI/BOOT"));
    }

    #[test]
    fn files_are_not_written_through_links() {
        let tree = tempfile::tempdir().unwrap();
        let victim = tree.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        symlink(&victim, tree.path().join("grub.cfg")).unwrap();
        assert!(write_file(tree.path(), "grub.cfg", b"new").is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }
}

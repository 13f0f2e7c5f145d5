//! Directories inside a target tree, reached one component at a time with
//! openat2(RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH). A tree that plants a symlink
//! (`/proc -> /etc`, `/tmp -> /`) is refused, so nothing kiln mounts or
//! creates there can land on a host path.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::SandboxError;
use super::sys;

const RESOLVE_CONFINED: u64 = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH;

/// The root directory of a target tree, held open.
pub struct TreeRoot {
    path: PathBuf,
    fd: OwnedFd,
}

/// A directory found (or made) below a `TreeRoot`.
pub struct TreeDir {
    /// Path relative to the tree root, for messages.
    pub rel: PathBuf,
    pub fd: OwnedFd,
    /// The directory holding it and its name there; None for the root itself.
    pub parent: Option<(OwnedFd, Vec<u8>)>,
}

/// A directory the walk had to create, so that it can be removed again.
pub struct CreatedDir {
    pub rel: PathBuf,
    pub parent: OwnedFd,
    pub name: Vec<u8>,
}

impl TreeRoot {
    /// Open `path`, the tree's root as the host sees it.
    pub fn open(path: &Path) -> Result<Self, SandboxError> {
        let path = std::fs::canonicalize(path).map_err(|source| SandboxError::Io {
            what: "opening the target tree",
            path: path.to_path_buf(),
            source,
        })?;
        let fd = std::fs::File::open(&path)
            .map_err(|source| SandboxError::Io {
                what: "opening the target tree",
                path: path.clone(),
                source,
            })?
            .into();
        Ok(TreeRoot { path, fd })
    }

    /// The canonical host path of the tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Host path of `rel` inside the tree, for messages.
    pub fn host_path(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Walk `rel` (relative, `/`-separated, no `..`) below the root. Missing
    /// directories are created with `mode` when `create` is given, and
    /// recorded there; otherwise a missing one is an error.
    pub fn dir(
        &self,
        rel: &str,
        mode: libc::mode_t,
        mut create: Option<&mut Vec<CreatedDir>>,
    ) -> Result<TreeDir, SandboxError> {
        let mut current = TreeDir {
            rel: PathBuf::new(),
            fd: self
                .fd
                .try_clone()
                .map_err(|source| self.io_err("", source))?,
            parent: None,
        };
        for name in rel.split('/').filter(|c| !c.is_empty()) {
            if name == "." || name == ".." {
                return Err(self.io_err(
                    rel,
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "`.` or `..` in path"),
                ));
            }
            let child_rel = current.rel.join(name);
            let fd = match self.open_child(&current.fd, name, &child_rel) {
                Ok(fd) => fd,
                Err(OpenChild::Missing) => {
                    let Some(created) = create.as_deref_mut() else {
                        return Err(SandboxError::Missing {
                            path: self.host_path(&child_rel),
                        });
                    };
                    let made = match sys::mkdirat(current.fd.as_fd(), name.as_bytes(), mode) {
                        Ok(()) => true,
                        // Someone else made it meanwhile: use theirs, after the same checks.
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
                        Err(source) => return Err(self.io_err(&child_rel, source)),
                    };
                    let fd = self
                        .open_child(&current.fd, name, &child_rel)
                        .map_err(|e| e.into_error(self, &child_rel))?;
                    if made {
                        created.push(CreatedDir {
                            rel: child_rel.clone(),
                            parent: current
                                .fd
                                .try_clone()
                                .map_err(|source| self.io_err(&child_rel, source))?,
                            name: name.as_bytes().to_vec(),
                        });
                        // mkdirat applied the umask; /tmp needs its sticky 1777.
                        sys::chmod_fd(fd.as_fd(), mode)
                            .map_err(|source| self.io_err(&child_rel, source))?;
                    }
                    fd
                }
                Err(e) => return Err(e.into_error(self, &child_rel)),
            };
            current = TreeDir {
                rel: child_rel,
                fd,
                parent: Some((current.fd, name.as_bytes().to_vec())),
            };
        }
        Ok(current)
    }

    /// Open `name` in `dir` as a directory, refusing symlinks.
    fn open_child(&self, dir: &OwnedFd, name: &str, rel: &Path) -> Result<OwnedFd, OpenChild> {
        match sys::openat2(
            dir.as_fd(),
            name.as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY,
            RESOLVE_CONFINED,
        ) {
            Ok(fd) => Ok(fd),
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOENT) => Err(OpenChild::Missing),
                Some(libc::ELOOP) => Err(OpenChild::Symlink),
                Some(libc::ENOTDIR) => {
                    // O_DIRECTORY also fails on a symlink; name the real cause.
                    match sys::entry_kind(dir.as_fd(), name.as_bytes()) {
                        Ok(Some(libc::S_IFLNK)) => Err(OpenChild::Symlink),
                        _ => Err(OpenChild::NotDir),
                    }
                }
                _ => Err(OpenChild::Other(self.io_err(rel, e))),
            },
        }
    }

    fn io_err(&self, rel: impl AsRef<Path>, source: std::io::Error) -> SandboxError {
        SandboxError::Io {
            what: "walking the target tree",
            path: self.host_path(rel.as_ref()),
            source,
        }
    }
}

enum OpenChild {
    Missing,
    Symlink,
    NotDir,
    Other(SandboxError),
}

impl OpenChild {
    fn into_error(self, root: &TreeRoot, rel: &Path) -> SandboxError {
        let path = root.host_path(rel);
        match self {
            OpenChild::Missing => SandboxError::Missing { path },
            OpenChild::Symlink => SandboxError::SymlinkInTree { path },
            OpenChild::NotDir => SandboxError::NotADirectory { path },
            OpenChild::Other(e) => e,
        }
    }
}

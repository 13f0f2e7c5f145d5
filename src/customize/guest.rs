//! Confined access to a guest root directory. Every guest path is resolved by
//! the kernel with openat2(RESOLVE_IN_ROOT) against an fd of the root: `..`
//! and absolute symlinks (`/etc -> /../../..`, `x -> /etc/shadow`) are
//! clamped to the guest root, so no operation reaches a host file. Entries
//! that are changed (unlink, rename, symlink, mkdir) are named by their
//! confined parent directory fd plus a final component, and the final
//! component is never followed where following would leave the parent.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("opening the guest root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} in the guest: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a usable guest path ({reason})")]
    BadPath { path: String, reason: &'static str },
}

/// What a guest entry is, without following a final symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// An opened guest root.
pub struct GuestRoot {
    path: PathBuf,
    fd: OwnedFd,
}

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// `/a/b/` -> `a/b`; the root itself -> `.`.
fn relative(path: &str) -> &str {
    let rel = path.trim_matches('/');
    if rel.is_empty() { "." } else { rel }
}

fn io<'a>(what: &'static str, path: &'a str) -> impl FnOnce(rustix::io::Errno) -> GuestError + 'a {
    move |e| GuestError::Io {
        what,
        path: path.to_string(),
        source: e.into(),
    }
}

fn io_std<'a>(what: &'static str, path: &'a str) -> impl FnOnce(std::io::Error) -> GuestError + 'a {
    move |source| GuestError::Io {
        what,
        path: path.to_string(),
        source,
    }
}

impl GuestRoot {
    pub fn open(path: &Path) -> Result<Self, GuestError> {
        let err = |source| GuestError::Root {
            path: path.to_path_buf(),
            source,
        };
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(e.into()))?;
        Ok(GuestRoot {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// The root as the host sees it (for chroot and messages).
    pub fn host_path(&self) -> &Path {
        &self.path
    }

    fn open_raw(&self, path: &str, flags: OFlags, mode: u32) -> Result<OwnedFd, rustix::io::Errno> {
        rustix::fs::openat2(
            &self.fd,
            relative(path),
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            IN_ROOT,
        )
    }

    /// The parent directory of `path` (resolved in the root) and the final name.
    pub fn parent(&self, path: &str) -> Result<(OwnedFd, String), GuestError> {
        let rel = path.trim_matches('/');
        let (dir, name) = match rel.rsplit_once('/') {
            Some((dir, name)) => (dir, name),
            None => ("", rel),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(GuestError::BadPath {
                path: path.to_string(),
                reason: "it names the root or ends in `.`/`..`",
            });
        }
        let fd = self
            .open_raw(dir, OFlags::PATH | OFlags::DIRECTORY, 0)
            .map_err(io("opening the directory of", path))?;
        Ok((fd, name.to_string()))
    }

    /// The target of the symlink `path` (the link itself is not followed).
    pub fn read_link(&self, path: &str) -> Result<String, GuestError> {
        let (dir, name) = self.parent(path)?;
        let target = rustix::fs::readlinkat(&dir, name.as_str(), Vec::new()).map_err(|e| {
            GuestError::Io {
                what: "reading the link",
                path: path.to_string(),
                source: e.into(),
            }
        })?;
        Ok(target.to_string_lossy().into_owned())
    }

    /// Open a file for reading (symlinks followed, inside the root).
    pub fn open_read(&self, path: &str) -> Result<File, GuestError> {
        let fd = self
            .open_raw(path, OFlags::RDONLY, 0)
            .map_err(io("opening", path))?;
        Ok(File::from(fd))
    }

    pub fn read(&self, path: &str) -> Result<Vec<u8>, GuestError> {
        let mut bytes = Vec::new();
        self.open_read(path)?
            .read_to_end(&mut bytes)
            .map_err(io_std("reading", path))?;
        Ok(bytes)
    }

    /// Read a file, or None when it does not exist.
    pub fn read_opt(&self, path: &str) -> Result<Option<Vec<u8>>, GuestError> {
        match self.read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(GuestError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn read_string_opt(&self, path: &str) -> Result<Option<String>, GuestError> {
        Ok(self
            .read_opt(path)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Open for writing: created with `mode` when missing, truncated unless `append`.
    pub fn open_write(&self, path: &str, mode: u32, append: bool) -> Result<File, GuestError> {
        let mut flags = OFlags::WRONLY | OFlags::CREATE;
        flags |= if append {
            OFlags::APPEND
        } else {
            OFlags::TRUNC
        };
        let fd = self
            .open_raw(path, flags, mode)
            .map_err(io("opening for writing", path))?;
        Ok(File::from(fd))
    }

    /// Open an existing file for writing without truncating it.
    pub fn open_write_in_place(&self, path: &str) -> Result<File, GuestError> {
        let fd = self
            .open_raw(path, OFlags::WRONLY, 0)
            .map_err(io("opening for writing", path))?;
        Ok(File::from(fd))
    }

    /// Replace the content of `path` (kept mode and owner when it exists).
    pub fn write(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), GuestError> {
        self.open_write(path, mode, false)?
            .write_all(bytes)
            .map_err(io_std("writing", path))
    }

    /// Kind of the entry, not following a final symlink; None when missing.
    pub fn kind(&self, path: &str) -> Result<Option<Kind>, GuestError> {
        if relative(path) == "." {
            return Ok(Some(Kind::Dir));
        }
        let (dir, name) = match self.parent(path) {
            Ok(p) => p,
            Err(GuestError::Io { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ENOTDIR)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(kind_of(st.st_mode))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(io("inspecting", path)(e)),
        }
    }

    /// Kind after following symlinks (inside the root); None when missing.
    pub fn kind_followed(&self, path: &str) -> Result<Option<Kind>, GuestError> {
        match self.open_raw(path, OFlags::PATH, 0) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).map_err(io("inspecting", path))?;
                Ok(Some(kind_of(st.st_mode)))
            }
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => Ok(None),
            Err(e) => Err(io("inspecting", path)(e)),
        }
    }

    pub fn exists(&self, path: &str) -> Result<bool, GuestError> {
        Ok(self.kind(path)?.is_some())
    }

    /// stat after following symlinks inside the root.
    pub fn stat(&self, path: &str) -> Result<rustix::fs::Stat, GuestError> {
        let fd = self
            .open_raw(path, OFlags::PATH, 0)
            .map_err(io("inspecting", path))?;
        rustix::fs::fstat(&fd).map_err(io("inspecting", path))
    }

    /// `mkdir -p`: every missing directory is created with `mode`.
    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<(), GuestError> {
        let mut done = String::new();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            done.push('/');
            done.push_str(part);
            if part == ".." {
                continue;
            }
            match self.kind_followed(&done)? {
                Some(Kind::Dir) => continue,
                Some(_) => {
                    return Err(GuestError::Io {
                        what: "creating the directory",
                        path: done,
                        source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
                    });
                }
                None => self.mkdir(&done, mode)?,
            }
        }
        Ok(())
    }

    /// Create one directory (the parent must exist).
    pub fn mkdir(&self, path: &str, mode: u32) -> Result<(), GuestError> {
        let (dir, name) = self.parent(path)?;
        match rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(mode)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => return Ok(()),
            Err(e) => return Err(io("creating the directory", path)(e)),
        }
        // mkdirat applied the umask.
        let fd = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io("opening the new directory", path))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io("setting the mode of", path))
    }

    /// `rm -rf`: a missing path is fine; a symlink is removed, not followed.
    pub fn remove_all(&self, path: &str) -> Result<(), GuestError> {
        let (dir, name) = match self.parent(path) {
            Ok(p) => p,
            Err(GuestError::Io { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ENOTDIR)
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        remove_entry(dir.as_fd(), &name, path)
    }

    /// Names in a directory (sorted, without `.` and `..`); empty when missing.
    pub fn list_dir(&self, path: &str) -> Result<Vec<String>, GuestError> {
        let fd = match self.open_raw(path, OFlags::RDONLY | OFlags::DIRECTORY, 0) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(io("listing", path)(e)),
        };
        list_fd(fd.as_fd(), path)
    }

    pub fn symlink(&self, target: &str, link: &str) -> Result<(), GuestError> {
        let (dir, name) = self.parent(link)?;
        match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io("replacing", link)(e)),
        }
        rustix::fs::symlinkat(target, &dir, name.as_str()).map_err(io("creating the symlink", link))
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<(), GuestError> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, mut to_name) = self.parent(to)?;
        let mut to_dir = to_dir;
        // `mv a /dir` puts a into dir, as mv does.
        if self.kind_followed(to)? == Some(Kind::Dir) {
            to_dir = self
                .open_raw(to, OFlags::PATH | OFlags::DIRECTORY, 0)
                .map_err(io("opening", to))?;
            to_name = from_name.clone();
        }
        rustix::fs::renameat(&from_dir, from_name.as_str(), &to_dir, to_name.as_str())
            .map_err(io("moving", from))
    }

    /// chmod (following symlinks inside the root).
    pub fn chmod(&self, path: &str, mode: u32) -> Result<(), GuestError> {
        let fd = self
            .open_raw(path, OFlags::PATH, 0)
            .map_err(io("opening", path))?;
        // fchmod does not take O_PATH fds; chmod through the fd's own name does.
        rustix::fs::chmodat(
            rustix::fs::CWD,
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )
        .map_err(io("changing the mode of", path))
    }

    /// chown (following symlinks inside the root).
    pub fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<(), GuestError> {
        let fd = self
            .open_raw(path, OFlags::PATH, 0)
            .map_err(io("opening", path))?;
        rustix::fs::chownat(
            &fd,
            "",
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::EMPTY_PATH,
        )
        .map_err(io("changing the owner of", path))
    }

    /// Open a directory for reading (for walks with `walk_files`).
    pub fn open_dir(&self, path: &str) -> Result<OwnedFd, GuestError> {
        self.open_raw(path, OFlags::RDONLY | OFlags::DIRECTORY, 0)
            .map_err(io("opening the directory", path))
    }
}

fn kind_of(mode: u32) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

fn list_fd(fd: BorrowedFd<'_>, path: &str) -> Result<Vec<String>, GuestError> {
    let dir = rustix::fs::Dir::read_from(fd).map_err(io("listing", path))?;
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.map_err(io("listing", path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Remove `name` in `dir`, recursing into directories by fd (never following links).
fn remove_entry(dir: BorrowedFd<'_>, name: &str, shown: &str) -> Result<(), GuestError> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io("inspecting", shown)(e)),
    };
    if kind_of(st.st_mode) == Kind::Dir {
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io("opening", shown))?;
        for child in list_fd(sub.as_fd(), shown)? {
            remove_entry(sub.as_fd(), &child, &format!("{shown}/{child}"))?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(io("removing", shown))
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(io("removing", shown))
    }
}

/// Call `f(guest_path, file)` for every regular file below the directory
/// `path`, each opened for writing (sorted, depth first; symlinks are not
/// followed).
pub fn walk_files_for_writing(
    root: &GuestRoot,
    path: &str,
    f: &mut dyn FnMut(&str, &File) -> Result<(), GuestError>,
) -> Result<(), GuestError> {
    let fd = root.open_dir(path)?;
    walk_fd(fd.as_fd(), path.trim_end_matches('/'), f)
}

fn walk_fd(
    dir: BorrowedFd<'_>,
    shown: &str,
    f: &mut dyn FnMut(&str, &File) -> Result<(), GuestError>,
) -> Result<(), GuestError> {
    for name in list_fd(dir, shown)? {
        let child = format!("{shown}/{name}");
        let st = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io("inspecting", &child))?;
        match kind_of(st.st_mode) {
            Kind::Dir => {
                let sub = rustix::fs::openat(
                    dir,
                    name.as_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io("opening", &child))?;
                walk_fd(sub.as_fd(), &child, f)?;
            }
            Kind::File => {
                let fd = rustix::fs::openat(
                    dir,
                    name.as_str(),
                    OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io("opening", &child))?;
                f(&child, &File::from(fd))?;
            }
            _ => {}
        }
    }
    Ok(())
}

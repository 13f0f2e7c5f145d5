//! `kiln initrd extract`: unpack an initramfs into a directory, confined to it.
//!
//! Every entry is created relative to a directory descriptor reached by an
//! `openat` walk from the destination with `O_NOFOLLOW | O_DIRECTORY` at each step,
//! so no symlink (whether the archive made it or it was there before) is followed:
//! an entry whose parent is a symlink is refused, as are names with `..`; absolute
//! names are taken relative to the destination. Files are created with `O_EXCL |
//! O_NOFOLLOW` after removing what was at their name. Owners are kept when running
//! as root (and device nodes created); modes, setuid bits and mtimes always.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::pack::make_dev;
use super::repack::merged_tree;
use super::tree::{Node, PathKey};
use super::{InitrdError, io_err};
use crate::format::cpio::FileType;
use crate::format::initrd::Initrd;
use crate::util::interrupt;

/// What `extract` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExtractReport {
    /// Entries created (the root directory's metadata counts as one).
    pub entries: usize,
    /// Device nodes not created because kiln is not running as root.
    pub skipped_devices: Vec<String>,
}

/// A refusal (unsafe entry) or a real I/O failure.
enum Fail {
    Refuse(String),
    Io(io::Error),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name holds a NUL"))
}

fn openat(
    dir: &OwnedFd,
    name: &CString,
    flags: libc::c_int,
    mode: libc::c_uint,
) -> io::Result<OwnedFd> {
    // SAFETY: valid descriptor and NUL-terminated name; the result is checked.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Descend from `root` through `components`, creating missing directories, never
/// following a symlink.
fn walk<'a>(root: &OwnedFd, components: impl Iterator<Item = &'a [u8]>) -> Result<OwnedFd, Fail> {
    let mut fd = root.try_clone()?;
    let mut walked = Vec::new();
    for c in components {
        walked.push(String::from_utf8_lossy(c).into_owned());
        let name = cstr(c)?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let next = match openat(&fd, &name, flags, 0) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: valid descriptor and name.
                let r = unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(Fail::Io(e));
                    }
                }
                openat(&fd, &name, flags, 0).map_err(|e| refuse_walk(e, &walked))?
            }
            Err(e) => return Err(refuse_walk(e, &walked)),
        };
        fd = next;
    }
    Ok(fd)
}

fn refuse_walk(e: io::Error, walked: &[String]) -> Fail {
    match e.raw_os_error() {
        Some(libc::ENOTDIR) | Some(libc::ELOOP) => Fail::Refuse(format!(
            "/{} is a symlink or not a directory; not following it",
            walked.join("/")
        )),
        _ => Fail::Io(e),
    }
}

/// Remove whatever is at `name` in `dir` (an empty directory included).
fn clear(dir: &OwnedFd, name: &CString) -> io::Result<()> {
    // SAFETY: valid descriptor and name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        Some(libc::EISDIR) => {
            // SAFETY: as above.
            cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
                .map(drop)
        }
        _ => Err(e),
    }
}

fn times(mtime: u32) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: libc::time_t::from(mtime),
        tv_nsec: 0,
    };
    [t, t]
}

/// Owner, mode and mtime of an open file or directory.
fn set_meta_fd(fd: &OwnedFd, node: &Node, as_root: bool) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    if as_root {
        // SAFETY: plain syscalls on a valid descriptor.
        cvt(unsafe { libc::fchown(raw, node.uid, node.gid) })?;
    }
    // chmod after chown: chown clears setuid/setgid bits.
    // SAFETY: as above.
    cvt(unsafe { libc::fchmod(raw, node.mode & 0o7777) })?;
    let ts = times(node.mtime);
    // SAFETY: `ts` outlives the call.
    cvt(unsafe { libc::futimens(raw, ts.as_ptr()) })?;
    Ok(())
}

/// Unpack `initrd` into `dir` (created if missing) as the kernel would unpack it:
/// all segments in order, later entries replacing earlier ones.
pub fn extract(initrd: &Initrd, dir: &Path) -> Result<ExtractReport, InitrdError> {
    let (tree, rejected) = merged_tree(initrd, 0);
    let mut refused: Vec<String> = rejected
        .into_iter()
        .map(|n| format!("{n}: name contains '..'"))
        .collect();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let root_path = cstr(dir.as_os_str().as_bytes()).map_err(io_err(dir))?;
    // SAFETY: valid NUL-terminated path; the result is checked.
    let root = cvt(unsafe {
        libc::open(
            root_path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
    .map_err(io_err(dir))?;
    // SAFETY: freshly opened, owned by nobody else.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    // SAFETY: geteuid cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;

    let mut report = ExtractReport::default();
    let mut first_of_group: std::collections::HashMap<u32, PathKey> = Default::default();
    let mut dirs: Vec<(&PathKey, &Node)> = Vec::new();
    let total = tree.nodes.len();
    for (key, node) in &tree.nodes {
        interrupt::check()?;
        let Some((parent, name)) = key.split_last() else {
            continue; // the root, done at the end
        };
        let result = (|| -> Result<bool, Fail> {
            let pfd = walk(&root, parent.components())?;
            let cname = cstr(name)?;
            create(
                &root,
                &pfd,
                &cname,
                key,
                node,
                as_root,
                &mut first_of_group,
                &mut report,
            )
        })();
        match result {
            Ok(true) if node.is_dir() => dirs.push((key, node)),
            Ok(_) => {}
            Err(Fail::Refuse(why)) => refused.push(format!("{}: {why}", key.display())),
            Err(Fail::Io(e)) => {
                return Err(InitrdError::Io {
                    path: dir.join(Path::new(std::ffi::OsStr::from_bytes(key.as_bytes()))),
                    source: e,
                });
            }
        }
    }
    // Directory metadata last, deepest first: creating entries changed their mtimes,
    // and a read-only mode would have stopped us from filling them.
    for (key, node) in dirs.iter().rev() {
        let path = dir.join(Path::new(std::ffi::OsStr::from_bytes(key.as_bytes())));
        let (parent, name) = key.split_last().unwrap_or((PathKey::root(), b""));
        let fd = match walk(&root, parent.components()) {
            Ok(fd) => fd,
            Err(Fail::Refuse(why)) => {
                refused.push(format!("{}: {why}", key.display()));
                continue;
            }
            Err(Fail::Io(e)) => return Err(InitrdError::Io { path, source: e }),
        };
        let cname = cstr(name).map_err(io_err(&path))?;
        let d = openat(
            &fd,
            &cname,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(io_err(&path))?;
        set_meta_fd(&d, node, as_root).map_err(io_err(&path))?;
    }
    if let Some(node) = tree.get(&PathKey::root())
        && node.is_dir()
    {
        set_meta_fd(&root, node, as_root).map_err(io_err(dir))?;
        report.entries += 1;
    }
    if !refused.is_empty() {
        return Err(InitrdError::Refused { refused, total });
    }
    Ok(report)
}

/// Create one entry in `pfd`. Ok(true) when something was created.
#[allow(clippy::too_many_arguments)]
fn create(
    root: &OwnedFd,
    pfd: &OwnedFd,
    name: &CString,
    key: &PathKey,
    node: &Node,
    as_root: bool,
    first_of_group: &mut std::collections::HashMap<u32, PathKey>,
    report: &mut ExtractReport,
) -> Result<bool, Fail> {
    let raw = pfd.as_raw_fd();
    let kind = node.file_type();
    if kind == FileType::Dir {
        // SAFETY: valid descriptor and name.
        if unsafe { libc::mkdirat(raw, name.as_ptr(), 0o700) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e.into());
            }
            // Keep an existing directory (never a symlink to one); replace anything else.
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            if openat(pfd, name, flags, 0).is_err() {
                clear(pfd, name)?;
                // SAFETY: as above.
                cvt(unsafe { libc::mkdirat(raw, name.as_ptr(), 0o700) })?;
            }
        }
        report.entries += 1;
        return Ok(true);
    }
    if matches!(kind, FileType::Char | FileType::Block) && !as_root {
        report.skipped_devices.push(key.display());
        return Ok(false);
    }
    clear(pfd, name)?;
    match kind {
        FileType::File => {
            if let Some(group) = node.link
                && let Some(first) = first_of_group.get(&group)
            {
                let (sp, sn) = first.split_last().unwrap_or((PathKey::root(), b""));
                let sfd = walk(root, sp.components())?;
                let sname = cstr(sn)?;
                // SAFETY: valid descriptors and names; flags 0 = do not follow.
                cvt(unsafe {
                    libc::linkat(sfd.as_raw_fd(), sname.as_ptr(), raw, name.as_ptr(), 0)
                })?;
                report.entries += 1;
                return Ok(true);
            }
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
            let fd = openat(pfd, name, flags, 0o600)?;
            let mut file = File::from(fd);
            file.write_all(&node.data)?;
            set_meta_fd(&OwnedFd::from(file), node, as_root)?;
            if let Some(group) = node.link {
                first_of_group.insert(group, key.clone());
            }
        }
        FileType::Symlink => {
            let target = cstr(&node.data)?;
            // SAFETY: valid descriptor and strings.
            cvt(unsafe { libc::symlinkat(target.as_ptr(), raw, name.as_ptr()) })?;
            set_meta_at(pfd, name, node, as_root, false)?;
        }
        FileType::Char | FileType::Block | FileType::Fifo | FileType::Socket => {
            let dev = make_dev(node.rdev_major, node.rdev_minor);
            let mode = kind.mode_bits() | (node.mode & 0o777);
            // SAFETY: valid descriptor and name.
            cvt(unsafe { libc::mknodat(raw, name.as_ptr(), mode, dev as libc::dev_t) })?;
            set_meta_at(pfd, name, node, as_root, true)?;
        }
        FileType::Dir => {}
        FileType::Unknown => {
            return Err(Fail::Refuse(format!(
                "unknown file type in mode {:o}",
                node.mode
            )));
        }
    }
    report.entries += 1;
    Ok(true)
}

/// Owner, mode (unless a symlink) and mtime of `name` in `dir`, without following it.
fn set_meta_at(
    dir: &OwnedFd,
    name: &CString,
    node: &Node,
    as_root: bool,
    chmod: bool,
) -> io::Result<()> {
    let raw = dir.as_raw_fd();
    if as_root {
        // SAFETY: valid descriptor and name.
        cvt(unsafe {
            libc::fchownat(
                raw,
                name.as_ptr(),
                node.uid,
                node.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
    }
    if chmod {
        // The entry was just created by us and is not a symlink.
        // SAFETY: as above.
        cvt(unsafe { libc::fchmodat(raw, name.as_ptr(), node.mode & 0o7777, 0) })?;
    }
    let ts = times(node.mtime);
    // SAFETY: `ts` outlives the call.
    cvt(unsafe { libc::utimensat(raw, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(())
}

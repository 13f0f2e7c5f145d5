//! Thin, typed wrappers over the mount-related system calls the sandbox uses.
//! Every target is an already-opened directory fd, reached through
//! `/proc/self/fd/N`: the kernel resolves that magic link to exactly the inode
//! the fd refers to, so a path inside the tree is never looked up a second
//! time (and a symlink swapped in meanwhile cannot redirect the mount).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

pub fn path_cstring(path: &Path) -> io::Result<CString> {
    cstring(path.as_os_str().as_bytes())
}

/// `/proc/self/fd/N` for `fd`, as a C string for mount(2) and friends.
pub fn fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What to mount: a filesystem type with its source and data, or a bind.
pub enum MountSource<'a> {
    Filesystem {
        fstype: &'a CStr,
        data: Option<&'a CStr>,
    },
    /// Bind `path` (and, when `recursive`, every mount below it).
    Bind { path: &'a Path, recursive: bool },
}

/// Mount `source` on the directory `target` (an fd obtained by a confined walk).
pub fn mount_on(
    source: MountSource<'_>,
    target: BorrowedFd<'_>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let target = fd_path(target);
    match source {
        MountSource::Filesystem { fstype, data } => {
            let data_ptr = data.map_or(std::ptr::null(), |d| d.as_ptr().cast());
            // SAFETY: all pointers are valid NUL-terminated strings or null.
            check(unsafe {
                libc::mount(
                    fstype.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    flags,
                    data_ptr,
                )
            })
        }
        MountSource::Bind { path, recursive } => {
            let src = path_cstring(path)?;
            let rec = if recursive { libc::MS_REC } else { 0 };
            // SAFETY: valid strings; fstype and data may be null for a bind.
            check(unsafe {
                libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | rec | flags,
                    std::ptr::null(),
                )
            })
        }
    }
}

/// Make the bind mount whose root is `mount_root` read-only. (A bind ignores
/// MS_RDONLY on creation; it takes a second, remount step.)
pub fn remount_bind_readonly(mount_root: BorrowedFd<'_>) -> io::Result<()> {
    let target = fd_path(mount_root);
    // SAFETY: valid strings; null source/fstype/data are allowed for a remount.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            std::ptr::null(),
        )
    })
}

/// Lazily detach the mount whose root `mount_root` is, with everything below it.
pub fn detach_mount_at_fd(mount_root: BorrowedFd<'_>) -> io::Result<()> {
    let target = fd_path(mount_root);
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
}

/// Lazily detach the mount at `path`, refusing to follow a final symlink.
pub fn detach_mount_at_path(path: &Path) -> io::Result<()> {
    let c = path_cstring(path)?;
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) })
}

/// Change the propagation of every mount in this namespace (`MS_SLAVE`, `MS_PRIVATE`).
pub fn set_propagation_recursive(kind: libc::c_ulong) -> io::Result<()> {
    // SAFETY: constant strings; fstype and data unused for a propagation change.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            kind | libc::MS_REC,
            std::ptr::null(),
        )
    })
}

/// openat2(2) relative to `dir` with the given resolve flags.
pub fn openat2(
    dir: BorrowedFd<'_>,
    name: &[u8],
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let name = cstring(name)?;
    // SAFETY: open_how is plain data; zeroed is a valid starting value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: pointers are valid for the call; the size matches the struct.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

/// The id of the mount `fd` lives on (statx STATX_MNT_ID).
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: statx is plain data; the kernel fills it.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, valid out pointer.
    check(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    })?;
    Ok(stx.stx_mnt_id)
}

/// chmod the inode `fd` refers to (an O_PATH fd is enough), ignoring the umask.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    let path = fd_path(fd);
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::chmod(path.as_ptr(), mode) })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &[u8], mode: libc::mode_t) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

/// Remove the empty directory `name` in `dir`.
pub fn rmdirat(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
}

/// Remove the non-directory `name` in `dir` (a symlink itself, never its target).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
}

/// Rename `from` to `to`, both in `dir`, replacing `to`.
pub fn renameat(dir: BorrowedFd<'_>, from: &[u8], to: &[u8]) -> io::Result<()> {
    let from = cstring(from)?;
    let to = cstring(to)?;
    let fd = dir.as_raw_fd();
    // SAFETY: valid fd and NUL-terminated names.
    check(unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) })
}

/// The type of `name` in `dir` without following a symlink, or None if absent.
pub fn entry_kind(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<libc::mode_t>> {
    let name = cstring(name)?;
    // SAFETY: stat is plain data; the kernel fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, name and out pointer.
    let ret = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok(Some(st.st_mode & libc::S_IFMT))
}

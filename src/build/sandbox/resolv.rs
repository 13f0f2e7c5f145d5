//! Name resolution inside the chroot, the way diskimage-builder arranges it:
//! the tree's own /etc/resolv.conf (a file or a symlink) is renamed to
//! /etc/resolv.conf.ORIG and a plain copy of the host's resolv.conf takes its
//! place. Afterwards the copy is removed and .ORIG renamed back. As with DIB,
//! .ORIG is an interface: an element may write the resolv.conf it wants in the
//! final image there; and an element that replaced resolv.conf by a symlink
//! (the resolvconf package does) keeps its symlink, .ORIG is dropped then.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use super::SandboxError;
use super::sys;

const RESOLV: &[u8] = b"resolv.conf";
const SAVED: &[u8] = b"resolv.conf.ORIG";

/// The swap in place; `restore` puts the tree's own file back.
pub struct ResolvSwap {
    etc: OwnedFd,
    /// Host path of the tree's /etc, for messages.
    etc_path: PathBuf,
}

impl ResolvSwap {
    /// Swap in `host_content` (the host's resolv.conf) in the directory `etc`.
    pub fn install(
        etc: OwnedFd,
        etc_path: PathBuf,
        host_content: &[u8],
    ) -> Result<Self, SandboxError> {
        let swap = ResolvSwap { etc, etc_path };
        match sys::entry_kind(swap.etc.as_fd(), RESOLV).map_err(|e| swap.err("inspecting", e))? {
            None => {}
            Some(libc::S_IFREG) | Some(libc::S_IFLNK) => {
                sys::renameat(swap.etc.as_fd(), RESOLV, SAVED)
                    .map_err(|e| swap.err("saving as resolv.conf.ORIG", e))?;
            }
            Some(_) => {
                return Err(SandboxError::Io {
                    what: "preparing name resolution",
                    path: swap.etc_path.join("resolv.conf"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "neither a file nor a symlink",
                    ),
                });
            }
        }
        if let Err(e) = swap.write_copy(host_content) {
            // Put the tree's own file back before reporting.
            let _ = swap.restore();
            return Err(swap.err("writing the host's copy", e));
        }
        Ok(swap)
    }

    fn write_copy(&self, content: &[u8]) -> std::io::Result<()> {
        let name = std::ffi::CString::new(RESOLV).expect("constant without NUL");
        // SAFETY: valid fd and NUL-terminated name; O_NOFOLLOW|O_EXCL never
        // opens something that already exists, symlink or not.
        let fd = unsafe {
            libc::openat(
                self.etc.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd owned by nothing else.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(content)
    }

    /// Put the tree's resolv.conf back (see the module comment for the rules).
    pub fn restore(&self) -> Result<(), SandboxError> {
        let etc = self.etc.as_fd();
        let current = sys::entry_kind(etc, RESOLV).map_err(|e| self.err("inspecting", e))?;
        let saved = sys::entry_kind(etc, SAVED).map_err(|e| self.err("inspecting", e))?;
        if current == Some(libc::S_IFLNK) {
            if saved.is_some() {
                sys::unlinkat(etc, SAVED).map_err(|e| self.err("dropping resolv.conf.ORIG", e))?;
            }
            return Ok(());
        }
        if current.is_some() {
            sys::unlinkat(etc, RESOLV).map_err(|e| self.err("removing the host's copy", e))?;
        }
        if matches!(saved, Some(libc::S_IFREG) | Some(libc::S_IFLNK)) {
            sys::renameat(etc, SAVED, RESOLV)
                .map_err(|e| self.err("renaming resolv.conf.ORIG back", e))?;
        }
        Ok(())
    }

    fn err(&self, what: &'static str, source: std::io::Error) -> SandboxError {
        SandboxError::Resolv {
            what,
            path: self.etc_path.join("resolv.conf"),
            source,
        }
    }
}

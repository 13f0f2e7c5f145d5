//! The private mount namespace a build runs in, and the tmpfs its build
//! directory lives on. Whatever is mounted in that namespace disappears with
//! it: when kiln exits, even by SIGKILL, the kernel drops the namespace and
//! every mount in it, so a crashed build leaves neither mounts nor a temp tree.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::SandboxError;
use super::sys::{self, MountSource};

/// Namespaces made by `enter_private_mount_namespace` (by their nsfs inode).
/// Mounting is refused anywhere else, so a sandbox can never touch the host's
/// mount table by mistake.
static PRIVATE_NAMESPACES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// The mount namespace of the calling thread. A thread, not the process:
/// unshare(CLONE_NEWNS) moves only the thread that calls it.
fn current_namespace_id() -> std::io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/mnt")?.ino())
}

/// Move the calling thread into a new mount namespace whose mounts are all
/// slaves of the host's: host mount changes still reach kiln (so kiln never
/// keeps a host filesystem busy), kiln's mounts never reach the host.
///
/// Thread caveat: the kernel moves only the calling thread. Threads that exist
/// already (a rayon pool, a progress bar ticker) stay in the host namespace
/// and would not see the build's mounts; threads and child processes started
/// afterwards from this thread inherit the new namespace. Call this once, at
/// the start of a build, before any helper thread starts.
pub fn enter_private_mount_namespace() -> Result<(), SandboxError> {
    // SAFETY: unshare has no memory-safety preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } < 0 {
        return Err(SandboxError::Unshare(std::io::Error::last_os_error()));
    }
    sys::set_propagation_recursive(libc::MS_SLAVE).map_err(SandboxError::Propagation)?;
    let id = current_namespace_id().map_err(SandboxError::Unshare)?;
    let mut known = PRIVATE_NAMESPACES.lock().unwrap_or_else(|e| e.into_inner());
    if !known.contains(&id) {
        known.push(id);
    }
    Ok(())
}

/// Whether the calling thread runs in a namespace made by
/// `enter_private_mount_namespace`.
pub fn in_private_mount_namespace() -> bool {
    let Ok(id) = current_namespace_id() else {
        return false;
    };
    PRIVATE_NAMESPACES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&id)
}

/// Err unless the calling thread may mount (see `in_private_mount_namespace`).
pub(super) fn require_private_namespace(path: &Path) -> Result<(), SandboxError> {
    if in_private_mount_namespace() {
        Ok(())
    } else {
        Err(SandboxError::NotPrivate {
            path: path.to_path_buf(),
        })
    }
}

/// A tmpfs mounted over a directory inside the private namespace. Mount it on
/// a fixed directory (for example /var/tmp/kiln): concurrent builds each see
/// their own empty tmpfs there, and a killed build leaves only that empty
/// directory behind.
pub struct BuildTmpfs {
    dir: PathBuf,
    root: Option<OwnedFd>,
}

impl BuildTmpfs {
    /// Mount a tmpfs (root-owned, mode 0755, at most `size_bytes` when given) on `dir`.
    pub fn mount(dir: &Path, size_bytes: Option<u64>) -> Result<Self, SandboxError> {
        require_private_namespace(dir)?;
        let target = std::fs::File::open(dir)
            .and_then(|f| f.metadata().map(|m| (f, m)))
            .map_err(|source| SandboxError::Io {
                what: "opening the build directory",
                path: dir.to_path_buf(),
                source,
            })?;
        if !target.1.is_dir() {
            return Err(SandboxError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        let mut data = String::from("mode=0755");
        if let Some(size) = size_bytes {
            data.push_str(&format!(",size={size}"));
        }
        let data = std::ffi::CString::new(data).expect("no NUL in numbers");
        let mount_err = |source| SandboxError::Mount {
            what: "tmpfs",
            path: dir.to_path_buf(),
            source,
        };
        sys::mount_on(
            MountSource::Filesystem {
                fstype: c"tmpfs",
                data: Some(&data),
            },
            target.0.as_fd(),
            libc::MS_NOSUID | libc::MS_NODEV,
        )
        .map_err(mount_err)?;
        // A fresh open crosses into the new mount: that fd names its root.
        let root = std::fs::File::open(dir).map_err(mount_err)?;
        Ok(BuildTmpfs {
            dir: dir.to_path_buf(),
            root: Some(root.into()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unmount now (lazily: anything still open keeps its files until closed).
    pub fn release(mut self) -> Result<(), SandboxError> {
        self.detach()
    }

    fn detach(&mut self) -> Result<(), SandboxError> {
        let Some(root) = self.root.take() else {
            return Ok(());
        };
        sys::detach_mount_at_fd(root.as_fd()).map_err(|source| SandboxError::Unmount {
            path: self.dir.clone(),
            source,
        })
    }
}

impl Drop for BuildTmpfs {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

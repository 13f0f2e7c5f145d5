//! The build sandbox: a private mount namespace for the whole build, and the
//! kernel filesystems a chroot needs, mounted into the target tree for as long
//! as a `ChrootMounts` guard lives.
//!
//! What a chroot script finds, as with diskimage-builder: /proc (proc), /sys
//! (sysfs, read-only, which tells udev and systemd they are in a container),
//! /dev (the host's /dev), /dev/pts (a devpts instance of its own), a copy of
//! the host's resolv.conf, and the hooks directory read-only at
//! /tmp/in_target.d. Every mount point is reached by a walk that refuses
//! symlinks, so a tree cannot redirect a mount onto a host directory.

mod mountinfo;
mod namespace;
mod resolv;
pub(crate) mod sys;
mod tree;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use mountinfo::{mounts_below, unescape_octal};
pub use namespace::{BuildTmpfs, enter_private_mount_namespace, in_private_mount_namespace};

use resolv::ResolvSwap;
use sys::MountSource;
use tree::{CreatedDir, TreeRoot};

/// Where the hooks directory appears inside the chroot (DIB's TMP_HOOKS_PATH there).
pub const IN_TARGET_HOOKS: &str = "/tmp/in_target.d";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot create a private mount namespace: {0}")]
    Unshare(#[source] std::io::Error),
    #[error("cannot stop mounts propagating between kiln's namespace and the host: {0}")]
    Propagation(#[source] std::io::Error),
    #[error(
        "refusing to mount in {path}: this thread is not in kiln's private mount namespace \
         (enter_private_mount_namespace was not called)"
    )]
    NotPrivate { path: PathBuf },
    #[error(
        "{path} is a symlink; kiln does not mount or create anything through a symlink in the target tree"
    )]
    SymlinkInTree { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {what} on {path}: {source}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}: {source}")]
    Resolv {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounts are still present below {tree} after unmounting: {}", list_paths(.mounts))]
    MountsLeft { tree: PathBuf, mounts: Vec<PathBuf> },
    #[error("releasing the chroot mounts of {tree}: {}", list_errors(.errors))]
    Release {
        tree: PathBuf,
        errors: Vec<SandboxError>,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

fn list_errors(errors: &[SandboxError]) -> String {
    let texts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    texts.join("; ")
}

/// One thing set up in the tree, undone in reverse order.
enum Step {
    Mount {
        /// Relative to the tree, for messages.
        rel: PathBuf,
        /// The root of the mount, so the unmount hits exactly this mount
        /// even if the tree was rearranged meanwhile.
        root: OwnedFd,
    },
    Resolv(ResolvSwap),
}

/// The kernel filesystems, resolv.conf and hooks of a chroot, set up in a
/// target tree. Dropping the guard undoes everything (errors are lost then;
/// call `release` to see them). Nothing stays mounted below the tree
/// afterwards, not even what a script mounted there, and the directories the
/// guard had to create are removed again when empty.
pub struct ChrootMounts {
    root: TreeRoot,
    steps: Vec<Step>,
    created: Vec<CreatedDir>,
    /// Mounts below the tree before the guard (a guest's /boot and /var
    /// mounted by `kiln image customize`): the caller's, never swept.
    preexisting: Vec<PathBuf>,
    released: bool,
}

impl ChrootMounts {
    /// Prepare `tree` for chrooted scripts, with `hooks_dir` (when given)
    /// read-only at /tmp/in_target.d. Must run in the private namespace.
    pub fn mount(tree: &Path, hooks_dir: Option<&Path>) -> Result<Self, SandboxError> {
        namespace::require_private_namespace(tree)?;
        let root = TreeRoot::open(tree)?;
        let preexisting = mounts_below(root.path()).map_err(|source| SandboxError::Io {
            what: "reading",
            path: PathBuf::from("/proc/thread-self/mountinfo"),
            source,
        })?;
        let mut guard = ChrootMounts {
            root,
            steps: Vec::new(),
            created: Vec::new(),
            preexisting,
            released: false,
        };
        // On any error the partly built guard is dropped, which undoes it.
        guard.mount_filesystem(
            "proc",
            0o555,
            "proc",
            None,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        )?;
        guard.mount_filesystem(
            "sys",
            0o555,
            "sysfs",
            None,
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        )?;
        guard.mount_at(
            "dev",
            Some(0o755),
            "the host's /dev",
            MountSource::Bind {
                path: Path::new("/dev"),
                recursive: true,
            },
            0,
        )?;
        // A devpts instance of its own: ptys opened in the chroot do not show
        // up among the host's, and /dev/ptmx next to it finds this instance.
        guard.mount_at(
            "dev/pts",
            None,
            "devpts",
            MountSource::Filesystem {
                fstype: c"devpts",
                data: Some(c"newinstance,ptmxmode=0666,mode=0620"),
            },
            libc::MS_NOSUID | libc::MS_NOEXEC,
        )?;
        guard.swap_resolv_conf()?;
        if let Some(hooks) = hooks_dir {
            guard.bind_hooks(hooks)?;
        }
        Ok(guard)
    }

    /// The tree's canonical host path.
    pub fn tree(&self) -> &Path {
        self.root.path()
    }

    /// Undo everything now and report what failed. Undoing goes on past an
    /// error, so as much as possible is cleaned up either way.
    pub fn release(mut self) -> Result<(), SandboxError> {
        let mut errors = self.undo();
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(SandboxError::Release {
                tree: self.root.path().to_path_buf(),
                errors,
            }),
        }
    }

    fn mount_filesystem(
        &mut self,
        rel: &str,
        mode: libc::mode_t,
        fstype: &'static str,
        data: Option<&std::ffi::CStr>,
        flags: libc::c_ulong,
    ) -> Result<(), SandboxError> {
        let fstype_c = std::ffi::CString::new(fstype).expect("constant without NUL");
        self.mount_at(
            rel,
            Some(mode),
            fstype,
            MountSource::Filesystem {
                fstype: &fstype_c,
                data,
            },
            flags,
        )
        .map(drop)
    }

    /// Mount `source` on the tree directory `rel` (created with `create` mode
    /// when missing, else required) and remember the new mount's root.
    fn mount_at(
        &mut self,
        rel: &str,
        create: Option<libc::mode_t>,
        what: &'static str,
        source: MountSource<'_>,
        flags: libc::c_ulong,
    ) -> Result<OwnedFd, SandboxError> {
        let dir = self
            .root
            .dir(rel, create.unwrap_or(0), create.map(|_| &mut self.created))?;
        let host_path = self.root.host_path(&dir.rel);
        let err = |source| SandboxError::Mount {
            what,
            path: host_path.clone(),
            source,
        };
        let below = sys::mount_id(dir.fd.as_fd()).map_err(err)?;
        sys::mount_on(source, dir.fd.as_fd(), flags).map_err(err)?;
        let (parent, name) = dir
            .parent
            .as_ref()
            .expect("a mount point is below the root");
        // Opening the name again crosses into the new mount: that fd is its root.
        let root = sys::openat2(
            parent.as_fd(),
            name,
            libc::O_PATH | libc::O_DIRECTORY,
            libc::RESOLVE_NO_SYMLINKS,
        )
        .map_err(err)?;
        let on_top = sys::mount_id(root.as_fd()).map_err(err)?;
        let keep = root.try_clone().map_err(err)?;
        self.steps.push(Step::Mount {
            rel: dir.rel.clone(),
            root,
        });
        if on_top == below {
            return Err(err(std::io::Error::other(
                "the mount did not appear at the mount point",
            )));
        }
        Ok(keep)
    }

    fn swap_resolv_conf(&mut self) -> Result<(), SandboxError> {
        let host = match std::fs::read("/etc/resolv.conf") {
            Ok(bytes) => bytes,
            // No resolver configured on the host: the chroot gets an empty
            // file rather than an invented public server.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(SandboxError::Io {
                    what: "reading",
                    path: PathBuf::from("/etc/resolv.conf"),
                    source,
                });
            }
        };
        let etc = self.root.dir("etc", 0o755, Some(&mut self.created))?;
        let etc_path = self.root.host_path(&etc.rel);
        let swap = ResolvSwap::install(etc.fd, etc_path, &host)?;
        self.steps.push(Step::Resolv(swap));
        Ok(())
    }

    fn bind_hooks(&mut self, hooks: &Path) -> Result<(), SandboxError> {
        // /tmp first, so a tree without one gets it sticky and world-writable
        // (in_target.d below it is made 0755).
        self.root.dir("tmp", 0o1777, Some(&mut self.created))?;
        let rel = IN_TARGET_HOOKS.trim_start_matches('/');
        let root = self.mount_at(
            rel,
            Some(0o755),
            "the hooks directory",
            MountSource::Bind {
                path: hooks,
                recursive: false,
            },
            0,
        )?;
        sys::remount_bind_readonly(root.as_fd()).map_err(|source| SandboxError::Mount {
            what: "the hooks directory (read-only)",
            path: self.root.host_path(Path::new(rel)),
            source,
        })
    }

    /// Undo every step, sweep what scripts mounted, remove created
    /// directories, and check that nothing is left mounted below the tree.
    fn undo(&mut self) -> Vec<SandboxError> {
        if self.released {
            return Vec::new();
        }
        self.released = true;
        let mut errors = Vec::new();
        while let Some(step) = self.steps.pop() {
            match step {
                Step::Mount { rel, root } => {
                    if let Err(source) = sys::detach_mount_at_fd(root.as_fd()) {
                        errors.push(SandboxError::Unmount {
                            path: self.root.host_path(&rel),
                            source,
                        });
                    }
                }
                Step::Resolv(swap) => {
                    if let Err(e) = swap.restore() {
                        errors.push(e);
                    }
                }
            }
        }
        let tree = self.root.path().to_path_buf();
        // Scripts may have mounted things of their own below the tree.
        match mounts_below(&tree) {
            Ok(left) => {
                for point in left.into_iter().filter(|p| !self.preexisting.contains(p)) {
                    match sys::detach_mount_at_path(&point) {
                        // Already gone with a parent detached before it.
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(source) => errors.push(SandboxError::Unmount {
                            path: point,
                            source,
                        }),
                        Ok(()) => {}
                    }
                }
            }
            Err(source) => errors.push(SandboxError::Io {
                what: "reading",
                path: PathBuf::from("/proc/thread-self/mountinfo"),
                source,
            }),
        }
        while let Some(dir) = self.created.pop() {
            match sys::rmdirat(dir.parent.as_fd(), &dir.name) {
                Ok(()) => {}
                // A script left files there: they are the build's business.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOTEMPTY) | Some(libc::EEXIST) | Some(libc::ENOENT)
                    ) => {}
                Err(source) => errors.push(SandboxError::Io {
                    what: "removing the directory kiln created",
                    path: self.root.host_path(&dir.rel),
                    source,
                }),
            }
        }
        match mounts_below(&tree) {
            Ok(mut left) => {
                left.retain(|p| !self.preexisting.contains(p));
                if !left.is_empty() {
                    errors.push(SandboxError::MountsLeft { tree, mounts: left });
                }
            }
            Err(source) => errors.push(SandboxError::Io {
                what: "reading",
                path: PathBuf::from("/proc/thread-self/mountinfo"),
                source,
            }),
        }
        errors
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        let _ = self.undo();
    }
}

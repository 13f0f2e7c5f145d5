//! Guest filesystems of an image, mounted on the host kernel without a VM.
//!
//! The chain, from the image up:
//!
//! ```text
//! IMAGE (raw | qcow2) --BlockSource--> Overlay (copy-on-write, memory + spill file)
//!   --FUSE file `disk`--> loop device (+ partitions) --> mounts in a private namespace
//! ```
//!
//! `overlay` keeps every write away from the image until `commit`, which
//! goes through a `journal` so a crash mid-commit is completed later;
//! `blockfile` serves the overlay as a regular file (see there why FUSE and
//! loop, not NBD); `loopdev` turns that file into a block device with
//! partitions; `lvm` maps LVM logical volumes; `mount` finds the guest's
//! filesystems and mounts its root and fstab. `GuestSession` ties them
//! together and undoes everything on drop.

pub mod blockfile;
pub mod chunks;
pub mod journal;
pub mod loopdev;
pub mod lvm;
pub mod mount;
pub mod overlay;
pub mod writer;

use std::path::PathBuf;

pub use journal::JournalError;
pub use mount::{FsInfo, GuestSession};
pub use overlay::{ChangedRange, Overlay, OverlayError};
pub use writer::{ImageWriter, RawWriter};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot parse {what} from {text:?}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        text: String,
    },
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "refusing to mount guest filesystems of {image}: this thread is not in kiln's private \
         mount namespace (enter_private_mount_namespace was not called)"
    )]
    NotPrivate { image: PathBuf },
    #[error("{command} failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{image}: no guest root found (no filesystem among {} has /etc/os-release or /etc/fstab)",
        .searched.join(", ")
    )]
    NoRoot {
        image: PathBuf,
        searched: Vec<String>,
    },
    #[error("mounting {device} ({fstype}) on {target}: {source}")]
    Mount {
        device: PathBuf,
        fstype: String,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: LVM metadata: {message}")]
    Lvm { path: PathBuf, message: String },
    #[error("{image}: the session is read-only; nothing to commit")]
    ReadOnly { image: PathBuf },
    #[error("tearing down the guest session of {image}: {}", .errors.join("; "))]
    Teardown { image: PathBuf, errors: Vec<String> },
}

/// Run `cmd` and return its stdout, or a `Tool` error with its stderr.
pub(crate) fn run_tool(cmd: &mut std::process::Command) -> Result<String, GuestError> {
    let command = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| GuestError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(GuestError::Tool {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

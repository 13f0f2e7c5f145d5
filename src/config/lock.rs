//! One `kiln config apply` at a time: an flock on a file that holds the
//! holder's pid, so the refused run can say who is running.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another kiln config apply is running (pid {pid})")]
    Busy { pid: String },
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held until dropped; the kernel releases it if the process dies.
pub struct ApplyLock {
    _file: File,
}

impl ApplyLock {
    pub fn acquire(path: &Path) -> Result<ApplyLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Busy {
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.into()
                },
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(ApplyLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/apply.lock");
        let held = ApplyLock::acquire(&path).unwrap();
        // flock locks belong to the open file description: a second open
        // in the same process conflicts like another process would.
        match ApplyLock::acquire(&path) {
            Err(LockError::Busy { pid }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Busy, got {:?}", other.map(|_| ())),
        }
        drop(held);
        assert!(ApplyLock::acquire(&path).is_ok());
    }
}

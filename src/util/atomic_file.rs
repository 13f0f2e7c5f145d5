//! Output files that appear only when complete. The data goes to an unnamed
//! O_TMPFILE inode in the destination folder, so a crash or kill leaves nothing
//! behind; `commit` gives it a name and renames it over the destination. Where
//! O_TMPFILE is not supported a hidden temp name is used and removed on drop.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct AtomicFile {
    file: File,
    dest: PathBuf,
    /// Set when the fallback named temp file is in use.
    named_temp: Option<PathBuf>,
    committed: bool,
}

fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let nonce: u32 = rand_nonce();
    dest.with_file_name(format!(".{name}.kiln-{:x}-{nonce:08x}", std::process::id()))
}

fn rand_nonce() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ uuid::Uuid::new_v4().as_u128() as u32
}

impl AtomicFile {
    /// Prepare to write `dest`. Its folder must exist.
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Replacing a device node or a pipe by a file would be a surprise at
        // best; only regular files (or nothing) may stand at the destination.
        if let Ok(meta) = std::fs::metadata(dest)
            && !meta.is_file()
        {
            let what = if meta.is_dir() {
                "a directory"
            } else {
                "not a regular file"
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is {what}; kiln writes image files", dest.display()),
            ));
        }
        let unnamed = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE)
            .open(&dir);
        match unnamed {
            Ok(file) => Ok(Self {
                file,
                dest: dest.to_path_buf(),
                named_temp: None,
                committed: false,
            }),
            Err(e)
                if e.raw_os_error() == Some(libc::EOPNOTSUPP)
                    || e.raw_os_error() == Some(libc::EISDIR)
                    || e.raw_os_error() == Some(libc::EINVAL) =>
            {
                let temp = temp_sibling(dest);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&temp)?;
                Ok(Self {
                    file,
                    dest: dest.to_path_buf(),
                    named_temp: Some(temp),
                    committed: false,
                })
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot create a file in {}: {e}", dir.display()),
            )),
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Make the file visible under its destination name (replacing what was there).
    pub fn commit(mut self) -> io::Result<()> {
        let temp = match self.named_temp.take() {
            Some(t) => t,
            None => {
                let temp = temp_sibling(&self.dest);
                link_unnamed(&self.file, &temp)?;
                temp
            }
        };
        if let Err(e) = std::fs::rename(&temp, &self.dest) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        self.committed = true;
        Ok(())
    }
}

/// Give the O_TMPFILE inode behind `file` the name `path`.
fn link_unnamed(file: &File, path: &Path) -> io::Result<()> {
    let proc_path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let target = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: both arguments are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed
            && let Some(temp) = &self.named_temp
        {
            let _ = std::fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn devices_and_directories_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let err = AtomicFile::create(Path::new("/dev/null")).err().unwrap();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = AtomicFile::create(dir.path()).err().unwrap();
        assert!(err.to_string().contains("a directory"), "{err}");
    }

    #[test]
    fn nothing_is_visible_until_commit_and_drop_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.img");
        {
            let f = AtomicFile::create(&dest).unwrap();
            f.file().write_all(b"half").unwrap();
            assert!(names(dir.path()).is_empty());
        }
        assert!(names(dir.path()).is_empty());
        let f = AtomicFile::create(&dest).unwrap();
        f.file().write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(names(dir.path()), vec!["out.img"]);
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
    }
}

//! Crash-safe commits: before a session's changes go into the image, they
//! are written to a journal beside it (`.NAME.kiln-journal`) and made durable.
//! A crash while the image is being changed leaves the journal behind, and
//! the next `GuestSession::open` of that image applies it again, so the image
//! ends up with all of the changes, never part of them. A crash while the
//! journal itself is written leaves only its temporary file, never the
//! journal: the image is then untouched.
//!
//! Layout (little-endian): header `KILNJRNL`, version u32, 0u32, disk size
//! u64; records of kind u8 (1 data, 2 zero) + 7 zero bytes, offset u64,
//! length u64, then the data for data records; end record kind 0; then the
//! sha256 of everything before it.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::overlay::{Change, Overlay, OverlayError};
use super::writer::{ImageWriter, open_writer};
use crate::format::ImageFormat;

const MAGIC: &[u8; 8] = b"KILNJRNL";
const VERSION: u32 = 1;
const END: u8 = 0;
const DATA: u8 = 1;
const ZERO: u8 = 2;
/// Largest data record we accept when replaying (writers use 4 MiB).
const MAX_RECORD: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("writing the commit journal {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the commit journal {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "commit journal {path} is damaged ({reason}); the image may hold part of that commit: \
         restore the image from a copy, or delete the journal to keep it as it is"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("replaying the commit journal {path} into the image: {source}")]
    Replay {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Overlay(#[from] OverlayError),
}

/// Where the journal of `image` lives: beside it, hidden.
pub fn journal_path(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    image.with_file_name(format!(".{name}.kiln-journal"))
}

/// A journal made durable on disk; `finish` removes it once the image holds
/// every change.
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// Write every change of `overlay` to the journal of `image`, fsync it,
    /// then give it its name (rename + directory fsync).
    pub fn write(image: &Path, overlay: &Overlay) -> Result<Journal, JournalError> {
        let path = journal_path(image);
        let write_err = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let dir = parent_dir(&path);
        let tmp = tempfile::Builder::new()
            .prefix(".kiln-journal-")
            .tempfile_in(&dir)
            .map_err(write_err)?;
        let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));
        out.write_all(MAGIC).map_err(write_err)?;
        out.write_all(&VERSION.to_le_bytes()).map_err(write_err)?;
        out.write_all(&0u32.to_le_bytes()).map_err(write_err)?;
        out.write_all(&overlay.size().to_le_bytes())
            .map_err(write_err)?;
        overlay.for_each_change(|offset, change| match change {
            Change::Data(data) => write_record(&mut out, DATA, offset, data.len() as u64)
                .and_then(|()| out.write_all(data))
                .map_err(write_err),
            Change::Zero(len) => write_record(&mut out, ZERO, offset, len).map_err(write_err),
        })?;
        write_record(&mut out, END, 0, 0).map_err(write_err)?;
        let (mut inner, digest) = out.finish();
        inner.write_all(&digest).map_err(write_err)?;
        inner.flush().map_err(write_err)?;
        drop(inner);
        tmp.as_file().sync_all().map_err(write_err)?;
        tmp.persist(&path).map_err(|e| write_err(e.error))?;
        sync_dir(&dir).map_err(write_err)?;
        Ok(Journal { path })
    }

    /// The image holds every change: drop the journal.
    pub fn finish(self) -> Result<(), JournalError> {
        let err = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        std::fs::remove_file(&self.path).map_err(err)?;
        sync_dir(&parent_dir(&self.path)).map_err(err)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// If an interrupted commit left a journal beside `image`, apply it to the
/// image and remove it. Returns whether there was one.
pub fn replay_pending(image: &Path, format: ImageFormat) -> Result<bool, JournalError> {
    let path = journal_path(image);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(JournalError::Read { path, source }),
    };
    verify(&path, &file)?;
    let mut writer = open_writer(image, format)?;
    let file = File::open(&path).map_err(|source| JournalError::Read {
        path: path.clone(),
        source,
    })?;
    apply(
        &path,
        BufReader::with_capacity(1 << 20, file),
        writer.as_mut(),
    )?;
    Journal { path }.finish()?;
    Ok(true)
}

fn write_record(out: &mut impl Write, kind: u8, offset: u64, len: u64) -> io::Result<()> {
    let mut rec = [0u8; 24];
    rec[0] = kind;
    rec[8..16].copy_from_slice(&offset.to_le_bytes());
    rec[16..24].copy_from_slice(&len.to_le_bytes());
    out.write_all(&rec)
}

/// Check the trailing sha256 against the rest of the file.
fn verify(path: &Path, file: &File) -> Result<(), JournalError> {
    let read_err = |source| JournalError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(read_err)?.len();
    if len < 24 + 24 + 32 {
        return Err(damaged(path, format!("only {len} bytes long")));
    }
    let mut reader = BufReader::with_capacity(1 << 20, file).take(len - 32);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut stored = [0u8; 32];
    reader
        .into_inner()
        .read_exact(&mut stored)
        .map_err(read_err)?;
    if hasher.finalize().as_slice() != stored {
        return Err(damaged(path, "checksum mismatch".into()));
    }
    Ok(())
}

fn apply(
    path: &Path,
    mut input: impl Read,
    writer: &mut dyn ImageWriter,
) -> Result<(), JournalError> {
    let read_err = |source| JournalError::Read {
        path: path.to_path_buf(),
        source,
    };
    let replay_err = |source| JournalError::Replay {
        path: path.to_path_buf(),
        source,
    };
    let mut header = [0u8; 24];
    input.read_exact(&mut header).map_err(read_err)?;
    if &header[..8] != MAGIC || u32::from_le_bytes(header[8..12].try_into().unwrap()) != VERSION {
        return Err(damaged(
            path,
            "not a kiln commit journal (version 1)".into(),
        ));
    }
    let mut data = Vec::new();
    loop {
        let mut rec = [0u8; 24];
        input.read_exact(&mut rec).map_err(read_err)?;
        let offset = u64::from_le_bytes(rec[8..16].try_into().unwrap());
        let len = u64::from_le_bytes(rec[16..24].try_into().unwrap());
        match rec[0] {
            END => break,
            DATA if len <= MAX_RECORD => {
                data.resize(len as usize, 0);
                input.read_exact(&mut data).map_err(read_err)?;
                writer.write_at(offset, &data).map_err(replay_err)?;
            }
            ZERO => writer.write_zeroes(offset, len).map_err(replay_err)?,
            kind => {
                return Err(damaged(
                    path,
                    format!("record of kind {kind}, length {len} at disk offset {offset}"),
                ));
            }
        }
    }
    writer.flush().map_err(replay_err)
}

fn damaged(path: &Path, reason: String) -> JournalError {
    JournalError::Damaged {
        path: path.to_path_buf(),
        reason,
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A writer that hashes what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn finish(self) -> (W, [u8; 32]) {
        (self.inner, self.hasher.finalize().into())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::MemDisk;

    fn image_with(dir: &Path, bytes: &[u8]) -> PathBuf {
        let image = dir.join("disk.raw");
        std::fs::write(&image, bytes).unwrap();
        image
    }

    fn changed_overlay(base: &[u8]) -> Overlay {
        let ov = Overlay::with_memory_budget(Box::new(MemDisk(base.to_vec())), 4096);
        ov.write_at(&[7; 9000], 100).unwrap();
        ov.write_zeroes(5 * 4096, 2 * 4096).unwrap();
        ov
    }

    #[test]
    fn an_interrupted_commit_is_completed_by_replay() {
        let dir = tempfile::tempdir().unwrap();
        let base: Vec<u8> = (0..8 * 4096).map(|i| (i % 253) as u8 + 1).collect();
        let image = image_with(dir.path(), &base);
        let ov = changed_overlay(&base);
        let mut expected = vec![0; base.len()];
        ov.read_at(&mut expected, 0).unwrap();

        // The journal is durable, then the "crash": the image got nothing.
        let journal = Journal::write(&image, &ov).unwrap();
        assert!(journal.path().exists());
        assert_eq!(std::fs::read(&image).unwrap(), base);
        assert!(replay_pending(&image, ImageFormat::Raw).unwrap());
        assert_eq!(std::fs::read(&image).unwrap(), expected);
        assert!(!journal_path(&image).exists());
        assert!(!replay_pending(&image, ImageFormat::Raw).unwrap());
    }

    #[test]
    fn a_damaged_journal_is_refused_and_the_image_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let base = vec![1u8; 8 * 4096];
        let image = image_with(dir.path(), &base);
        let journal = Journal::write(&image, &changed_overlay(&base)).unwrap();
        let mut bytes = std::fs::read(journal.path()).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(journal.path(), &bytes).unwrap();
        let err = replay_pending(&image, ImageFormat::Raw).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert_eq!(std::fs::read(&image).unwrap(), base);
        // Truncated journals (torn writes) are named as such too.
        std::fs::write(journal.path(), &bytes[..20]).unwrap();
        let err = replay_pending(&image, ImageFormat::Raw).unwrap_err();
        assert!(err.to_string().contains("bytes long"), "{err}");
    }

    #[test]
    fn a_qcow2_commit_is_replayed_through_the_qcow2_writer() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("1M")
            .status()
            .unwrap();
        assert!(made.success());
        let (_, base) = crate::format::open_image(&image, None).unwrap();
        let ov = Overlay::new(base);
        ov.write_at(&[5; 70_000], 300_000).unwrap();
        let mut expected = vec![0; 1 << 20];
        ov.read_at(&mut expected, 0).unwrap();
        drop(Journal::write(&image, &ov).unwrap());
        drop(ov);
        assert!(replay_pending(&image, ImageFormat::Qcow2).unwrap());
        let raw = dir.path().join("out.raw");
        let converted = std::process::Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&image)
            .arg(&raw)
            .status()
            .unwrap();
        assert!(converted.success());
        assert_eq!(std::fs::read(&raw).unwrap(), expected);
        let check = std::process::Command::new("qemu-img")
            .arg("check")
            .arg(&image)
            .output()
            .unwrap();
        assert!(check.status.success(), "{check:?}");
    }
}

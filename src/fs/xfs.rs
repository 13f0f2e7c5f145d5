//! xfs from a tree: `mkfs.xfs -p PROTOFILE` into a partition-sized sparse file next
//! to the image, a few fix-ups with `xfs_db`, then a sparse copy into the partition.
//!
//! What the protofile cannot carry: sticky bits are set afterwards with xfs_db;
//! hard links become separate copies; xattrs and times are not stored (mkfs.xfs
//! stamps the build time), so an xfs filesystem is not byte-reproducible.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{FsError, FsJob, run_tool, xfs_proto};

/// What the xfs build could not keep.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct XfsLosses {
    pub hardlink_copies: u64,
    pub dropped_xattrs: Vec<PathBuf>,
}

pub fn make_xfs(
    image_path: &Path,
    tree: &Path,
    exclude: &[PathBuf],
    job: &FsJob,
) -> Result<XfsLosses, FsError> {
    let proto = xfs_proto::protofile(tree, exclude)?;
    // The image may be an unnamed file reached through /proc: work in the temp folder.
    let scratch_dir = std::env::temp_dir();
    let dir = scratch_dir.as_path();
    let mut proto_file = tempfile::Builder::new()
        .prefix(".kiln-xfs-proto-")
        .tempfile_in(dir)
        .map_err(FsError::io(dir))?;
    proto_file
        .write_all(proto.text.as_bytes())
        .map_err(FsError::io(proto_file.path()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".kiln-xfs-")
        .tempfile_in(dir)
        .map_err(FsError::io(dir))?;
    scratch
        .as_file()
        .set_len(job.size)
        .map_err(FsError::io(scratch.path()))?;

    let mut cmd = Command::new("mkfs.xfs");
    cmd.current_dir(tree)
        .args(["-q", "-f", "-p"])
        .arg(proto_file.path())
        .args(["-m", &format!("uuid={}", job.uuid.hyphenated())])
        .args(["-L", &job.label])
        .args(&job.opts)
        .arg(scratch.path());
    run_tool(cmd, job)?;

    if !proto.sticky_dirs.is_empty() {
        set_sticky(scratch.path(), &proto.sticky_dirs, job)?;
    }
    copy_sparse(
        scratch.as_file(),
        scratch.path(),
        image_path,
        job.offset,
        job.size,
    )?;
    Ok(XfsLosses {
        hardlink_copies: proto.hardlink_copies,
        dropped_xattrs: proto.dropped_xattrs,
    })
}

/// Add the sticky bit to each directory through xfs_db (commands on stdin).
fn set_sticky(fs_image: &Path, dirs: &[String], job: &FsJob) -> Result<(), FsError> {
    let mut script = String::new();
    for dir in dirs {
        script.push_str(&format!("path {dir}\nprint core.mode\n"));
    }
    let modes = xfs_db(fs_image, &script, false, job)?;
    let mut script = String::new();
    for (dir, line) in dirs
        .iter()
        .zip(modes.lines().filter(|l| l.contains("core.mode")))
    {
        let mode = line
            .rsplit(' ')
            .next()
            .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
            .ok_or_else(|| FsError::Unsupported {
                path: PathBuf::from(dir),
                problem: format!("xfs_db printed {line:?} for its mode"),
            })?;
        script.push_str(&format!(
            "path {dir}\nwrite core.mode 0{:o}\n",
            mode | 0o1000
        ));
    }
    xfs_db(fs_image, &script, true, job)?;
    Ok(())
}

fn xfs_db(fs_image: &Path, script: &str, write: bool, job: &FsJob) -> Result<String, FsError> {
    let mut cmd = Command::new("xfs_db");
    if write {
        cmd.arg("-x");
    }
    cmd.arg(fs_image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| FsError::Spawn {
        program: "xfs_db".into(),
        source,
    })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let script = script.to_string();
    let feeder = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let out = child.wait_with_output().map_err(|source| FsError::Spawn {
        program: "xfs_db".into(),
        source,
    })?;
    let _ = feeder.join();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() || !stderr.trim().is_empty() {
        return Err(FsError::Tool {
            program: "xfs_db".into(),
            fs_type: job.fs_type,
            label: job.label.clone(),
            status: out.status,
            output: stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copy the data regions of `src` into `dst_path` at `offset`, leaving holes as they are.
pub(crate) fn copy_sparse(
    src: &File,
    src_path: &Path,
    dst_path: &Path,
    offset: u64,
    len: u64,
) -> Result<(), FsError> {
    use std::os::fd::AsRawFd;
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .open(dst_path)
        .map_err(FsError::io(dst_path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        // SAFETY: plain lseek on a file descriptor we own.
        let data = unsafe { libc::lseek(src.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left.
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        let (start, end) = (data as u64, (hole.max(data) as u64).min(len));
        let mut at = start;
        while at < end {
            let n = buf.len().min((end - at) as usize);
            src.read_exact_at(&mut buf[..n], at)
                .map_err(FsError::io(src_path))?;
            dst.write_all_at(&buf[..n], offset + at)
                .map_err(FsError::io(dst_path))?;
            at += n as u64;
        }
        pos = end.max(start + 1);
    }
    dst.sync_data().map_err(FsError::io(dst_path))?;
    Ok(())
}

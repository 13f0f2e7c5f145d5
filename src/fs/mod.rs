//! Filesystems made from directory trees, without mounts or loop devices: ext4
//! through `mke2fs -d`, xfs through a `mkfs.xfs` protofile, vfat through kiln's own
//! FAT writer. Each writes straight into a region of the disk image file.

pub mod ext4;
mod ext4_times;
pub mod stage;
pub mod usage;
pub mod vfat;
pub mod xattr;
pub mod xfs;
mod xfs_proto;

use std::path::PathBuf;

/// A filesystem kiln can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
    Vfat,
}

impl FsType {
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
            FsType::Vfat => "vfat",
        }
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FsType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            "vfat" | "fat" => Ok(FsType::Vfat),
            other => Err(format!(
                "unsupported filesystem type {other:?} (ext4, xfs or vfat)"
            )),
        }
    }
}

/// Where and how to make one filesystem.
#[derive(Debug, Clone)]
pub struct FsJob {
    pub fs_type: FsType,
    /// Byte offset of the partition in `image`.
    pub offset: u64,
    /// Partition size in bytes (a multiple of 1 MiB).
    pub size: u64,
    pub label: String,
    /// ext4/xfs filesystem UUID.
    pub uuid: uuid::Uuid,
    /// ext4 directory hash seed.
    pub hash_seed: uuid::Uuid,
    /// vfat volume id.
    pub volume_id: u32,
    /// Extra mkfs arguments from the layout.
    pub opts: Vec<String>,
    /// Unix time written as creation time and the upper bound of every inode time.
    pub timestamp: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed making the {fs_type} filesystem {label:?} ({status}): {output}")]
    Tool {
        program: String,
        fs_type: FsType,
        label: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("{}: {problem}", path.display())]
    Unsupported { path: PathBuf, problem: String },
    #[error("ext4 filesystem {label:?} at byte {offset}: {problem}")]
    Ext4Layout {
        label: String,
        offset: u64,
        problem: String,
    },
    #[error("vfat filesystem {label:?}: {source}")]
    Fat {
        label: String,
        source: crate::format::fat::FatError,
    },
}

impl FsError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FsError {
        let path = path.into();
        move |source| FsError::Io { path, source }
    }
}

/// Run a tool, turning a failure into an error carrying its output.
pub(crate) fn run_tool(mut cmd: std::process::Command, job: &FsJob) -> Result<(), FsError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| FsError::Spawn {
            program: program.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(FsError::Tool {
        program,
        fs_type: job.fs_type,
        label: job.label.clone(),
        status: out.status,
        output: output.trim().to_string(),
    })
}

/// Make the filesystem of `job` in `image` from the directory `tree`, leaving out
/// the subtrees named in `exclude` (paths relative to `tree`, kept as empty
/// directories: they are mount points of other filesystems).
pub fn make_filesystem(
    image: &std::fs::File,
    image_path: &std::path::Path,
    tree: &std::path::Path,
    exclude: &[PathBuf],
    job: &FsJob,
) -> Result<FsNotes, FsError> {
    match job.fs_type {
        FsType::Ext4 => {
            ext4::make_ext4(image, image_path, tree, exclude, job).map(|()| FsNotes::default())
        }
        FsType::Xfs => xfs::make_xfs(image_path, tree, exclude, job)
            .map(|losses| FsNotes { xfs: Some(losses) }),
        FsType::Vfat => vfat::make_vfat(image, tree, exclude, job).map(|()| FsNotes::default()),
    }
}

/// What a filesystem could not keep from its tree (only xfs loses anything).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FsNotes {
    pub xfs: Option<xfs::XfsLosses>,
}

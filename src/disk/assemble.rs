//! Assembly: the partition table and every filesystem written into one sparse raw
//! disk file, without loop devices or mounts. The file appears only when complete.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::layout::TableKind;
use super::mbr::{MbrError, MbrPartition, write_mbr};
use super::plan::{DiskPlan, PlannedPartition};
use super::types::PartitionType;
use crate::format::gpt::{GptError, GptSpec, PartitionSpec, write_gpt};
use crate::fs::{FsError, FsNotes, FsType, make_filesystem};
use crate::util::atomic_file::AtomicFile;
use crate::util::interrupt;

/// GPT attribute bit 2: legacy BIOS bootable (what `flags: [boot]` sets on GPT).
const GPT_LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

/// One partition of the finished disk.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PartitionInfo {
    pub number: u32,
    pub name: String,
    pub offset: u64,
    pub size: u64,
    /// `EFI System (c12a…)` or `0x83`.
    pub partition_type: String,
    pub label: Option<String>,
    /// As /etc/fstab names it (`UUID=` value).
    pub uuid: Option<String>,
    pub fs_type: Option<FsType>,
    pub mount_point: Option<String>,
}

/// The finished disk.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AssembledDisk {
    pub path: PathBuf,
    pub disk_size: u64,
    pub table: TableKind,
    pub partitions: Vec<PartitionInfo>,
    /// Hard links copied and xattrs dropped by xfs, per partition number.
    #[serde(skip)]
    pub notes: Vec<(u32, FsNotes)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Gpt { path: PathBuf, source: GptError },
    #[error("{}: {source}", path.display())]
    Mbr { path: PathBuf, source: MbrError },
    #[error("partition {number} ({name}): {source}")]
    Filesystem {
        number: u32,
        name: String,
        source: FsError,
    },
    #[error("{}: mount point {mount_point}: {problem}", tree.display())]
    Tree {
        tree: PathBuf,
        mount_point: String,
        problem: String,
    },
    #[error(transparent)]
    Interrupted(#[from] interrupt::Interrupted),
}

/// Relative path of a mount point inside the tree (`/boot/efi` → `boot/efi`).
fn relative(mount_point: &str) -> PathBuf {
    PathBuf::from(mount_point.trim_start_matches('/'))
}

/// Mount points of other filesystems below `mount_point`, relative to it.
fn nested_mounts(plan: &DiskPlan, mount_point: &str) -> Vec<PathBuf> {
    let base = relative(mount_point);
    plan.mount_order()
        .into_iter()
        .filter(|(_, _, mp)| *mp != mount_point)
        .filter_map(|(_, _, mp)| relative(mp).strip_prefix(&base).ok().map(Path::to_path_buf))
        .filter(|rel| !rel.as_os_str().is_empty())
        .collect()
}

/// Write the disk described by `plan` to `dest`, filling each mounted filesystem
/// from the matching part of `tree` (the root tree's `boot/efi` goes into the
/// filesystem mounted at /boot/efi, everything else into /). The BIOS boot
/// partition and partitions without a filesystem stay zero.
pub fn assemble(plan: &DiskPlan, tree: &Path, dest: &Path) -> Result<AssembledDisk, AssembleError> {
    let io = |source| AssembleError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let out = AtomicFile::create(dest).map_err(io)?;
    // Tools that need a path reach the unnamed file through /proc.
    let image_path = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        out.file().as_raw_fd()
    ));
    let file: &File = out.file();
    file.set_len(plan.disk_size).map_err(io)?;
    write_table(plan, file, dest)?;

    let empty = tempfile::tempdir().map_err(io)?;
    let mut notes = Vec::new();
    for p in &plan.partitions {
        interrupt::check()?;
        let Some(job) = plan.fs_job(p) else { continue };
        let fs = p.filesystem.as_ref().expect("fs_job implies a filesystem");
        let (source, exclude) = match fs.mount_point.as_deref() {
            Some(mp) => {
                let dir = tree.join(relative(mp));
                let exclude: Vec<PathBuf> = nested_mounts(plan, mp)
                    .into_iter()
                    .filter(|rel| dir.join(rel).is_dir())
                    .collect();
                match std::fs::symlink_metadata(&dir) {
                    Ok(m) if m.is_dir() => (dir, exclude),
                    Ok(_) => {
                        return Err(AssembleError::Tree {
                            tree: tree.to_path_buf(),
                            mount_point: mp.to_string(),
                            problem: "exists but is not a directory".into(),
                        });
                    }
                    Err(_) if mp != "/" => (empty.path().to_path_buf(), Vec::new()),
                    Err(e) => {
                        return Err(AssembleError::Io {
                            path: dir,
                            source: e,
                        });
                    }
                }
            }
            None => (empty.path().to_path_buf(), Vec::new()),
        };
        let made =
            make_filesystem(file, &image_path, &source, &exclude, &job).map_err(|source| {
                AssembleError::Filesystem {
                    number: p.number,
                    name: p.name.clone(),
                    source,
                }
            })?;
        notes.push((p.number, made));
    }
    interrupt::check()?;
    file.sync_all().map_err(io)?;
    out.commit().map_err(io)?;
    Ok(AssembledDisk {
        path: dest.to_path_buf(),
        disk_size: plan.disk_size,
        table: plan.table,
        partitions: plan.partitions.iter().map(describe).collect(),
        notes,
    })
}

fn write_table(plan: &DiskPlan, file: &File, dest: &Path) -> Result<(), AssembleError> {
    match plan.table {
        TableKind::Gpt => {
            let spec = GptSpec {
                disk_guid: plan.disk_guid.expect("GPT plans have a disk GUID"),
                partitions: plan
                    .partitions
                    .iter()
                    .map(|p| PartitionSpec {
                        name: p.name.clone(),
                        type_guid: match p.partition_type {
                            PartitionType::Gpt(g) => g,
                            PartitionType::Mbr(_) => unreachable!("GPT layouts hold GPT types"),
                        },
                        part_guid: p.part_guid,
                        size: Some(p.size),
                        attributes: if p.boot { GPT_LEGACY_BIOS_BOOTABLE } else { 0 },
                    })
                    .collect(),
            };
            let mut handle = file.try_clone().map_err(|source| AssembleError::Io {
                path: dest.to_path_buf(),
                source,
            })?;
            let table = write_gpt(&mut handle, plan.disk_size, &spec).map_err(|source| {
                AssembleError::Gpt {
                    path: dest.to_path_buf(),
                    source,
                }
            })?;
            // The GPT writer lays partitions out itself; it must agree with the plan.
            for (got, want) in table.partitions.iter().zip(&plan.partitions) {
                if got.first_lba * 512 != want.offset || got.sectors() * 512 != want.size {
                    return Err(AssembleError::Gpt {
                        path: dest.to_path_buf(),
                        source: GptError::Verify(format!(
                            "partition {} placed at LBA {} ({} sectors), planned at byte {} ({} bytes)",
                            want.number,
                            got.first_lba,
                            got.sectors(),
                            want.offset,
                            want.size
                        )),
                    });
                }
            }
        }
        TableKind::Mbr => {
            let parts: Vec<MbrPartition> = plan
                .partitions
                .iter()
                .map(|p| MbrPartition {
                    bootable: p.boot,
                    type_id: match p.partition_type {
                        PartitionType::Mbr(id) => id,
                        PartitionType::Gpt(_) => unreachable!("MBR layouts hold MBR types"),
                    },
                    first_lba: p.offset / 512,
                    sectors: p.size / 512,
                })
                .collect();
            write_mbr(file, plan.mbr_disk_id.unwrap_or(0), &parts).map_err(|source| {
                AssembleError::Mbr {
                    path: dest.to_path_buf(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}

fn describe(p: &PlannedPartition) -> PartitionInfo {
    let fs = p.filesystem.as_ref();
    PartitionInfo {
        number: p.number,
        name: p.name.clone(),
        offset: p.offset,
        size: p.size,
        partition_type: p.partition_type.to_string(),
        label: fs.map(|f| f.label.clone()),
        uuid: fs.map(|f| f.fs_uuid_string()),
        fs_type: fs.map(|f| f.fs_type),
        mount_point: fs.and_then(|f| f.mount_point.clone()),
    }
}

//! Planning: from a [`Layout`], the image size and a seed, decide every offset and
//! identifier before anything is written, so the pipeline can put /etc/fstab and
//! the boot loader configuration into the tree first.
//!
//! Partitions start on 1 MiB boundaries; the first starts at 1 MiB and the last
//! ends 1 MiB before the end of the disk (room for the GPT backup). Fixed sizes are
//! rounded up to 1 MiB, percentages are of the space still free after the earlier
//! partitions (as diskimage-builder computes them) and rounded down to 1 MiB.
//! Identifiers come from name-based UUIDs in a namespace made from the seed.

use uuid::Uuid;

use super::layout::{FstabLayout, Layout, LayoutError, TableKind};
use super::size::SizeSpec;
use super::types::PartitionType;
use crate::fs::{FsJob, FsType};

pub const MIB: u64 = 1 << 20;

/// Inputs of a plan besides the layout.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Disk size in bytes; `None` = the layout's `local_loop.size`, else computed
    /// with [`computed_image_size`] from `tree_usage`.
    pub image_size: Option<u64>,
    /// Bytes used by the root tree (see [`crate::fs::usage::disk_usage`]); only
    /// needed when no size is given.
    pub tree_usage: Option<u64>,
    /// DIB_IMAGE_EXTRA_SIZE: bytes added to the tree usage instead of scaling it.
    pub extra_size: Option<u64>,
    /// Every identifier is derived from this.
    pub seed: String,
    /// SOURCE_DATE_EPOCH: creation time of every filesystem, upper bound of file times.
    pub timestamp: i64,
}

/// What a partition will hold, with its identifiers fixed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlannedFilesystem {
    pub name: String,
    pub fs_type: FsType,
    pub label: String,
    /// ext4/xfs UUID; for vfat the volume id spelled as a UUID is not used.
    pub uuid: Uuid,
    pub hash_seed: Uuid,
    pub volume_id: u32,
    pub opts: Vec<String>,
    pub mount_point: Option<String>,
    #[serde(skip)]
    pub fstab: Option<FstabLayout>,
}

impl PlannedFilesystem {
    /// How /etc/fstab and boot loaders name it: `UUID=…` (vfat: `UUID=ABCD-1234`).
    pub fn fs_uuid_string(&self) -> String {
        match self.fs_type {
            FsType::Vfat => format!(
                "{:04X}-{:04X}",
                self.volume_id >> 16,
                self.volume_id & 0xFFFF
            ),
            _ => self.uuid.hyphenated().to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlannedPartition {
    /// 1-based (what Linux calls sdaN).
    pub number: u32,
    pub name: String,
    #[serde(skip)]
    pub partition_type: PartitionType,
    /// Byte offset in the disk.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    pub boot: bool,
    /// GPT only.
    pub part_guid: Option<Uuid>,
    pub filesystem: Option<PlannedFilesystem>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DiskPlan {
    pub image_name: String,
    pub table: TableKind,
    pub disk_size: u64,
    /// GPT only.
    pub disk_guid: Option<Uuid>,
    /// MBR only: the 32-bit disk signature.
    pub mbr_disk_id: Option<u32>,
    pub partitions: Vec<PlannedPartition>,
    pub timestamp: i64,
}

/// The image size diskimage-builder picks when DIB_IMAGE_SIZE is unset: the tree's
/// disk usage divided by 0.6 (or plus `extra_size`), plus 64 MiB of journal when the
/// root is ext4, plus the fixed-size partitions (DIB adds 525 MiB for the ESP of
/// block-device-efi) and 2 MiB for the table and alignment; rounded up to 1 MiB.
pub fn computed_image_size(layout: &Layout, tree_usage: u64, extra_size: Option<u64>) -> u64 {
    let data = match extra_size {
        Some(extra) => tree_usage.saturating_add(extra),
        None => (tree_usage as f64 / 0.6).ceil() as u64,
    };
    let journal = match layout.root_partition().and_then(|p| p.filesystem.as_ref()) {
        Some(fs) if fs.fs_type == FsType::Ext4 => 64 * MIB,
        _ => 0,
    };
    let fixed: u64 = layout
        .partitions
        .iter()
        .map(|p| match p.size {
            SizeSpec::Absolute(bytes) => bytes.div_ceil(MIB) * MIB,
            SizeSpec::Percent(_) => 0,
        })
        .sum();
    let total = data
        .saturating_add(journal)
        .saturating_add(fixed)
        .saturating_add(2 * MIB);
    total.div_ceil(MIB).saturating_mul(MIB)
}

/// A name-based UUID in the namespace of the seed.
fn derive(namespace: &Uuid, what: &str) -> Uuid {
    Uuid::new_v5(namespace, what.as_bytes())
}

impl DiskPlan {
    /// Place every partition of `layout` and fix every identifier.
    pub fn new(layout: &Layout, opts: &PlanOptions) -> Result<DiskPlan, LayoutError> {
        let requested = match (opts.image_size, layout.image_size, opts.tree_usage) {
            (Some(size), _, _) | (None, Some(size), _) => size,
            (None, None, Some(usage)) => computed_image_size(layout, usage, opts.extra_size),
            (None, None, None) => {
                return Err(LayoutError {
                    key: "local_loop.size".into(),
                    problem: "no image size given and no tree to compute it from".into(),
                });
            }
        };
        let disk_size = requested.div_ceil(MIB).saturating_mul(MIB);
        if layout.table == TableKind::Mbr && disk_size / 512 > u32::MAX as u64 {
            return Err(LayoutError {
                key: "partitioning.label".into(),
                problem: format!(
                    "an MBR addresses at most 2 TiB; the image is {disk_size} bytes, use gpt"
                ),
            });
        }
        let namespace = derive(
            &Uuid::NAMESPACE_OID,
            &format!("kiln-disk-seed:{}", opts.seed),
        );
        let disk_guid = (layout.table == TableKind::Gpt).then(|| derive(&namespace, "gpt-disk"));
        let mbr_disk_id = (layout.table == TableKind::Mbr)
            .then(|| derive(&namespace, "mbr-disk-id").as_u128() as u32);

        let end = disk_size.saturating_sub(MIB);
        let mut next = MIB;
        let mut partitions = Vec::with_capacity(layout.partitions.len());
        for (index, p) in layout.partitions.iter().enumerate() {
            let number = index as u32 + 1;
            let bad = |problem: String| LayoutError {
                key: format!("{}.size", p.key),
                problem,
            };
            let free = end.saturating_sub(next);
            let size = match p.size {
                SizeSpec::Absolute(bytes) => bytes.div_ceil(MIB) * MIB,
                SizeSpec::Percent(pct) => ((free as f64 * pct / 100.0) as u64) / MIB * MIB,
            };
            if size == 0 || size > free {
                return Err(bad(format!(
                    "partition {:?} needs {} MiB but only {} MiB are free at offset {} MiB of a {} MiB image",
                    p.name,
                    size.div_ceil(MIB).max(1),
                    free / MIB,
                    next / MIB,
                    disk_size / MIB
                )));
            }
            let part_guid =
                disk_guid.map(|d| crate::format::gpt::derived_partition_guid(&d, number));
            let filesystem = p.filesystem.as_ref().map(|fs| {
                let what = |kind: &str| derive(&namespace, &format!("{kind}:{}", fs.name));
                PlannedFilesystem {
                    name: fs.name.clone(),
                    fs_type: fs.fs_type,
                    label: fs.label.clone(),
                    uuid: fs.uuid.unwrap_or_else(|| what("fs-uuid")),
                    hash_seed: what("ext4-hash-seed"),
                    volume_id: what("fat-volume-id").as_u128() as u32,
                    opts: fs.opts.clone(),
                    mount_point: fs.mount.as_ref().map(|m| m.mount_point.clone()),
                    fstab: fs.mount.as_ref().and_then(|m| m.fstab.clone()),
                }
            });
            partitions.push(PlannedPartition {
                number,
                name: p.name.clone(),
                partition_type: p.partition_type,
                offset: next,
                size,
                boot: p.boot,
                part_guid,
                filesystem,
            });
            next += size;
        }
        Ok(DiskPlan {
            image_name: layout.image_name.clone(),
            table: layout.table,
            disk_size,
            disk_guid,
            mbr_disk_id,
            partitions,
            timestamp: opts.timestamp,
        })
    }

    /// The partition mounted at `/`.
    pub fn root(&self) -> &PlannedPartition {
        self.mounted_at("/")
            .expect("a layout always has a root filesystem")
    }

    /// The partition mounted at `mount_point`.
    pub fn mounted_at(&self, mount_point: &str) -> Option<&PlannedPartition> {
        self.partitions.iter().find(|p| {
            p.filesystem
                .as_ref()
                .is_some_and(|f| f.mount_point.as_deref() == Some(mount_point))
        })
    }

    /// Mounted filesystems, parents before children (sorted by mount point, as DIB mounts them).
    pub fn mount_order(&self) -> Vec<(&PlannedPartition, &PlannedFilesystem, &str)> {
        let mut mounted: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|p| {
                let fs = p.filesystem.as_ref()?;
                Some((p, fs, fs.mount_point.as_deref()?))
            })
            .collect();
        mounted.sort_by(|a, b| a.2.cmp(b.2));
        mounted
    }

    /// The text of /etc/fstab: one `UUID=… MOUNT TYPE OPTIONS DUMP PASS` line per
    /// mounted filesystem that has an fstab entry, in mount order.
    pub fn fstab(&self) -> String {
        let mut text = String::new();
        for (_, fs, mount_point) in self.mount_order() {
            if let Some(entry) = &fs.fstab {
                text.push_str(&format!(
                    "UUID={} {} {} {} {} {}\n",
                    fs.fs_uuid_string(),
                    mount_point,
                    fs.fs_type,
                    entry.options,
                    entry.dump_freq,
                    entry.fsck_passno
                ));
            }
        }
        text
    }

    /// The mkfs job for partition `p`.
    pub fn fs_job(&self, p: &PlannedPartition) -> Option<FsJob> {
        let fs = p.filesystem.as_ref()?;
        Some(FsJob {
            fs_type: fs.fs_type,
            offset: p.offset,
            size: p.size,
            label: fs.label.clone(),
            uuid: fs.uuid,
            hash_seed: fs.hash_seed,
            volume_id: fs.volume_id,
            opts: fs.opts.clone(),
            timestamp: self.timestamp,
        })
    }
}

//! Geometry: which FAT type, sectors per cluster, reserved sectors, FAT size, root
//! directory size, and where each region starts.
//!
//! Cluster sizes follow what mkfs.fat picks for a size: FAT16 starts at 2 KiB clusters
//! and doubles them until the cluster count fits; FAT32 uses Microsoft's table (512 B up
//! to 260 MiB, 4 KiB up to 8 GiB, 8 KiB up to 16 GiB, 16 KiB up to 32 GiB, 32 KiB
//! beyond). If that gives too few clusters for the type, clusters are halved down to
//! one sector. The data area is aligned to the cluster size by padding the reserved
//! sectors.

use super::{FatError, FatType, SECTOR_SIZE};

/// Cluster counts each type allows (fewer than 4085 would be FAT12).
const FAT16_CLUSTERS: (u64, u64) = (4085, 65_524);
const FAT32_CLUSTERS: (u64, u64) = (65_525, 0x0FFF_FFF5);

/// Largest cluster: 64 sectors = 32 KiB (larger ones are not portable).
const MAX_SECTORS_PER_CLUSTER: u64 = 64;

/// Root directory entries on FAT16 unless the tree needs more (mkfs.fat's default).
const FAT16_ROOT_ENTRIES: u64 = 512;
/// Most FAT16 root entries: a 16-bit count that fills whole sectors.
const FAT16_MAX_ROOT_ENTRIES: u64 = 65_520;

/// From this size on, automatic choice prefers FAT32 (like mkfs.fat).
const FAT32_FROM: u64 = 512 << 20;

const ENTRIES_PER_SECTOR: u64 = SECTOR_SIZE / 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub fat_type: FatType,
    pub total_sectors: u32,
    pub sectors_per_cluster: u32,
    pub reserved_sectors: u32,
    /// Sectors of one FAT (there are two).
    pub fat_sectors: u32,
    /// FAT16 root directory entries; 0 on FAT32.
    pub root_entries: u32,
    /// Data clusters, numbered 2..clusters+2.
    pub clusters: u32,
}

pub const NUM_FATS: u32 = 2;

impl Layout {
    /// Pick the layout for a filesystem of `size` bytes whose root directory needs
    /// `root_slots` 32-byte entries (only FAT16 cares: its root is a fixed region).
    pub fn choose(size: u64, wanted: Option<FatType>, root_slots: u64) -> Result<Layout, FatError> {
        let max = u64::from(u32::MAX) * SECTOR_SIZE;
        if size > max {
            return Err(FatError::SizeTooLarge { size, max });
        }
        let total = size / SECTOR_SIZE;
        match wanted {
            Some(fat_type) => Self::for_type(total, fat_type, root_slots).map_err(|reason| {
                FatError::SizeUnsupported {
                    size,
                    fat_type,
                    reason,
                }
            }),
            None => {
                let order = if size >= FAT32_FROM {
                    [FatType::Fat32, FatType::Fat16]
                } else {
                    [FatType::Fat16, FatType::Fat32]
                };
                let first = match Self::for_type(total, order[0], root_slots) {
                    Ok(layout) => return Ok(layout),
                    Err(reason) => reason,
                };
                let second = match Self::for_type(total, order[1], root_slots) {
                    Ok(layout) => return Ok(layout),
                    Err(reason) => reason,
                };
                let (fat16, fat32) = if order[0] == FatType::Fat16 {
                    (first, second)
                } else {
                    (second, first)
                };
                Err(FatError::NoFatTypeFits { size, fat16, fat32 })
            }
        }
    }

    /// The layout of `fat_type` on `total` sectors, or why there is none.
    fn for_type(total: u64, fat_type: FatType, root_slots: u64) -> Result<Layout, String> {
        let root_entries = match fat_type {
            FatType::Fat16 => {
                let needed = root_slots.div_ceil(ENTRIES_PER_SECTOR) * ENTRIES_PER_SECTOR;
                if needed > FAT16_MAX_ROOT_ENTRIES {
                    return Err(format!(
                        "the root directory needs {root_slots} entries and a FAT16 root holds at most {FAT16_MAX_ROOT_ENTRIES}"
                    ));
                }
                needed.max(FAT16_ROOT_ENTRIES)
            }
            FatType::Fat32 => 0,
        };
        let (min, max) = match fat_type {
            FatType::Fat16 => FAT16_CLUSTERS,
            FatType::Fat32 => FAT32_CLUSTERS,
        };
        let mut spc = default_sectors_per_cluster(fat_type, total);
        // Cluster counts roughly halve when clusters double, so at most one direction
        // is ever taken; the bound only guards the loop.
        for _ in 0..16 {
            let layout = geometry(total, fat_type, spc, root_entries);
            let clusters = u64::from(layout.map_or(0, |l| l.clusters));
            let bytes = spc * SECTOR_SIZE;
            if clusters > max {
                if spc < MAX_SECTORS_PER_CLUSTER {
                    spc *= 2;
                    continue;
                }
                return Err(format!(
                    "too large: {fat_type} allows at most {max} clusters and even {bytes}-byte clusters give {clusters}"
                ));
            }
            if clusters < min {
                if spc > 1 {
                    spc /= 2;
                    continue;
                }
                return Err(format!(
                    "too small: {fat_type} needs at least {min} clusters and only {clusters} clusters of {bytes} bytes fit"
                ));
            }
            if let Some(layout) = layout {
                return Ok(layout);
            }
        }
        Err(format!("no cluster size gives a valid {fat_type} layout"))
    }

    pub fn cluster_bytes(&self) -> u32 {
        self.sectors_per_cluster * SECTOR_SIZE as u32
    }

    /// Bytes of one FAT entry.
    pub fn entry_bytes(&self) -> u64 {
        match self.fat_type {
            FatType::Fat16 => 2,
            FatType::Fat32 => 4,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_sectors) * SECTOR_SIZE
    }

    pub fn reserved_bytes(&self) -> u64 {
        u64::from(self.reserved_sectors) * SECTOR_SIZE
    }

    pub fn fat_bytes(&self) -> u64 {
        u64::from(self.fat_sectors) * SECTOR_SIZE
    }

    /// Byte offset (inside the filesystem) of FAT number `index`.
    pub fn fat_offset(&self, index: u32) -> u64 {
        self.reserved_bytes() + u64::from(index) * self.fat_bytes()
    }

    /// Byte offset of the FAT16 root directory region.
    pub fn root_offset(&self) -> u64 {
        self.fat_offset(NUM_FATS)
    }

    pub fn root_bytes(&self) -> u64 {
        u64::from(self.root_entries) * 32
    }

    /// Byte offset of cluster 2, the first data cluster.
    pub fn data_offset(&self) -> u64 {
        self.root_offset() + self.root_bytes()
    }

    /// Byte offset of data cluster `cluster` (>= 2).
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset() + u64::from(cluster.saturating_sub(2)) * u64::from(self.cluster_bytes())
    }
}

fn default_sectors_per_cluster(fat_type: FatType, total: u64) -> u64 {
    match fat_type {
        FatType::Fat16 => 4,
        FatType::Fat32 => {
            let mib = (total * SECTOR_SIZE) >> 20;
            match mib {
                m if m > 32 * 1024 => 64,
                m if m > 16 * 1024 => 32,
                m if m > 8 * 1024 => 16,
                m if m > 260 => 8,
                _ => 1,
            }
        }
    }
}

/// The layout with `spc` sectors per cluster: the smallest FAT that maps every
/// cluster, data area aligned to the cluster size. `None` if nothing fits at all.
fn geometry(total: u64, fat_type: FatType, spc: u64, root_entries: u64) -> Option<Layout> {
    let (base_reserved, entry_bytes) = match fat_type {
        FatType::Fat16 => (1, 2),
        FatType::Fat32 => (32, 4),
    };
    let root_sectors = root_entries / ENTRIES_PER_SECTOR;
    let avail = total.checked_sub(base_reserved + root_sectors)?;
    let nfats = u64::from(NUM_FATS);
    // Does a FAT of `f` sectors map every cluster left after the FATs take their room?
    let fits = |f: u64| {
        let clusters = avail.saturating_sub(nfats * f) / spc;
        (clusters + 2) * entry_bytes <= f * SECTOR_SIZE
    };
    let mut fat =
        ((avail + 2 * spc) * entry_bytes).div_ceil(SECTOR_SIZE * spc + nfats * entry_bytes);
    fat = fat.max(1);
    while !fits(fat) {
        fat += 1;
    }
    while fat > 1 && fits(fat - 1) {
        fat -= 1;
    }
    let unaligned = base_reserved + nfats * fat + root_sectors;
    let pad = (spc - unaligned % spc) % spc;
    let data_start = unaligned + pad;
    let clusters = total.checked_sub(data_start)? / spc;
    Some(Layout {
        fat_type,
        total_sectors: u32::try_from(total).ok()?,
        sectors_per_cluster: u32::try_from(spc).ok()?,
        reserved_sectors: u32::try_from(base_reserved + pad).ok()?,
        fat_sectors: u32::try_from(fat).ok()?,
        root_entries: u32::try_from(root_entries).ok()?,
        clusters: u32::try_from(clusters).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn layout(size: u64, t: Option<FatType>) -> Layout {
        Layout::choose(size, t, 1).unwrap()
    }

    #[test]
    fn fat16_like_mkfs() {
        // mkfs.fat 4.2 on 64 MiB: 4 sectors/cluster, 4 reserved, 128 sectors/FAT, 512 root entries.
        let l = layout(64 * MIB, None);
        assert_eq!(l.fat_type, FatType::Fat16);
        assert_eq!(
            (
                l.sectors_per_cluster,
                l.reserved_sectors,
                l.fat_sectors,
                l.root_entries
            ),
            (4, 4, 128, 512)
        );
        assert_eq!(layout(256 * MIB, None).sectors_per_cluster, 8);
        assert_eq!(layout(300 * MIB, None).sectors_per_cluster, 16);
        assert_eq!(
            layout(600 * MIB, Some(FatType::Fat16)).sectors_per_cluster,
            32
        );
    }

    #[test]
    fn fat32_like_mkfs() {
        let l = layout(600 * MIB, None);
        assert_eq!(l.fat_type, FatType::Fat32);
        assert_eq!(l.sectors_per_cluster, 8);
        assert_eq!(layout(512 * MIB, None).fat_type, FatType::Fat32);
        assert_eq!(layout(511 * MIB, None).fat_type, FatType::Fat16);
        assert_eq!(
            layout(64 * MIB, Some(FatType::Fat32)).sectors_per_cluster,
            1
        );
        assert_eq!(layout(9 * 1024 * MIB, None).sectors_per_cluster, 16);
        assert_eq!(layout(40 * 1024 * MIB, None).sectors_per_cluster, 64);
    }

    #[test]
    fn every_layout_is_consistent() {
        for size in (2 * MIB..3 * MIB)
            .step_by(4096)
            .chain((30 * MIB..40 * MIB).step_by(65536))
            .chain([
                511 * MIB,
                2047 * MIB,
                4096 * MIB,
                2 * 1024 * 1024 * MIB - 512,
            ])
        {
            for t in [None, Some(FatType::Fat16), Some(FatType::Fat32)] {
                let Ok(l) = Layout::choose(size, t, 600) else {
                    continue;
                };
                let spc = u64::from(l.sectors_per_cluster);
                let data = l.data_offset() / SECTOR_SIZE;
                assert_eq!(data % spc, 0, "{size} {t:?}");
                assert_eq!(u64::from(l.clusters), (size / SECTOR_SIZE - data) / spc);
                assert!((u64::from(l.clusters) + 2) * l.entry_bytes() <= l.fat_bytes());
                let (min, max) = match l.fat_type {
                    FatType::Fat16 => FAT16_CLUSTERS,
                    FatType::Fat32 => FAT32_CLUSTERS,
                };
                assert!((min..=max).contains(&u64::from(l.clusters)));
                assert_eq!(
                    l.root_entries,
                    if l.fat_type == FatType::Fat16 { 608 } else { 0 }
                );
            }
        }
    }

    #[test]
    fn limits() {
        assert!(Layout::choose(MIB, None, 1).is_err());
        assert!(Layout::choose(16 * MIB, Some(FatType::Fat32), 1).is_err());
        assert!(Layout::choose(4096 * MIB, Some(FatType::Fat16), 1).is_err());
        assert!(Layout::choose(3 * 1024 * 1024 * MIB, None, 1).is_err());
        // A root too big for FAT16 moves an automatic choice to FAT32.
        let l = Layout::choose(100 * MIB, None, 70_000).unwrap();
        assert_eq!(l.fat_type, FatType::Fat32);
    }
}

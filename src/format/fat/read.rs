//! Read-only FAT12/16/32, enough to read a config drive without a vfat
//! kernel driver: the volume label and files by path (long names included).
//! Every offset, cluster number and chain comes from untrusted bytes and is
//! checked before use.

use std::io::{Read, Seek, SeekFrom};

/// Larger files are refused: a config drive holds a few small JSON files.
pub const MAX_FILE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FatReadError {
    #[error("reading the volume: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a FAT filesystem: {0}")]
    NotFat(&'static str),
    #[error("cluster {cluster} is outside the volume or its chain is broken")]
    BadCluster { cluster: u32 },
    #[error("{path}: {size} bytes is larger than a config drive file may be")]
    TooLarge { path: String, size: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatKind {
    Fat12,
    Fat16,
    Fat32,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    is_dir: bool,
    first_cluster: u32,
    size: u64,
}

enum Dir {
    /// FAT12/16 root: a fixed region.
    FixedRoot,
    Chain(u32),
}

pub struct FatVolume<R> {
    dev: R,
    kind: FatKind,
    cluster_bytes: u64,
    fat_offset: u64,
    root_offset: u64,
    root_bytes: u64,
    data_offset: u64,
    clusters: u32,
    root_cluster: u32,
    bpb_label: String,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn label_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).trim_end().to_string()
}

impl<R: Read + Seek> FatVolume<R> {
    pub fn open(mut dev: R) -> Result<Self, FatReadError> {
        let mut boot = [0u8; 512];
        dev.seek(SeekFrom::Start(0))?;
        dev.read_exact(&mut boot)?;
        if boot[510..512] != [0x55, 0xAA] {
            return Err(FatReadError::NotFat("no boot sector signature"));
        }
        let bytes_per_sector = u64::from(le16(&boot, 11));
        let sectors_per_cluster = u64::from(boot[13]);
        let reserved = u64::from(le16(&boot, 14));
        let fats = u64::from(boot[16]);
        let root_entries = u64::from(le16(&boot, 17));
        let total = match le16(&boot, 19) {
            0 => u64::from(le32(&boot, 32)),
            n => u64::from(n),
        };
        let fat_sectors = match le16(&boot, 22) {
            0 => u64::from(le32(&boot, 36)),
            n => u64::from(n),
        };
        if ![512, 1024, 2048, 4096].contains(&bytes_per_sector)
            || !sectors_per_cluster.is_power_of_two()
            || reserved == 0
            || fats == 0
            || fat_sectors == 0
        {
            return Err(FatReadError::NotFat("implausible BIOS parameter block"));
        }
        let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        if data_sector >= total {
            return Err(FatReadError::NotFat("no room for data clusters"));
        }
        let clusters = (total - data_sector) / sectors_per_cluster;
        let kind = match clusters {
            0..4085 => FatKind::Fat12,
            4085..65525 => FatKind::Fat16,
            _ => FatKind::Fat32,
        };
        let (root_cluster, label_at) = match kind {
            FatKind::Fat32 => (le32(&boot, 44), 71),
            _ => (0, 43),
        };
        if kind == FatKind::Fat32 && root_entries != 0 {
            return Err(FatReadError::NotFat("FAT32 with a fixed root directory"));
        }
        Ok(FatVolume {
            dev,
            kind,
            cluster_bytes: bytes_per_sector * sectors_per_cluster,
            fat_offset: reserved * bytes_per_sector,
            root_offset: (reserved + fats * fat_sectors) * bytes_per_sector,
            root_bytes: root_sectors * bytes_per_sector,
            data_offset: data_sector * bytes_per_sector,
            clusters: u32::try_from(clusters).unwrap_or(u32::MAX),
            root_cluster,
            bpb_label: label_text(&boot[label_at..label_at + 11]),
        })
    }

    pub fn kind(&self) -> FatKind {
        self.kind
    }

    /// The volume label: the root directory's label entry, which tools
    /// update, else the boot sector copy.
    pub fn label(&mut self) -> Result<String, FatReadError> {
        let raw = self.read_dir_bytes(&Dir::FixedRoot.or_root(self.kind, self.root_cluster))?;
        for entry in raw.chunks_exact(32) {
            if entry[0] == 0 {
                break;
            }
            if entry[0] != 0xE5 && entry[11] & 0x1F == 0x08 {
                return Ok(label_text(&entry[..11]));
            }
        }
        Ok(self.bpb_label.clone())
    }

    fn next_cluster(&mut self, cluster: u32) -> Result<Option<u32>, FatReadError> {
        let (offset, width) = match self.kind {
            FatKind::Fat12 => (u64::from(cluster) * 3 / 2, 2),
            FatKind::Fat16 => (u64::from(cluster) * 2, 2),
            FatKind::Fat32 => (u64::from(cluster) * 4, 4),
        };
        let mut buf = [0u8; 4];
        self.dev.seek(SeekFrom::Start(self.fat_offset + offset))?;
        self.dev.read_exact(&mut buf[..width])?;
        let (value, end) = match self.kind {
            FatKind::Fat12 => {
                let v = u32::from(le16(&buf, 0));
                (if cluster % 2 == 1 { v >> 4 } else { v & 0xFFF }, 0xFF8)
            }
            FatKind::Fat16 => (u32::from(le16(&buf, 0)), 0xFFF8),
            FatKind::Fat32 => (le32(&buf, 0) & 0x0FFF_FFFF, 0x0FFF_FFF8),
        };
        Ok(if value >= end { None } else { Some(value) })
    }

    fn chain(&mut self, first: u32) -> Result<Vec<u32>, FatReadError> {
        let mut chain = Vec::new();
        let mut cluster = Some(first);
        while let Some(c) = cluster {
            if c < 2 || c - 2 >= self.clusters || chain.len() as u32 >= self.clusters {
                return Err(FatReadError::BadCluster { cluster: c });
            }
            chain.push(c);
            cluster = self.next_cluster(c)?;
        }
        Ok(chain)
    }

    fn read_chain(&mut self, first: u32, limit: u64) -> Result<Vec<u8>, FatReadError> {
        let mut out = Vec::new();
        for c in self.chain(first)? {
            if out.len() as u64 >= limit {
                break;
            }
            let offset = self.data_offset + u64::from(c - 2) * self.cluster_bytes;
            let start = out.len();
            out.resize(start + self.cluster_bytes as usize, 0);
            self.dev.seek(SeekFrom::Start(offset))?;
            self.dev.read_exact(&mut out[start..])?;
        }
        Ok(out)
    }

    fn read_dir_bytes(&mut self, dir: &Dir) -> Result<Vec<u8>, FatReadError> {
        match dir {
            Dir::FixedRoot => {
                let mut raw = vec![0u8; self.root_bytes as usize];
                self.dev.seek(SeekFrom::Start(self.root_offset))?;
                self.dev.read_exact(&mut raw)?;
                Ok(raw)
            }
            Dir::Chain(first) => self.read_chain(*first, u64::MAX),
        }
    }

    fn entries(&mut self, dir: &Dir) -> Result<Vec<Entry>, FatReadError> {
        let raw = self.read_dir_bytes(dir)?;
        Ok(parse_entries(&raw, self.kind == FatKind::Fat32))
    }

    /// A file's bytes by `/`-separated path (names compared without case, as
    /// FAT does); None when it does not exist.
    pub fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>, FatReadError> {
        let mut dir = Dir::FixedRoot.or_root(self.kind, self.root_cluster);
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let entries = self.entries(&dir)?;
            let Some(entry) = entries
                .into_iter()
                .find(|e| e.name.eq_ignore_ascii_case(part))
            else {
                return Ok(None);
            };
            let last = i + 1 == parts.len();
            match (last, entry.is_dir) {
                (false, true) => dir = Dir::Chain(entry.first_cluster),
                (true, false) => {
                    if entry.size > MAX_FILE {
                        return Err(FatReadError::TooLarge {
                            path: path.to_string(),
                            size: entry.size,
                        });
                    }
                    if entry.size == 0 {
                        return Ok(Some(Vec::new()));
                    }
                    let mut bytes = self.read_chain(entry.first_cluster, entry.size)?;
                    if (bytes.len() as u64) < entry.size {
                        return Err(FatReadError::BadCluster {
                            cluster: entry.first_cluster,
                        });
                    }
                    bytes.truncate(entry.size as usize);
                    return Ok(Some(bytes));
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }
}

impl Dir {
    fn or_root(self, kind: FatKind, root_cluster: u32) -> Dir {
        match kind {
            FatKind::Fat32 => Dir::Chain(root_cluster),
            _ => self,
        }
    }
}

fn short_name(entry: &[u8]) -> String {
    let mut base = entry[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let mut base = String::from_utf8_lossy(&base).trim_end().to_string();
    let mut ext = String::from_utf8_lossy(&entry[8..11])
        .trim_end()
        .to_string();
    // Windows NT keeps all-lowercase 8.3 names as flags in byte 12.
    if entry[12] & 0x08 != 0 {
        base = base.to_lowercase();
    }
    if entry[12] & 0x10 != 0 {
        ext = ext.to_lowercase();
    }
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

fn short_checksum(entry: &[u8]) -> u8 {
    entry[..11]
        .iter()
        .fold(0u8, |sum, b| sum.rotate_right(1).wrapping_add(*b))
}

fn parse_entries(raw: &[u8], fat32: bool) -> Vec<Entry> {
    let mut entries = Vec::new();
    // Long-name pieces seen so far: (sequence number, checksum, UTF-16 units).
    let mut long: Vec<(u8, u8, Vec<u16>)> = Vec::new();
    for e in raw.chunks_exact(32) {
        match e[0] {
            0 => break,
            0xE5 => {
                long.clear();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3F == 0x0F {
            let units = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                .iter()
                .map(|&at| le16(e, at))
                .collect();
            long.push((e[0] & 0x1F, e[13], units));
            continue;
        }
        if attr & 0x08 != 0 {
            long.clear();
            continue;
        }
        let checksum = short_checksum(e);
        // Pieces are stored last first, numbered down to 1.
        let valid_long = !long.is_empty()
            && long.iter().all(|(_, sum, _)| *sum == checksum)
            && long
                .iter()
                .rev()
                .enumerate()
                .all(|(i, (seq, _, _))| usize::from(*seq) == i + 1);
        let name = if valid_long {
            let units: Vec<u16> = long
                .iter()
                .rev()
                .flat_map(|(_, _, u)| u.iter().copied())
                .take_while(|&u| u != 0)
                .collect();
            String::from_utf16_lossy(&units)
        } else {
            short_name(e)
        };
        long.clear();
        if name == "." || name == ".." {
            continue;
        }
        entries.push(Entry {
            name,
            is_dir: attr & 0x10 != 0,
            // The high half is only meaningful on FAT32.
            first_cluster: (u32::from(if fat32 { le16(e, 20) } else { 0 }) << 16)
                | u32::from(le16(e, 26)),
            size: u64::from(le32(e, 28)),
        });
    }
    entries
}

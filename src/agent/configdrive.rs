//! Writing the config drive partition at the end of the deployed disk.
//!
//! After the image is on the disk, [`write_config_drive`] builds a FAT filesystem
//! labelled `config-2` holding [`ConfigDriveContent`] (the smallest that fits, at
//! most 64 MiB) and adds a partition for it at the end of the disk:
//!
//! * GPT (whole-disk images usually are, and smaller than the disk): the backup
//!   header and entries move to the real end of the disk, the partition is added
//!   in the first free entry, named `config-2` with the basic data type.
//! * MBR: a primary partition (FAT16/32 LBA type) in a free slot, within the 2 TiB
//!   an MBR can address.
//! * No partition table: an error, as IPA does, because nothing could find a
//!   filesystem hidden at the end of an unpartitioned disk.
//!
//! A `config-2` partition already on the disk (a redeploy) is replaced. The
//! filesystem is written before the table that points at it, and the same inputs
//! give the same bytes (partition GUID and volume serial derive from the node UUID).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use crate::format::configdrive::{ConfigDriveContent, ContentError};
use crate::format::fat::{FatError, FatOptions, FatType, write_fat};
use crate::format::gpt::{GptError, MICROSOFT_BASIC_DATA, read_gpt};
use crate::format::{BlockSource, Extent, ExtentKind};

/// Filesystem label and GPT partition name cloud-init and `kiln config` look for.
pub const CONFIG_DRIVE_LABEL: &str = "config-2";
/// Largest config drive (as IPA and Nova limit it).
pub const MAX_CONFIG_DRIVE_SIZE: u64 = 64 << 20;

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const ALIGN_SECTORS: u64 = MIB / SECTOR;
/// MBR partitions end within the first 2^32 sectors.
const MBR_MAX_SECTORS: u64 = 1 << 32;
const GPT_HEADER_SIZE: usize = 92;
const GPT_NAME_OFFSET: usize = 56;
const GPT_NAME_BYTES: usize = 72;
/// Namespace of the config drive partition GUIDs (a v5 UUID of the node UUID in it).
const PARTITION_GUID_NAMESPACE: Uuid = Uuid::from_u128(0x6b696c6e_6366_6432_8000_636f6e666967);

/// Which table the partition was added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
}

/// What [`write_config_drive`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigDriveSummary {
    pub table: TableKind,
    /// 1-based partition number (sdaN).
    pub partition: u32,
    /// Byte offset and size of the partition (= the filesystem).
    pub offset: u64,
    pub size: u64,
    /// A config-2 partition was already there and was replaced.
    pub replaced: bool,
    #[serde(skip)]
    pub fat_type: FatType,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("{disk}: {what}: {source}")]
    Io {
        disk: String,
        what: String,
        source: io::Error,
    },
    #[error("staging the config drive files in {}: {source}", path.display())]
    Stage { path: PathBuf, source: io::Error },
    #[error("config drive files do not fit a FAT filesystem of {max} bytes: {source}", max = MAX_CONFIG_DRIVE_SIZE)]
    TooLarge { source: FatError },
    #[error("building the config drive filesystem: {0}")]
    Fat(#[source] FatError),
    #[error("{disk}: reading the partition table: {source}")]
    Gpt { disk: String, source: GptError },
    #[error(
        "{disk}: the primary GPT header is damaged; refusing to write a config drive onto a disk whose image did not arrive intact"
    )]
    DamagedGpt { disk: String },
    #[error(
        "{disk}: no partition table (neither GPT nor MBR); the config drive needs one to be found (as in IPA, images without a table get no config drive)"
    )]
    NoPartitionTable { disk: String },
    #[error("{disk}: no free partition entry for the config drive ({table})")]
    NoFreeSlot { disk: String, table: &'static str },
    #[error(
        "{disk}: no room for a {size}-byte config drive: the last partition ends at byte {used_end} and the usable space ends at byte {usable_end}"
    )]
    NoRoom {
        disk: String,
        size: u64,
        used_end: u64,
        usable_end: u64,
    },
}

/// Random access to the disk a config drive goes on: an image file or block
/// device ([`DiskFile`]), or any other target (an iSCSI LUN written by the
/// conductor) that can read and write bytes at offsets.
pub trait DiskIo: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make everything written durable.
    fn flush(&self) -> io::Result<()>;
}

/// A disk image file or a block device, opened for reading and writing.
pub struct DiskFile {
    file: File,
    size: u64,
    is_block_device: bool,
}

impl DiskFile {
    pub fn open(path: &Path) -> io::Result<DiskFile> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let is_block_device = file.metadata()?.file_type().is_block_device();
        // Block devices report length 0 in their metadata; the end is where seeking says.
        let size = file.seek(SeekFrom::End(0))?;
        Ok(DiskFile {
            file,
            size,
            is_block_device,
        })
    }

    /// Ask the kernel to re-read the partition table of a block device (best
    /// effort: a busy disk keeps the old view until reboot, which is when it
    /// matters). Nothing to do for a file.
    pub fn reread_partitions(&self) {
        if self.is_block_device {
            const BLKRRPART: libc::c_ulong = 0x125F;
            // SAFETY: BLKRRPART takes no argument; the descriptor is an open block device.
            let _ = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKRRPART as _) };
        }
    }
}

impl DiskIo for DiskFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// Write the config drive onto the disk at `path` (a block device or an image
/// file) and return where it went. See the module documentation.
pub fn write_config_drive(
    path: &Path,
    content: &ConfigDriveContent,
) -> Result<ConfigDriveSummary, ConfigDriveError> {
    let name = path.display().to_string();
    let disk = DiskFile::open(path).map_err(|source| ConfigDriveError::Io {
        disk: name.clone(),
        what: "opening".into(),
        source,
    })?;
    let disk = Arc::new(disk);
    let summary = write_config_drive_on(disk.clone(), &name, content)?;
    disk.reread_partitions();
    Ok(summary)
}

/// Write the config drive onto `disk`, called `name` in errors.
pub fn write_config_drive_on(
    disk: Arc<dyn DiskIo>,
    name: &str,
    content: &ConfigDriveContent,
) -> Result<ConfigDriveSummary, ConfigDriveError> {
    let io_err = |what: &str| {
        let disk = name.to_string();
        let what = what.to_string();
        move |source| ConfigDriveError::Io { disk, what, source }
    };
    let sectors = disk.size() / SECTOR;
    let staged = stage_files(content)?;
    let fs_size = smallest_fat_size(staged.path(), content)?;
    let fs_sectors = fs_size / SECTOR;

    let source = DiskSource {
        disk: disk.clone(),
        size: sectors * SECTOR,
    };
    let gpt = read_gpt(&source).map_err(|source| ConfigDriveError::Gpt {
        disk: name.to_string(),
        source,
    })?;
    let disk = &*disk;
    let summary = match gpt {
        Some(table) if !table.primary_ok => {
            return Err(ConfigDriveError::DamagedGpt {
                disk: name.to_string(),
            });
        }
        Some(_) => {
            let mut gpt = RawGpt::read(disk, sectors).map_err(io_err("reading the GPT"))?;
            let replaced = gpt.remove_config_drives(disk);
            let (first, last) = place_at_end(
                name,
                fs_sectors,
                gpt.used_end(),
                gpt.last_usable_after_move() + 1,
                gpt.first_usable,
            )?;
            let number = gpt
                .free_slot()
                .ok_or_else(|| ConfigDriveError::NoFreeSlot {
                    disk: name.to_string(),
                    table: "GPT",
                })?;
            let fat_type = write_fs(disk, staged.path(), content, first * SECTOR, fs_size)
                .map_err(|e| fs_error(name, e))?;
            let part_guid =
                Uuid::new_v5(&PARTITION_GUID_NAMESPACE, content.meta_data.uuid.as_bytes());
            gpt.set_entry(number, part_guid, first, last);
            gpt.write_moved(disk).map_err(io_err("writing the GPT"))?;
            ConfigDriveSummary {
                table: TableKind::Gpt,
                partition: number as u32 + 1,
                offset: first * SECTOR,
                size: fs_size,
                replaced,
                fat_type,
            }
        }
        None => {
            let mut mbr = Mbr::read(disk)
                .map_err(io_err("reading sector 0"))?
                .ok_or_else(|| ConfigDriveError::NoPartitionTable {
                    disk: name.to_string(),
                })?;
            let replaced = mbr.remove_config_drives(disk);
            let limit = sectors.min(MBR_MAX_SECTORS);
            let (first, last) =
                place_at_end(name, fs_sectors, mbr.used_end(), limit, ALIGN_SECTORS)?;
            let slot = mbr
                .free_slot()
                .ok_or_else(|| ConfigDriveError::NoFreeSlot {
                    disk: name.to_string(),
                    table: "MBR, all four primary entries are used",
                })?;
            let fat_type = write_fs(disk, staged.path(), content, first * SECTOR, fs_size)
                .map_err(|e| fs_error(name, e))?;
            let type_id = match fat_type {
                FatType::Fat16 => 0x0E,
                FatType::Fat32 => 0x0C,
            };
            mbr.set_entry(slot, type_id, first, last - first + 1);
            disk.write_all_at(&mbr.sector, 0)
                .map_err(io_err("writing the MBR"))?;
            ConfigDriveSummary {
                table: TableKind::Mbr,
                partition: slot as u32 + 1,
                offset: first * SECTOR,
                size: fs_size,
                replaced,
                fat_type,
            }
        }
    };
    disk.flush().map_err(io_err("flushing"))?;
    Ok(summary)
}

/// The filesystem bytes alone (for tests and for writers that place it themselves):
/// the config drive as it would be written at byte `offset` of a disk.
pub fn build_config_drive_fs(
    content: &ConfigDriveContent,
    offset: u64,
) -> Result<Vec<u8>, ConfigDriveError> {
    let staged = stage_files(content)?;
    let size = smallest_fat_size(staged.path(), content)?;
    let scratch = tempfile::tempfile().map_err(|source| ConfigDriveError::Stage {
        path: std::env::temp_dir(),
        source,
    })?;
    build_into(&scratch, staged.path(), content, offset, size)
        .map_err(|e| match e {
            FsError::Fat(e) => ConfigDriveError::Fat(e),
            FsError::Io(source) => ConfigDriveError::Stage {
                path: std::env::temp_dir(),
                source,
            },
        })
        .map(|(bytes, _)| bytes)
}

enum FsError {
    Fat(FatError),
    Io(io::Error),
}

fn fs_error(disk: &str, e: FsError) -> ConfigDriveError {
    match e {
        FsError::Fat(e) => ConfigDriveError::Fat(e),
        FsError::Io(source) => ConfigDriveError::Io {
            disk: disk.to_string(),
            what: "writing the config drive filesystem".into(),
            source,
        },
    }
}

/// Write the content's files into a fresh temporary directory.
fn stage_files(content: &ConfigDriveContent) -> Result<tempfile::TempDir, ConfigDriveError> {
    let files = content.files()?;
    let dir = tempfile::Builder::new()
        .prefix("kiln-configdrive-")
        .tempdir()
        .map_err(|source| ConfigDriveError::Stage {
            path: std::env::temp_dir(),
            source,
        })?;
    for (rel, bytes) in &files {
        let path = dir.path().join(rel);
        let stage_err = |source| ConfigDriveError::Stage {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(stage_err)?;
        }
        std::fs::write(&path, bytes).map_err(stage_err)?;
    }
    Ok(dir)
}

fn fat_options(content: &ConfigDriveContent, size: u64) -> FatOptions {
    // Same node, same serial: a stable volume id for reproducible bytes.
    let volume_id = crc32fast::hash(content.meta_data.uuid.as_bytes());
    FatOptions {
        size,
        fat_type: None,
        label: Some(CONFIG_DRIVE_LABEL.to_string()),
        volume_id: Some(volume_id),
        timestamp: None,
    }
}

/// The smallest whole number of MiB (up to 64) whose FAT holds the files.
fn smallest_fat_size(dir: &Path, content: &ConfigDriveContent) -> Result<u64, ConfigDriveError> {
    let scratch = tempfile::tempfile().map_err(|source| ConfigDriveError::Stage {
        path: std::env::temp_dir(),
        source,
    })?;
    let mut last_err = None;
    for mib in 1..=MAX_CONFIG_DRIVE_SIZE / MIB {
        let size = mib * MIB;
        match write_fat(&scratch, 0, dir, &fat_options(content, size)) {
            Ok(_) => return Ok(size),
            Err(
                e @ (FatError::TreeTooLarge { .. }
                | FatError::SizeUnsupported { .. }
                | FatError::NoFatTypeFits { .. }),
            ) => last_err = Some(e),
            Err(e) => return Err(ConfigDriveError::Fat(e)),
        }
    }
    Err(ConfigDriveError::TooLarge {
        source: last_err.unwrap_or(FatError::SizeNotSectors { size: 0 }),
    })
}

/// Build the filesystem in a sparse scratch file at its final offset (so its
/// hidden-sectors field is right) and return its bytes.
fn build_into(
    scratch: &File,
    dir: &Path,
    content: &ConfigDriveContent,
    offset: u64,
    size: u64,
) -> Result<(Vec<u8>, FatType), FsError> {
    let summary =
        write_fat(scratch, offset, dir, &fat_options(content, size)).map_err(FsError::Fat)?;
    let mut bytes = vec![0u8; size as usize];
    scratch
        .read_exact_at(&mut bytes, offset)
        .map_err(FsError::Io)?;
    Ok((bytes, summary.fat_type))
}

/// Write the whole filesystem region, unused clusters included, so no byte of an
/// earlier config drive or image survives in it.
fn write_fs(
    disk: &dyn DiskIo,
    dir: &Path,
    content: &ConfigDriveContent,
    offset: u64,
    size: u64,
) -> Result<FatType, FsError> {
    let scratch = tempfile::tempfile().map_err(FsError::Io)?;
    let (bytes, fat_type) = build_into(&scratch, dir, content, offset, size)?;
    disk.write_all_at(&bytes, offset).map_err(FsError::Io)?;
    Ok(fat_type)
}

/// First and last LBA of a partition of `sectors` ending on the last 1 MiB
/// boundary at or before `end` (exclusive), after `used_end` (exclusive).
fn place_at_end(
    disk: &str,
    sectors: u64,
    used_end: u64,
    end: u64,
    first_usable: u64,
) -> Result<(u64, u64), ConfigDriveError> {
    let end_aligned = end / ALIGN_SECTORS * ALIGN_SECTORS;
    let no_room = || ConfigDriveError::NoRoom {
        disk: disk.to_string(),
        size: sectors * SECTOR,
        used_end: used_end * SECTOR,
        usable_end: end * SECTOR,
    };
    let first = end_aligned.checked_sub(sectors).ok_or_else(no_room)?;
    if first < used_end || first < first_usable {
        return Err(no_room());
    }
    Ok((first, first + sectors - 1))
}

/// Is a filesystem labelled config-2 (FAT or ISO 9660) at byte `offset`?
fn has_config_drive_label(file: &dyn DiskIo, offset: u64) -> bool {
    let mut boot = [0u8; 512];
    if file.read_exact_at(&mut boot, offset).is_ok() && boot[510..512] == [0x55, 0xAA] {
        // FAT32 has zero 16-bit sectors-per-FAT; the extended boot signature 0x29
        // says the label field is present.
        let fat32 = boot[22] == 0 && boot[23] == 0;
        let (sig, label) = if fat32 { (66, 71) } else { (38, 43) };
        if boot[sig] == 0x29 && label_is_config_drive(&boot[label..label + 11]) {
            return true;
        }
    }
    let mut pvd = [0u8; 72];
    file.read_exact_at(&mut pvd, offset + 32768).is_ok()
        && &pvd[1..6] == b"CD001"
        && label_is_config_drive(&pvd[40..72])
}

fn label_is_config_drive(raw: &[u8]) -> bool {
    String::from_utf8_lossy(raw)
        .trim_matches([' ', '\0'])
        .eq_ignore_ascii_case(CONFIG_DRIVE_LABEL)
}

/// The GPT as raw sectors, to be rewritten with the backup at the end of the disk.
struct RawGpt {
    /// The primary header sector.
    header: [u8; 512],
    entries: Vec<u8>,
    entries_lba: u64,
    num_entries: usize,
    entry_size: usize,
    first_usable: u64,
    /// Backup header LBA the image recorded (its own last sector).
    old_alternate: u64,
    disk_sectors: u64,
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

impl RawGpt {
    /// Read the primary header and entries; `read_gpt` has already validated them.
    fn read(file: &dyn DiskIo, disk_sectors: u64) -> io::Result<RawGpt> {
        let mut header = [0u8; 512];
        file.read_exact_at(&mut header, SECTOR)?;
        let entries_lba = le64(&header, 72);
        let num_entries = le32(&header, 80) as usize;
        let entry_size = le32(&header, 84) as usize;
        let mut entries = vec![0u8; num_entries * entry_size];
        file.read_exact_at(&mut entries, entries_lba * SECTOR)?;
        Ok(RawGpt {
            old_alternate: le64(&header, 32),
            first_usable: le64(&header, 40),
            header,
            entries,
            entries_lba,
            num_entries,
            entry_size,
            disk_sectors,
        })
    }

    fn entry(&self, i: usize) -> &[u8] {
        &self.entries[i * self.entry_size..(i + 1) * self.entry_size]
    }

    fn used(&self, i: usize) -> bool {
        self.entry(i)[..16].iter().any(|&b| b != 0)
    }

    fn lbas(&self, i: usize) -> (u64, u64) {
        (le64(self.entry(i), 32), le64(self.entry(i), 40))
    }

    fn array_sectors(&self) -> u64 {
        ((self.num_entries * self.entry_size) as u64).div_ceil(SECTOR)
    }

    /// Last usable LBA once the backup array and header sit at the end of the disk.
    fn last_usable_after_move(&self) -> u64 {
        self.disk_sectors - 2 - self.array_sectors()
    }

    /// One past the last LBA any partition uses.
    fn used_end(&self) -> u64 {
        (0..self.num_entries)
            .filter(|&i| self.used(i))
            .map(|i| self.lbas(i).1 + 1)
            .max()
            .unwrap_or(self.first_usable)
    }

    fn free_slot(&self) -> Option<usize> {
        (0..self.num_entries).find(|&i| !self.used(i))
    }

    /// Clear every entry named config-2 or holding a config-2 filesystem.
    fn remove_config_drives(&mut self, file: &dyn DiskIo) -> bool {
        let mut removed = false;
        for i in 0..self.num_entries {
            if !self.used(i) {
                continue;
            }
            let e = self.entry(i);
            let name_units: Vec<u16> = e[GPT_NAME_OFFSET..GPT_NAME_OFFSET + GPT_NAME_BYTES]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            let name = String::from_utf16_lossy(&name_units);
            let (first, _) = self.lbas(i);
            if name.eq_ignore_ascii_case(CONFIG_DRIVE_LABEL)
                || has_config_drive_label(file, first * SECTOR)
            {
                let size = self.entry_size;
                self.entries[i * size..(i + 1) * size].fill(0);
                removed = true;
            }
        }
        removed
    }

    fn set_entry(&mut self, i: usize, part_guid: Uuid, first: u64, last: u64) {
        let size = self.entry_size;
        let e = &mut self.entries[i * size..(i + 1) * size];
        e.fill(0);
        e[..16].copy_from_slice(&MICROSOFT_BASIC_DATA.to_bytes_le());
        e[16..32].copy_from_slice(&part_guid.to_bytes_le());
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (k, unit) in CONFIG_DRIVE_LABEL.encode_utf16().enumerate() {
            e[GPT_NAME_OFFSET + 2 * k..GPT_NAME_OFFSET + 2 * k + 2]
                .copy_from_slice(&unit.to_le_bytes());
        }
    }

    fn header_for(
        &self,
        my_lba: u64,
        alternate: u64,
        entries_lba: u64,
        entries_crc: u32,
    ) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..GPT_HEADER_SIZE].copy_from_slice(&self.header[..GPT_HEADER_SIZE]);
        h[12..16].copy_from_slice(&(GPT_HEADER_SIZE as u32).to_le_bytes());
        h[16..20].fill(0);
        h[20..24].fill(0);
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable_after_move().to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..GPT_HEADER_SIZE]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Write the backup (array then header) at the end of the disk, then the
    /// primary, then grow the protective MBR; clear the image's old backup header.
    fn write_moved(&self, file: &dyn DiskIo) -> io::Result<()> {
        let last = self.disk_sectors - 1;
        let backup_entries_lba = last - self.array_sectors();
        let crc = crc32fast::hash(&self.entries);
        let mut array = self.entries.clone();
        array.resize((self.array_sectors() * SECTOR) as usize, 0);
        let in_partition = |lba: u64| {
            (0..self.num_entries).any(|i| {
                let (first, end) = self.lbas(i);
                self.used(i) && (first..=end).contains(&lba)
            })
        };
        // The image's backup header lies in what is now free space: left there,
        // a later "repair" could bring back the image's table.
        if self.old_alternate < last
            && self.old_alternate >= self.first_usable
            && !in_partition(self.old_alternate)
        {
            let mut old = [0u8; 512];
            file.read_exact_at(&mut old, self.old_alternate * SECTOR)?;
            if &old[..8] == b"EFI PART" {
                file.write_all_at(&[0u8; 512], self.old_alternate * SECTOR)?;
            }
        }
        file.write_all_at(&array, backup_entries_lba * SECTOR)?;
        file.write_all_at(
            &self.header_for(last, 1, backup_entries_lba, crc),
            last * SECTOR,
        )?;
        file.write_all_at(&array, self.entries_lba * SECTOR)?;
        file.write_all_at(&self.header_for(1, last, self.entries_lba, crc), SECTOR)?;

        let mut mbr = [0u8; 512];
        file.read_exact_at(&mut mbr, 0)?;
        for slot in 0..4 {
            let e = 446 + 16 * slot;
            if mbr[e + 4] == 0xEE && le32(&mbr, e + 8) == 1 {
                let len = (self.disk_sectors - 1).min(u64::from(u32::MAX)) as u32;
                mbr[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
                mbr[e + 5..e + 8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
            }
        }
        file.write_all_at(&mbr, 0)
    }
}

/// A DOS partition table in sector 0.
struct Mbr {
    sector: [u8; 512],
}

impl Mbr {
    /// `None` when sector 0 holds no partition table: no 55 AA signature, boot
    /// flags other than 0 and 0x80 (a filesystem boot sector), or no entry at all.
    fn read(file: &dyn DiskIo) -> io::Result<Option<Mbr>> {
        let mut sector = [0u8; 512];
        if file.size() < SECTOR {
            return Ok(None);
        }
        match file.read_exact_at(&mut sector, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let mbr = Mbr { sector };
        let flags_ok = (0..4).all(|i| matches!(mbr.sector[446 + 16 * i], 0 | 0x80));
        let any = (0..4).any(|i| mbr.used(i));
        Ok((sector[510..512] == [0x55, 0xAA] && flags_ok && any).then_some(mbr))
    }

    fn used(&self, i: usize) -> bool {
        let e = 446 + 16 * i;
        self.sector[e + 4] != 0 && le32(&self.sector, e + 12) != 0
    }

    fn span(&self, i: usize) -> (u64, u64) {
        let e = 446 + 16 * i;
        let first = u64::from(le32(&self.sector, e + 8));
        (first, first + u64::from(le32(&self.sector, e + 12)))
    }

    fn used_end(&self) -> u64 {
        (0..4)
            .filter(|&i| self.used(i))
            .map(|i| self.span(i).1)
            .max()
            .unwrap_or(ALIGN_SECTORS)
    }

    fn free_slot(&self) -> Option<usize> {
        (0..4).find(|&i| !self.used(i))
    }

    fn remove_config_drives(&mut self, file: &dyn DiskIo) -> bool {
        let mut removed = false;
        for i in 0..4 {
            if self.used(i) && has_config_drive_label(file, self.span(i).0 * SECTOR) {
                self.sector[446 + 16 * i..446 + 16 * (i + 1)].fill(0);
                removed = true;
            }
        }
        removed
    }

    /// An LBA-only entry: CHS fields say "beyond cylinder 1023", as for any
    /// partition a BIOS must address by LBA.
    fn set_entry(&mut self, i: usize, type_id: u8, first: u64, sectors: u64) {
        let e = &mut self.sector[446 + 16 * i..446 + 16 * (i + 1)];
        e[0] = 0;
        e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        e[4] = type_id;
        e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        e[8..12].copy_from_slice(&(first as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    }
}

/// A disk as a `BlockSource` for the GPT reader.
struct DiskSource {
    disk: Arc<dyn DiskIo>,
    size: u64,
}

impl BlockSource for DiskSource {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.read_exact_at(buf, offset)
    }

    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        Ok(Extent {
            kind: ExtentKind::Data,
            len: max_len.min(self.size.saturating_sub(offset)).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::configdrive::{MetaData, NetworkData};

    fn content(user_data: Option<Vec<u8>>) -> ConfigDriveContent {
        ConfigDriveContent {
            meta_data: MetaData {
                uuid: "6a1f0c7e-0000-4000-8000-000000000001".into(),
                name: "n".into(),
                hostname: "h".into(),
                public_keys: Default::default(),
                launch_index: 0,
                availability_zone: "nova".into(),
                meta: Default::default(),
            },
            user_data,
            network_data: NetworkData::dhcp(&["52:54:00:00:00:01"]).unwrap(),
            vendor_data: serde_json::json!({}),
            kiln_config: serde_json::json!({}),
        }
    }

    /// An empty temporary file as a disk; writes grow it.
    fn scratch_disk() -> DiskFile {
        DiskFile {
            file: tempfile::tempfile().unwrap(),
            size: 0,
            is_block_device: false,
        }
    }

    #[test]
    fn size_is_the_smallest_that_fits() {
        for user_data in [None, Some(vec![7u8; 5 << 20])] {
            let c = content(user_data);
            let staged = stage_files(&c).unwrap();
            let size = smallest_fat_size(staged.path(), &c).unwrap();
            let scratch = tempfile::tempfile().unwrap();
            let smaller = write_fat(&scratch, 0, staged.path(), &fat_options(&c, size - MIB));
            assert!(smaller.is_err(), "{} MiB also fits", size / MIB - 1);
        }
        let huge = content(Some(vec![1u8; 70 << 20]));
        let staged = stage_files(&huge).unwrap();
        let e = smallest_fat_size(staged.path(), &huge).unwrap_err();
        assert!(matches!(e, ConfigDriveError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn labels_are_recognized_on_fat_and_iso9660() {
        let c = content(None);
        let fs = build_config_drive_fs(&c, 0).unwrap();
        let file = scratch_disk();
        file.write_all_at(&fs, 4096).unwrap();
        assert!(has_config_drive_label(&file, 4096));
        assert!(!has_config_drive_label(&file, 0));

        let iso = scratch_disk();
        let mut pvd = [0u8; 72];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[40..72].copy_from_slice(format!("{:<32}", "CONFIG-2").as_bytes());
        iso.write_all_at(&pvd, 32768).unwrap();
        assert!(has_config_drive_label(&iso, 0));
        pvd[40..72].copy_from_slice(format!("{:<32}", "OTHER").as_bytes());
        iso.write_all_at(&pvd, 32768).unwrap();
        assert!(!has_config_drive_label(&iso, 0));
    }

    #[test]
    fn a_filesystem_boot_sector_is_not_an_mbr() {
        // A FAT filesystem starting at sector 0 (superfloppy) ends in 55 AA too.
        let fs = build_config_drive_fs(&content(None), 0).unwrap();
        let file = scratch_disk();
        file.write_all_at(&fs, 0).unwrap();
        assert!(Mbr::read(&file).unwrap().is_none());
        assert!(Mbr::read(&scratch_disk()).unwrap().is_none());
    }

    #[test]
    fn placement_errors() {
        let disk = "d";
        assert_eq!(
            place_at_end(disk, 2048, 4096, 10 * 2048 + 7, 34).unwrap(),
            (9 * 2048, 10 * 2048 - 1)
        );
        assert!(place_at_end(disk, 2048, 9 * 2048 + 1, 10 * 2048, 34).is_err());
        assert!(place_at_end(disk, 4096, 0, 2048, 34).is_err());
    }
}

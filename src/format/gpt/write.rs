//! The GPT writer: plan a 1 MiB aligned layout, write it through the `gpt` crate,
//! read it back with our own reader.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;

use uuid::Uuid;

use super::{GptError, GptTable, SECTOR_SIZE, read_gpt};
use crate::format::raw::RawImage;

/// Partitions start on multiples of this many sectors (1 MiB).
const ALIGN_SECTORS: u64 = (1 << 20) / SECTOR_SIZE;
/// Entries in each written entry array (the usual 16 KiB array).
const NUM_ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors taken by one entry array.
const ARRAY_SECTORS: u64 = NUM_ENTRIES * ENTRY_SIZE / SECTOR_SIZE;
/// A GPT name holds at most 36 UTF-16 code units.
const MAX_NAME_UNITS: usize = 36;

/// One partition to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    /// At most 36 UTF-16 code units, no NUL.
    pub name: String,
    /// Must not be nil (a nil type marks an unused entry).
    pub type_guid: Uuid,
    /// `None`: [`derived_partition_guid`] of the disk GUID and the partition number,
    /// so the same spec always gives the same bytes. Pass `Some(Uuid::new_v4())`
    /// for a random one.
    pub part_guid: Option<Uuid>,
    /// Bytes, rounded up to 1 MiB. `None`: the rest of the disk, up to the last
    /// 1 MiB boundary before the backup table; only the last partition may say so.
    pub size: Option<u64>,
    /// The 64 attribute bits of the entry (bit 0 required, bit 2 legacy BIOS bootable, ...).
    pub attributes: u64,
}

/// A whole partition table to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptSpec {
    pub disk_guid: Uuid,
    /// Laid out in this order, numbered from 1.
    pub partitions: Vec<PartitionSpec>,
}

/// The partition GUID [`write_gpt`] gives partition `number` (1-based) when the
/// spec leaves it out: a name-based (version 5) UUID in the namespace of the disk GUID.
pub fn derived_partition_guid(disk_guid: &Uuid, number: u32) -> Uuid {
    Uuid::new_v5(disk_guid, format!("kiln-gpt-partition-{number}").as_bytes())
}

/// Where one partition goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Planned {
    number: u32,
    type_guid: Uuid,
    part_guid: Uuid,
    first_lba: u64,
    last_lba: u64,
    attributes: u64,
    name: String,
}

/// First and last usable LBA of a disk of `sectors` sectors: LBA 0 holds the
/// protective MBR, 1 the header, 2.. the entries; the backup mirrors it at the end.
fn usable_range(sectors: u64) -> (u64, u64) {
    (2 + ARRAY_SECTORS, sectors.saturating_sub(2 + ARRAY_SECTORS))
}

/// Check the spec against a disk of `disk_size` bytes and place every partition.
fn plan(disk_size: u64, spec: &GptSpec) -> Result<Vec<Planned>, GptError> {
    let disk_err = |problem: String| GptError::DiskSize { disk_size, problem };
    if !disk_size.is_multiple_of(SECTOR_SIZE) {
        return Err(disk_err(format!("not a multiple of {SECTOR_SIZE}")));
    }
    if spec.partitions.len() > NUM_ENTRIES as usize {
        return Err(GptError::TooManyPartitions(spec.partitions.len()));
    }
    let (first_usable, last_usable) = usable_range(disk_size / SECTOR_SIZE);
    if last_usable < ALIGN_SECTORS {
        return Err(disk_err(format!(
            "too small for a GPT with 1 MiB aligned partitions (at least {} bytes)",
            (ALIGN_SECTORS + 2 + ARRAY_SECTORS + 1) * SECTOR_SIZE
        )));
    }
    debug_assert!(first_usable <= ALIGN_SECTORS);

    let mut planned: Vec<Planned> = Vec::with_capacity(spec.partitions.len());
    let mut next_free = ALIGN_SECTORS;
    for (index, p) in spec.partitions.iter().enumerate() {
        let number = index as u32 + 1;
        let bad = |problem: String| GptError::Spec {
            number,
            name: p.name.clone(),
            problem,
        };
        let units = p.name.encode_utf16().count();
        if units > MAX_NAME_UNITS {
            return Err(bad(format!(
                "name is {units} UTF-16 code units, at most {MAX_NAME_UNITS} fit"
            )));
        }
        if p.name.contains('\0') {
            return Err(bad("name contains NUL".into()));
        }
        if p.type_guid.is_nil() {
            return Err(bad("type GUID is nil (that marks an unused entry)".into()));
        }
        let part_guid = p
            .part_guid
            .unwrap_or_else(|| derived_partition_guid(&spec.disk_guid, number));
        if part_guid.is_nil() {
            return Err(bad("partition GUID is nil".into()));
        }
        if let Some(other) = planned.iter().find(|q| q.part_guid == part_guid) {
            return Err(bad(format!(
                "partition GUID {part_guid} is also used by partition {}",
                other.number
            )));
        }

        let first_lba = next_free.div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
        let last_lba = match p.size {
            Some(0) => return Err(bad("size is zero".into())),
            Some(size) => {
                let sectors = size
                    .checked_next_multiple_of(ALIGN_SECTORS * SECTOR_SIZE)
                    .map(|b| b / SECTOR_SIZE);
                match sectors.and_then(|s| first_lba.checked_add(s - 1)) {
                    Some(l) if l <= last_usable => l,
                    _ => {
                        return Err(bad(format!(
                            "{size} bytes from LBA {first_lba} do not fit before the last usable LBA {last_usable} of a {disk_size}-byte disk"
                        )));
                    }
                }
            }
            None if index + 1 != spec.partitions.len() => {
                return Err(bad(
                    "no size (rest of the disk) is only allowed for the last partition".into(),
                ));
            }
            None => {
                // End on a 1 MiB boundary too, as partitioning tools expect.
                let end = (last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS;
                if end <= first_lba {
                    return Err(bad(format!(
                        "no room left: it would start at LBA {first_lba} and the last usable LBA is {last_usable}"
                    )));
                }
                end - 1
            }
        };
        next_free = last_lba + 1;
        planned.push(Planned {
            number,
            type_guid: p.type_guid,
            part_guid,
            first_lba,
            last_lba,
            attributes: p.attributes,
            name: p.name.clone(),
        });
    }
    Ok(planned)
}

/// Write a protective MBR, the primary header and entries, and the backup entries
/// and header onto `file`, an image of `disk_size` bytes (the file is extended to
/// that size; a longer file is refused rather than cut).
///
/// Partitions start and end on 1 MiB boundaries (LBA multiples of 2048): sizes are
/// rounded up to 1 MiB, a partition without a size ends at the last boundary before
/// the backup table, and they are laid out in order. Only the sectors of the table are
/// written: the file stays sparse. The result is read back from the file and
/// returned. Spec errors are found before the file is touched; an I/O error later
/// can leave a partial table, so write to a temporary file and rename it.
pub fn write_gpt(file: &mut File, disk_size: u64, spec: &GptSpec) -> Result<GptTable, GptError> {
    let planned = plan(disk_size, spec)?;

    let len = file.metadata().map_err(GptError::Io)?.len();
    if len > disk_size {
        return Err(GptError::DiskSize {
            disk_size,
            problem: format!("the file is already {len} bytes long; refusing to shrink it"),
        });
    }
    if len < disk_size {
        file.set_len(disk_size).map_err(GptError::Io)?;
    }

    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut *file, Some(spec.disk_guid))
        .map_err(GptError::Writer)?;
    let entries: BTreeMap<u32, gpt::partition::Partition> = planned
        .iter()
        .map(|p| {
            let entry = gpt::partition::Partition {
                part_type_guid: gpt::partition_types::Type::from(p.type_guid),
                part_guid: p.part_guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                flags: p.attributes,
                name: p.name.clone(),
            };
            (p.number, entry)
        })
        .collect();
    disk.update_partitions(entries).map_err(GptError::Writer)?;
    disk.write_inplace().map_err(GptError::Writer)?;
    drop(disk);

    let sectors = disk_size / SECTOR_SIZE;
    let protective_len = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(protective_len)
        .overwrite_lba0(file)
        .map_err(GptError::Mbr)?;
    file.flush().map_err(GptError::Io)?;

    let image = RawImage::new(file.try_clone().map_err(GptError::Io)?).map_err(GptError::Io)?;
    let table = read_gpt(&image)
        .map_err(|e| GptError::Verify(e.to_string()))?
        .ok_or_else(|| GptError::Verify("no GPT found".into()))?;
    check_written(&table, spec, &planned, sectors)?;
    Ok(table)
}

/// Compare what the reader sees with what was planned.
fn check_written(
    table: &GptTable,
    spec: &GptSpec,
    planned: &[Planned],
    sectors: u64,
) -> Result<(), GptError> {
    let verify = |what: String| Err(GptError::Verify(what));
    if !table.primary_ok || !table.backup_ok {
        return verify(format!(
            "primary valid: {}, backup valid: {}",
            table.primary_ok, table.backup_ok
        ));
    }
    if table.disk_guid != spec.disk_guid {
        return verify(format!("disk GUID {} read back", table.disk_guid));
    }
    let usable = usable_range(sectors);
    if (table.first_usable_lba, table.last_usable_lba) != usable {
        return verify(format!(
            "usable LBAs {}..={} instead of {}..={}",
            table.first_usable_lba, table.last_usable_lba, usable.0, usable.1
        ));
    }
    if table.partitions.len() != planned.len() {
        return verify(format!(
            "{} partitions instead of {}",
            table.partitions.len(),
            planned.len()
        ));
    }
    for (got, want) in table.partitions.iter().zip(planned) {
        let same = got.number == want.number
            && got.type_guid == want.type_guid
            && got.part_guid == want.part_guid
            && got.first_lba == want.first_lba
            && got.last_lba == want.last_lba
            && got.attributes == want.attributes
            && got.name == want.name;
        if !same {
            return verify(format!("partition {} reads back as {got:?}", want.number));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::gpt::{BIOS_BOOT, EFI_SYSTEM, LINUX_ROOT_X86_64};

    const MIB: u64 = 1 << 20;

    fn part(name: &str, type_guid: Uuid, size: Option<u64>) -> PartitionSpec {
        PartitionSpec {
            name: name.into(),
            type_guid,
            part_guid: None,
            size,
            attributes: 0,
        }
    }

    fn spec(partitions: Vec<PartitionSpec>) -> GptSpec {
        GptSpec {
            disk_guid: Uuid::from_u128(0x1234),
            partitions,
        }
    }

    #[test]
    fn layout_is_aligned_rounded_and_in_order() {
        let s = spec(vec![
            part("esp", EFI_SYSTEM, Some(100 * MIB)),
            part("bios", BIOS_BOOT, Some(1)),
            part("root", LINUX_ROOT_X86_64, None),
        ]);
        let p = plan(1024 * MIB, &s).unwrap();
        let lbas: Vec<_> = p.iter().map(|p| (p.first_lba, p.last_lba)).collect();
        let sectors = 1024 * MIB / 512;
        assert_eq!(
            lbas,
            [
                (2048, 2048 + 204800 - 1),
                (206848, 206848 + 2047),
                (208896, sectors - 2048 - 1)
            ]
        );
        assert_eq!(p[2].part_guid, derived_partition_guid(&s.disk_guid, 3));
        assert_ne!(p[0].part_guid, p[1].part_guid);
    }

    #[test]
    fn spec_errors_name_the_partition() {
        let too_big = spec(vec![part("big", EFI_SYSTEM, Some(64 * MIB))]);
        let e = plan(32 * MIB, &too_big).unwrap_err().to_string();
        assert!(e.contains("partition 1 (\"big\")"), "{e}");

        let rest_first = spec(vec![
            part("a", EFI_SYSTEM, None),
            part("b", EFI_SYSTEM, Some(MIB)),
        ]);
        let e = plan(32 * MIB, &rest_first).unwrap_err().to_string();
        assert!(e.contains("only allowed for the last"), "{e}");

        let long = spec(vec![part(&"x".repeat(37), EFI_SYSTEM, None)]);
        assert!(plan(32 * MIB, &long).is_err());
        // 36 units fit, even when some are surrogate pairs.
        let emoji = spec(vec![part(&"😀".repeat(18), EFI_SYSTEM, None)]);
        assert!(plan(32 * MIB, &emoji).is_ok());
        let emoji = spec(vec![part(&"😀".repeat(19), EFI_SYSTEM, None)]);
        assert!(plan(32 * MIB, &emoji).is_err());

        let nil = spec(vec![part("n", Uuid::nil(), None)]);
        assert!(plan(32 * MIB, &nil).is_err());
        assert!(plan(32 * MIB + 1, &spec(vec![])).is_err());
        assert!(plan(MIB, &spec(vec![])).is_err());
        let huge = spec(vec![part("h", EFI_SYSTEM, Some(u64::MAX))]);
        assert!(plan(32 * MIB, &huge).is_err());

        let mut dup = spec(vec![
            part("a", EFI_SYSTEM, Some(MIB)),
            part("b", EFI_SYSTEM, None),
        ]);
        dup.partitions[0].part_guid = Some(derived_partition_guid(&dup.disk_guid, 2));
        let e = plan(32 * MIB, &dup).unwrap_err().to_string();
        assert!(e.contains("also used by partition 1"), "{e}");
    }

    #[test]
    fn rest_of_disk_needs_room() {
        let full = spec(vec![
            part("a", EFI_SYSTEM, Some(30 * MIB)),
            part("b", EFI_SYSTEM, None),
        ]);
        // a ends at 31 MiB, b starts there and needs 1 MiB before the backup
        // table (33 sectors at the end of the disk).
        let p = plan(32 * MIB + 33 * 512, &full).unwrap();
        assert_eq!((p[1].first_lba, p[1].last_lba), (31 * 2048, 32 * 2048 - 1));
        let p = plan(33 * MIB + 100 * 512, &full).unwrap();
        assert_eq!(p[1].last_lba, 33 * 2048 - 1, "rounded down to 1 MiB");
        let e = plan(32 * MIB + 32 * 512, &full).unwrap_err().to_string();
        assert!(e.contains("no room left"), "{e}");
    }
}

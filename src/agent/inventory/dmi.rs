//! SMBIOS (DMI) data: the system vendor from /sys/class/dmi/id and the installed
//! memory from the raw firmware tables.

use std::path::Path;

use super::{Firmware, SystemVendor, read_trimmed};

/// SMBIOS structure type of a memory device (one DIMM slot).
const MEMORY_DEVICE: u8 = 17;
/// SMBIOS type 127 ends the table.
const END_OF_TABLE: u8 = 127;

/// Manufacturer, product, serial and firmware strings; missing ones are `None`.
pub fn collect_system_vendor(root: &Path) -> SystemVendor {
    let id = root.join("sys/class/dmi/id");
    let get = |name: &str| read_trimmed(&id.join(name));
    SystemVendor {
        product_name: get("product_name"),
        serial_number: get("product_serial"),
        manufacturer: get("sys_vendor"),
        firmware: Firmware {
            vendor: get("bios_vendor"),
            version: get("bios_version"),
            build_date: get("bios_date"),
        },
    }
}

/// MiB of memory in all populated memory devices, read from the whole table
/// (/sys/firmware/dmi/tables/DMI, always there when the firmware has SMBIOS) or
/// from the per-structure files of the dmi-sysfs module. `None` when neither is
/// readable or no device reports a size.
pub(super) fn installed_memory_mb(root: &Path) -> Option<u64> {
    let dmi = root.join("sys/firmware/dmi");
    let sizes = match std::fs::read(dmi.join("tables/DMI")) {
        Ok(table) => memory_sizes_in_table(&table),
        Err(_) => memory_sizes_in_entries(&dmi.join("entries")),
    };
    let total: u64 = sizes.iter().sum();
    (total > 0).then_some(total)
}

fn memory_sizes_in_entries(dir: &Path) -> Vec<u64> {
    let Ok(items) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = items
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("17-"))
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|n| std::fs::read(dir.join(n).join("raw")).ok())
        .filter_map(|raw| memory_device_mb(&raw))
        .collect()
}

/// Walk the structures of a raw SMBIOS table: a formatted area of the length its
/// header gives, then strings up to a double NUL.
fn memory_sizes_in_table(table: &[u8]) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut at = 0usize;
    while at + 4 <= table.len() {
        let kind = table[at];
        let len = usize::from(table[at + 1]);
        if len < 4 || at + len > table.len() {
            break;
        }
        if kind == MEMORY_DEVICE
            && let Some(mb) = memory_device_mb(&table[at..at + len])
        {
            sizes.push(mb);
        }
        if kind == END_OF_TABLE {
            break;
        }
        // The string set ends with two NULs (also when there are no strings).
        let strings = &table[at + len..];
        match strings.windows(2).position(|w| w == [0, 0]) {
            Some(end) => at += len + end + 2,
            None => break,
        }
    }
    sizes
}

/// Size in MiB of one memory device structure (type 17): the 16-bit Size field at
/// 0x0C (bit 15 set: the unit is KiB; 0x7FFF: see the 32-bit Extended Size at 0x1C;
/// 0 or 0xFFFF: empty slot or unknown).
fn memory_device_mb(s: &[u8]) -> Option<u64> {
    if s.len() < 0x0E || s[0] != MEMORY_DEVICE || usize::from(s[1]) > s.len() {
        return None;
    }
    let size = u16::from_le_bytes([s[0x0C], s[0x0D]]);
    match size {
        0 | 0xFFFF => None,
        0x7FFF => {
            if usize::from(s[1]) < 0x20 {
                return None;
            }
            let ext = u32::from_le_bytes([s[0x1C], s[0x1D], s[0x1E], s[0x1F]]) & 0x7FFF_FFFF;
            (ext > 0).then_some(u64::from(ext))
        }
        kib if kib & 0x8000 != 0 => Some(u64::from(kib & 0x7FFF) / 1024),
        mb => Some(u64::from(mb)),
    }
}

/// A type-17 structure of `len` bytes with the given Size field, then its strings.
#[cfg(test)]
pub(crate) fn fake_memory_device(size: u16, extended: u32) -> Vec<u8> {
    let mut s = vec![0u8; 0x28];
    s[0] = MEMORY_DEVICE;
    s[1] = 0x28;
    s[0x0C..0x0E].copy_from_slice(&size.to_le_bytes());
    s[0x1C..0x20].copy_from_slice(&extended.to_le_bytes());
    s.extend_from_slice(b"DIMM 0\0\0");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_device_sizes() {
        assert_eq!(memory_device_mb(&fake_memory_device(2048, 0)), Some(2048));
        assert_eq!(memory_device_mb(&fake_memory_device(0, 0)), None);
        assert_eq!(memory_device_mb(&fake_memory_device(0xFFFF, 0)), None);
        assert_eq!(
            memory_device_mb(&fake_memory_device(0x7FFF, 65536)),
            Some(65536)
        );
        // 0x8000 | 512 KiB is half a MiB: rounds down to 0 MiB.
        assert_eq!(
            memory_device_mb(&fake_memory_device(0x8000 | 2048, 0)),
            Some(2)
        );
        assert_eq!(memory_device_mb(&[17, 4, 0, 0]), None);
    }

    #[test]
    fn table_walk_sums_devices_and_stops_at_the_end() {
        let mut table = vec![0u8, 4, 0, 0, b'x', 0, 0];
        table.extend(fake_memory_device(1024, 0));
        table.extend(fake_memory_device(0, 0));
        table.extend(fake_memory_device(0x7FFF, 3072));
        table.extend([END_OF_TABLE, 4, 0, 0, 0, 0]);
        table.extend(fake_memory_device(512, 0));
        assert_eq!(memory_sizes_in_table(&table), [1024, 3072]);
        // Truncated tables never panic.
        for cut in 0..table.len() {
            let _ = memory_sizes_in_table(&table[..cut]);
        }
    }
}

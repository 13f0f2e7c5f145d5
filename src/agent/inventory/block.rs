//! Disks from /sys/block, with the identifiers udev would give them.

use std::path::Path;

use super::{Disk, InventoryError, read_trimmed, sorted_names};

/// Kernel name prefixes of block devices that are never a place to deploy to:
/// loop, RAM and compressed-RAM disks, optical drives, floppies, network block
/// devices, device-mapper and software RAID volumes (as IPA leaves them out).
const SKIPPED_PREFIXES: &[&str] = &["loop", "ram", "zram", "sr", "fd", "nbd", "dm-", "md"];

/// The whole disks of `root`'s /sys/block, sorted by name. Devices of size zero
/// (an empty card reader, a drive without media) are left out.
pub fn collect_disks(root: &Path) -> Result<Vec<Disk>, InventoryError> {
    let names = sorted_names(&root.join("sys/block"), |name| {
        !SKIPPED_PREFIXES.iter().any(|p| name.starts_with(p))
    })?;
    let mut disks = Vec::with_capacity(names.len());
    for name in names {
        if let Some(disk) = read_disk(root, &name)? {
            disks.push(disk);
        }
    }
    Ok(disks)
}

fn read_disk(root: &Path, name: &str) -> Result<Option<Disk>, InventoryError> {
    let dev = root.join("sys/block").join(name);
    let size_path = dev.join("size");
    let Some(sectors) = read_trimmed(&size_path) else {
        return Ok(None);
    };
    // The size attribute counts 512-byte units whatever the logical block size.
    let size = sectors
        .parse::<u64>()
        .ok()
        .and_then(|s| s.checked_mul(512))
        .ok_or_else(|| InventoryError::Parse {
            path: size_path,
            problem: format!("{sectors:?} is not a sector count"),
        })?;
    if size == 0 {
        return Ok(None);
    }
    let get = |rel: &str| read_trimmed(&dev.join(rel));
    let serial = get("device/serial").or_else(|| get("serial")).or_else(|| {
        std::fs::read(dev.join("device/vpd_pg80"))
            .ok()
            .and_then(|p| vpd_serial(&p))
    });
    let wwid = get("wwid").or_else(|| get("device/wwid"));
    let wwn = wwid.as_deref().and_then(|w| Wwn::from_wwid(name, w));
    let hctl = std::fs::read_link(dev.join("device"))
        .ok()
        .and_then(|t| t.file_name()?.to_str().map(str::to_string))
        .filter(|t| is_hctl(t));
    Ok(Some(Disk {
        name: format!("/dev/{name}"),
        size,
        model: get("device/model"),
        vendor: get("device/vendor"),
        serial,
        wwn: wwn.as_ref().map(|w| w.wwn.clone()),
        wwn_with_extension: wwn.as_ref().map(|w| w.with_extension.clone()),
        wwn_vendor_extension: wwn.and_then(|w| w.vendor_extension),
        rotational: get("queue/rotational").as_deref() == Some("1"),
        hctl,
        by_path: by_path_link(root, name),
        tran: transport(name, &dev),
    }))
}

/// The bus a disk hangs off, from its kernel name or its place in the sysfs
/// device tree (what lsblk's TRAN column reports).
fn transport(name: &str, dev: &Path) -> Option<String> {
    // virtio-blk disks have no TRAN in lsblk; neither do they here.
    let by_name = [("nvme", "nvme"), ("mmcblk", "mmc")];
    if let Some((_, t)) = by_name.iter().find(|(p, _)| name.starts_with(p)) {
        return Some(t.to_string());
    }
    let path = std::fs::canonicalize(dev).ok()?;
    let path = path.to_string_lossy();
    let by_path = [
        ("/usb", "usb"),
        ("/end_device-", "sas"),
        ("/rport-", "fc"),
        ("/session", "iscsi"),
        ("/ata", "sata"),
    ];
    by_path
        .iter()
        .find(|(marker, _)| path.contains(marker))
        .map(|(_, t)| t.to_string())
}

/// The unit serial number VPD page (0x80): 4 header bytes, then the serial,
/// space padded.
fn vpd_serial(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let body = page.get(4..4 + len).unwrap_or(&page[4..]);
    let text = String::from_utf8_lossy(body);
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_string())
}

/// WWN fields as udev names them (ID_WWN, ID_WWN_WITH_EXTENSION,
/// ID_WWN_VENDOR_EXTENSION).
#[derive(Debug, PartialEq)]
struct Wwn {
    wwn: String,
    with_extension: String,
    vendor_extension: Option<String>,
}

impl Wwn {
    /// From the kernel's `wwid` attribute: "naa.<hex>" (SCSI/SAS; 32 hex digits
    /// for the registered extended format, whose second half is the vendor
    /// extension), "eui.<hex>", or NVMe identifiers, which udev passes through.
    fn from_wwid(dev_name: &str, wwid: &str) -> Option<Wwn> {
        let wwid = wwid.trim();
        if dev_name.starts_with("nvme") {
            return Some(Wwn {
                wwn: wwid.to_string(),
                with_extension: wwid.to_string(),
                vendor_extension: None,
            });
        }
        let hex = wwid
            .strip_prefix("naa.")
            .or_else(|| wwid.strip_prefix("eui."))?
            .to_ascii_lowercase();
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        if hex.len() > 16 {
            let (id, ext) = hex.split_at(16);
            Some(Wwn {
                wwn: format!("0x{id}"),
                with_extension: format!("0x{hex}"),
                vendor_extension: Some(format!("0x{ext}")),
            })
        } else {
            Some(Wwn {
                wwn: format!("0x{hex}"),
                with_extension: format!("0x{hex}"),
                vendor_extension: None,
            })
        }
    }
}

fn is_hctl(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// The /dev/disk/by-path link pointing at the disk itself (not a partition), when
/// udev runs; the deploy ramdisk without udev has none.
fn by_path_link(root: &Path, name: &str) -> Option<String> {
    let dir = root.join("dev/disk/by-path");
    let mut links: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            (target.file_name()?.to_str()? == name).then(|| e.file_name().into_string().ok())?
        })
        .collect();
    links.sort();
    links
        .into_iter()
        .next()
        .map(|l| format!("/dev/disk/by-path/{l}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wwn_forms() {
        let naa = Wwn::from_wwid("sda", "naa.5000C500A1B2C3D4").unwrap();
        assert_eq!(naa.wwn, "0x5000c500a1b2c3d4");
        assert_eq!(naa.with_extension, naa.wwn);
        assert_eq!(naa.vendor_extension, None);
        let ext = Wwn::from_wwid("sdb", "naa.600508b1001c4d4c5e2bd5c9a0b1c2d3").unwrap();
        assert_eq!(ext.wwn, "0x600508b1001c4d4c");
        assert_eq!(ext.vendor_extension.as_deref(), Some("0x5e2bd5c9a0b1c2d3"));
        assert_eq!(ext.with_extension, "0x600508b1001c4d4c5e2bd5c9a0b1c2d3");
        let nvme = Wwn::from_wwid("nvme0n1", "eui.0025385b71b0a1c2").unwrap();
        assert_eq!(nvme.wwn, "eui.0025385b71b0a1c2");
        assert_eq!(Wwn::from_wwid("sdc", "t10.ATA     QEMU HARDDISK"), None);
        assert_eq!(Wwn::from_wwid("sdc", "naa.xyz"), None);
    }

    #[test]
    fn vpd_and_hctl() {
        let mut page = vec![0, 0x80, 0, 10];
        page.extend_from_slice(b"  S3Z1NB0K\0\0");
        assert_eq!(vpd_serial(&page).as_deref(), Some("S3Z1NB0K"));
        assert_eq!(vpd_serial(&[0, 0x83, 0, 0]), None);
        assert_eq!(
            vpd_serial(&[0, 0x80, 0xff, 0xff, b'A']).as_deref(),
            Some("A")
        );
        assert!(is_hctl("0:0:0:0"));
        assert!(is_hctl("12:0:3:1"));
        assert!(!is_hctl("virtio1"));
        assert!(!is_hctl("0:0::0"));
    }
}

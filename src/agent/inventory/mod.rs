//! The hardware inventory the agent sends to the conductor, read straight from
//! /proc and /sys (the deploy ramdisk has busybox, no lshw or lsblk).
//!
//! Field names are those of ironic-python-agent's inventory, so the conductor and
//! introspection rules can address `cpu.count`, `memory.physical_mb`,
//! `disks[].size` and so on. Every collector takes the root of the tree to read
//! (`/` on a node; a fake sysfs tree in tests) and tolerates missing files: an
//! attribute the kernel does not expose is `null`, not an error.

mod block;
mod cpu;
mod dmi;
mod net;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use block::collect_disks;
pub use cpu::{collect_cpu, collect_memory};
pub use dmi::collect_system_vendor;
pub use net::collect_interfaces;

/// Everything the agent reports about its machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub cpu: Cpu,
    pub memory: Memory,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
    pub system_vendor: SystemVendor,
    pub boot: Boot,
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Logical CPUs (the `processor` entries of /proc/cpuinfo).
    pub count: u32,
    #[serde(default)]
    pub model_name: Option<String>,
    /// MHz as text, as IPA reports it: the maximum cpufreq frequency when known,
    /// else the current "cpu MHz".
    #[serde(default)]
    pub frequency: Option<String>,
    /// `uname -m` spelling: x86_64, aarch64, ...
    pub architecture: String,
    #[serde(default)]
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Bytes usable by the kernel (MemTotal of /proc/meminfo).
    pub total: u64,
    /// MiB of installed memory: the sum of the SMBIOS memory devices when the
    /// firmware tables are readable, else MemTotal rounded up (see [`collect_memory`]).
    #[serde(default)]
    pub physical_mb: Option<u64>,
}

/// One whole disk (partitions, loop, ram and optical devices are not listed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Device path, "/dev/vda".
    pub name: String,
    /// Bytes.
    pub size: u64,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub wwn: Option<String>,
    #[serde(default)]
    pub wwn_with_extension: Option<String>,
    #[serde(default)]
    pub wwn_vendor_extension: Option<String>,
    pub rotational: bool,
    /// SCSI host:channel:target:lun, for SCSI-attached disks.
    #[serde(default)]
    pub hctl: Option<String>,
    /// A /dev/disk/by-path link naming this disk, when udev made one.
    #[serde(default)]
    pub by_path: Option<String>,
    /// Transport as lsblk names it: sata, sas, nvme, usb, iscsi, fc, mmc.
    #[serde(default)]
    pub tran: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac_address: String,
    #[serde(default)]
    pub ipv4_address: Option<String>,
    #[serde(default)]
    pub ipv6_address: Option<String>,
    #[serde(default)]
    pub has_carrier: bool,
    /// Always null: the ramdisk does not listen for LLDP.
    #[serde(default)]
    pub lldp: Option<serde_json::Value>,
    /// PCI device id ("0x1000") of the NIC.
    #[serde(default)]
    pub product: Option<String>,
    /// PCI vendor id ("0x1af4") of the NIC.
    #[serde(default)]
    pub vendor: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemVendor {
    #[serde(default)]
    pub product_name: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub manufacturer: Option<String>,
    #[serde(default)]
    pub firmware: Firmware,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub build_date: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Uefi,
    Bios,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    pub current_boot_mode: BootMode,
    /// MAC address of the interface the machine PXE-booted from (the BOOTIF=
    /// argument of the kernel command line), when there is one.
    #[serde(default)]
    pub pxe_interface: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Parse { path: PathBuf, problem: String },
}

/// Collect the whole inventory of the system whose root is `root` ("/" on a node).
pub fn collect_inventory(root: &Path) -> Result<Inventory, InventoryError> {
    Ok(Inventory {
        cpu: collect_cpu(root)?,
        memory: collect_memory(root)?,
        disks: collect_disks(root)?,
        interfaces: collect_interfaces(root)?,
        system_vendor: collect_system_vendor(root),
        boot: collect_boot(root),
        hostname: read_trimmed(&root.join("proc/sys/kernel/hostname")),
    })
}

/// Boot mode (UEFI when the kernel exposes /sys/firmware/efi) and PXE interface.
pub fn collect_boot(root: &Path) -> Boot {
    let current_boot_mode = if root.join("sys/firmware/efi").is_dir() {
        BootMode::Uefi
    } else {
        BootMode::Bios
    };
    let pxe_interface =
        read_trimmed(&root.join("proc/cmdline")).and_then(|cmdline| bootif_mac(&cmdline));
    Boot {
        current_boot_mode,
        pxe_interface,
    }
}

/// PXELINUX and iPXE pass the boot NIC as `BOOTIF=01-aa-bb-cc-dd-ee-ff` (the
/// leading 01 is the ARP hardware type of Ethernet).
fn bootif_mac(cmdline: &str) -> Option<String> {
    let value = cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("BOOTIF="))?;
    let octets: Vec<&str> = value.split(['-', ':']).collect();
    let mac = match octets.len() {
        7 => &octets[1..],
        6 => &octets[..],
        _ => return None,
    };
    if mac
        .iter()
        .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Some(mac.join(":").to_ascii_lowercase())
    } else {
        None
    }
}

/// The names in sysfs folder `dir` that `keep` accepts, sorted.
pub(crate) fn sorted_names(
    dir: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>, InventoryError> {
    let read_err = |source| InventoryError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if let Ok(name) = entry.file_name().into_string()
            && keep(&name)
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// A sysfs attribute as text without surrounding whitespace; `None` when it is
/// missing, unreadable, empty or not UTF-8.
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootif_forms() {
        assert_eq!(
            bootif_mac("quiet BOOTIF=01-52-54-00-AB-cd-01 ip=dhcp").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(
            bootif_mac("BOOTIF=52:54:00:ab:cd:01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(bootif_mac("BOOTIF=01-52-54"), None);
        assert_eq!(bootif_mac("BOOTIF=01-zz-54-00-ab-cd-01"), None);
        assert_eq!(bootif_mac("root=/dev/sda"), None);
    }
}

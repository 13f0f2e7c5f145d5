//! A simulated node for tests and benchmarks: a synthetic inventory (one NIC
//! with the given MAC, one disk `/dev/sim0` backed by a file of the given size)
//! and commands that write to that file.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::inventory::Disk;
use super::run::{Host, select_disk, write_configdrive};
use crate::deploy::protocol::ConfigdriveParams;

/// The simulated disk's device name in the inventory.
pub const SIM_DISK: &str = "/dev/sim0";

#[derive(Debug, Clone)]
pub struct SimulatedNode {
    pub mac: String,
    pub disk: PathBuf,
    /// Disk size in bytes; the file is extended (sparse) to it.
    pub disk_size: u64,
    pub memory_mb: u64,
    pub cpus: u64,
}

impl SimulatedNode {
    fn serial(&self) -> String {
        format!("SIM{}", self.mac.replace(':', "").to_ascii_uppercase())
    }
}

impl Host for SimulatedNode {
    fn inventory(&self) -> Result<Value, String> {
        Ok(json!({
            "cpu": {"count": self.cpus, "model_name": "kiln simulated CPU", "architecture": "x86_64"},
            "memory": {"total": self.memory_mb << 20, "physical_mb": self.memory_mb},
            "disks": [{
                "name": SIM_DISK, "size": self.disk_size, "model": "kiln-sim", "vendor": "kiln",
                "serial": self.serial(), "wwn": null, "rotational": false,
            }],
            "interfaces": [{"name": "eth0", "mac_address": self.mac}],
            "system_vendor": {
                "manufacturer": "kiln", "product_name": "simulated node",
                "serial_number": self.serial(),
            },
            "boot": {"current_boot_mode": "uefi"},
        }))
    }

    fn macs(&self) -> Result<Vec<String>, String> {
        Ok(vec![self.mac.clone()])
    }

    fn root_disk(&self, hints: &Map<String, Value>) -> Result<PathBuf, String> {
        let inventory = self.inventory()?;
        let disks: Vec<Disk> = serde_json::from_value(inventory["disks"].clone())
            .map_err(|e| format!("simulated inventory: {e}"))?;
        select_disk(&disks, hints)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.disk)
            .map_err(|e| format!("{}: {e}", self.disk.display()))?;
        let size = file
            .metadata()
            .map_err(|e| format!("{}: {e}", self.disk.display()))?
            .len();
        if size < self.disk_size {
            file.set_len(self.disk_size)
                .map_err(|e| format!("{}: {e}", self.disk.display()))?;
        }
        Ok(self.disk.clone())
    }

    fn write_configdrive(&self, disk: &Path, params: &ConfigdriveParams) -> Result<Value, String> {
        write_configdrive(disk, params)
    }

    fn power_off(&self) {}
}

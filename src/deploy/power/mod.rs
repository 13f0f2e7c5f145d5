//! Power drivers: how the conductor switches a node on and off and chooses
//! what it boots from (Ironic's power and management interfaces in one trait).
//!
//! `manual` asks an operator; `qemu` runs virtual nodes for development and
//! tests; `ipmi` runs ipmitool against a BMC; `redfish` speaks Redfish to one.

pub mod ipmi;
pub mod manual;
pub mod qemu;
pub mod redfish;
pub mod vnode;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Whether a node is powered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ironic's names, which operators know from `baremetal node list`.
        f.write_str(match self {
            PowerState::On => "power on",
            PowerState::Off => "power off",
        })
    }
}

/// What a node boots from at its next power on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    /// The deploy ramdisk, over the network (PXE on real hardware).
    Network,
    /// The node's own disk.
    Disk,
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootDevice::Network => "network",
            BootDevice::Disk => "disk",
        })
    }
}

impl FromStr for BootDevice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "network" | "pxe" => Ok(BootDevice::Network),
            "disk" => Ok(BootDevice::Disk),
            other => Err(format!(
                "boot device {other:?}: expected network (or pxe) or disk"
            )),
        }
    }
}

/// A power operation that failed; names the node and the driver.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("node {node}: {driver} power: {message}")]
    Failed {
        node: String,
        driver: &'static str,
        message: String,
    },
    #[error("node {node}: {driver} power: {what}: {source}")]
    Io {
        node: String,
        driver: &'static str,
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, PowerError>;

/// One node's power and boot control. Implementations are shared between
/// conductor threads, so every method takes `&self`.
pub trait PowerDriver: Send + Sync {
    /// The driver's name as nodes name it (`pm_type`): "qemu", "manual", ...
    fn driver_name(&self) -> &'static str;
    /// The node's current power state, asked from the node's controller.
    fn power_state(&self) -> Result<PowerState>;
    /// Switch the node on; nothing happens when it is on already.
    fn power_on(&self) -> Result<()>;
    /// Switch the node off hard; nothing happens when it is off already.
    fn power_off(&self) -> Result<()>;
    /// Off, then on: the node boots again from its current boot device.
    fn reboot(&self) -> Result<()>;
    /// Boot from `device` at the next power on; from then on too when
    /// `persistent`, else only once.
    fn set_boot_device(&self, device: BootDevice, persistent: bool) -> Result<()>;
    /// Where the conductor connects to reach an iSCSI portal (`ADDRESS:PORT`)
    /// that the node's agent reported as the node sees it. On a routed deploy
    /// network that is the same address; a driver that puts its nodes behind
    /// a translation (qemu's user network) maps it to its forward.
    fn conductor_portal(&self, reported: &str) -> Result<String> {
        Ok(reported.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_device_names_round_trip_and_bad_names_are_refused() {
        for d in [BootDevice::Network, BootDevice::Disk] {
            assert_eq!(d.to_string().parse::<BootDevice>().unwrap(), d);
        }
        assert_eq!("pxe".parse::<BootDevice>().unwrap(), BootDevice::Network);
        let err = "cdrom".parse::<BootDevice>().unwrap_err();
        assert!(err.contains("cdrom"), "{err}");
    }
}

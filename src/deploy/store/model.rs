//! The records the store keeps: nodes (with their driver, hardware properties and
//! instance data), their timeline events and in-flight deadlines.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::deploy::state::{Event, ProvisionState};

/// How the conductor controls a node's power and boot device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Ipmi,
    Redfish,
    Manual,
    Qemu,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipmi => "ipmi",
            Self::Redfish => "redfish",
            Self::Manual => "manual",
            Self::Qemu => "qemu",
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Driver {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "ipmi" => Ok(Self::Ipmi),
            "redfish" => Ok(Self::Redfish),
            "manual" => Ok(Self::Manual),
            "qemu" => Ok(Self::Qemu),
            other => Err(format!("unknown driver \"{other}\"")),
        }
    }
}

/// Firmware a qemu node boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QemuFirmware {
    Uefi,
    Bios,
}

/// Driver settings: BMC address and credentials, or the qemu VM's definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_password: Option<String>,
    /// Redfish ComputerSystem path or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_system_id: Option<String>,
    /// qemu: the node's disk image file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_firmware: Option<QemuFirmware>,
    /// redfish: "true" (the default: the system's web roots), "false" (no
    /// verification), or the path of a PEM file of CA certificates to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redfish_verify_ca: Option<String>,
    /// redfish: "basic" (the default) or "session" authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redfish_auth_type: Option<String>,
}

impl DriverInfo {
    /// A copy safe to show to operators: the BMC password is masked.
    pub fn redacted(&self) -> DriverInfo {
        let mut copy = self.clone();
        if copy.pm_password.is_some() {
            copy.pm_password = Some("******".to_string());
        }
        copy
    }
}

/// Hardware properties, from the import file or derived from an inventory.
/// Unknown keys (set by introspection rules) are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Size of the root disk in whole GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_gb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_arch: Option<String>,
    #[serde(default)]
    pub capabilities: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Properties {
    /// The node's profile capability (TripleO's role tag), if any.
    pub fn profile(&self) -> Option<&str> {
        self.capabilities.get("profile").map(String::as_str)
    }
}

/// What the node is (to be) deployed with: filled in by the deploy plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Image file name inside the conductor's image directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub root_device: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_interface: Option<String>,
}

/// Power as last seen by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerState {
    #[serde(rename = "power on")]
    On,
    #[serde(rename = "power off")]
    Off,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "power on",
            Self::Off => "power off",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<PowerState> {
        match text {
            "power on" => Some(Self::On),
            "power off" => Some(Self::Off),
            _ => None,
        }
    }
}

/// Image streaming progress reported by the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_step: Option<String>,
    pub bytes_written: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
}

/// A node to enroll, as produced by `import`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNode {
    pub name: String,
    pub driver: Driver,
    pub driver_info: DriverInfo,
    pub properties: Properties,
    /// Lower-case colon-separated MAC addresses.
    pub macs: Vec<String>,
}

/// A node as stored. The agent token is never part of it (only whether one is set).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub uuid: Uuid,
    pub name: String,
    pub driver: Driver,
    pub driver_info: DriverInfo,
    pub properties: Properties,
    pub macs: Vec<String>,
    pub provision_state: ProvisionState,
    pub target_provision_state: Option<ProvisionState>,
    pub power_state: Option<PowerState>,
    pub last_error: Option<String>,
    pub instance_info: InstanceInfo,
    pub has_agent_token: bool,
    /// Unix seconds (UTC).
    pub last_heartbeat: Option<i64>,
    /// Unix seconds (UTC) when the node entered `provision_state`.
    pub state_entered_at: i64,
    pub progress: Progress,
    pub created_at: i64,
}

impl Node {
    /// A copy safe to show to operators (BMC password masked).
    pub fn redacted(&self) -> Node {
        let mut copy = self.clone();
        copy.driver_info = self.driver_info.redacted();
        copy
    }
}

/// One line of a node's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEvent {
    pub time: i64,
    pub from_state: ProvisionState,
    pub to_state: ProvisionState,
    pub event: Event,
    pub message: Option<String>,
}

/// A node in an in-flight state with the time its state times out.
#[derive(Debug, Clone, PartialEq)]
pub struct InFlight {
    pub node: Node,
    /// Unix seconds (UTC) after which the `timeout` event applies.
    pub deadline: i64,
}

impl InFlight {
    pub fn is_timed_out(&self, now: i64) -> bool {
        now >= self.deadline
    }
}

/// A stored inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredInventory {
    pub inventory: Value,
    pub collected_at: i64,
}

/// A stored deployment plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub name: String,
    pub plan: Value,
    pub created_at: i64,
    pub updated_at: i64,
}

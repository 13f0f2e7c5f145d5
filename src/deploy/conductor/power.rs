//! One power driver per node, made from the node's driver and driver_info the
//! first time the conductor needs it and kept for the conductor's life.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::{ConductorError, Result};
use crate::deploy::power::ipmi::{IpmiDriver, IpmiSettings};
use crate::deploy::power::manual::ManualDriver;
use crate::deploy::power::qemu::{Firmware, QemuDriver, QemuNode};
use crate::deploy::power::redfish::{RedfishAuth, RedfishDriver, RedfishSettings, VerifyCa};
use crate::deploy::power::{PowerDriver, PowerState};
use crate::deploy::store::{self, Driver, Node, QemuFirmware};

/// What the conductor needs to run qemu nodes (the deploy ramdisk they boot).
#[derive(Debug, Clone)]
pub struct QemuSettings {
    pub deploy_kernel: PathBuf,
    pub deploy_initramfs: PathBuf,
    /// Where each VM's pid file, QMP socket and console log live.
    pub state_dir: PathBuf,
    /// The conductor's port on 127.0.0.1, relayed to http://10.0.2.100 in the VM.
    pub conductor_port: u16,
    pub kernel_append: String,
}

pub struct Drivers {
    qemu: Option<QemuSettings>,
    by_node: Mutex<HashMap<Uuid, Arc<dyn PowerDriver>>>,
}

impl Drivers {
    pub fn new(qemu: Option<QemuSettings>) -> Self {
        Drivers {
            qemu,
            by_node: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, node: &Node) -> Result<Arc<dyn PowerDriver>> {
        let mut map = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(driver) = map.get(&node.uuid) {
            return Ok(Arc::clone(driver));
        }
        let driver = self.make(node)?;
        map.insert(node.uuid, Arc::clone(&driver));
        Ok(driver)
    }

    fn make(&self, node: &Node) -> Result<Arc<dyn PowerDriver>> {
        match node.driver {
            Driver::Manual => {
                // The last state the conductor recorded is the best guess after a restart.
                let state = match node.power_state {
                    Some(store::PowerState::On) => PowerState::On,
                    _ => PowerState::Off,
                };
                Ok(Arc::new(ManualDriver::new(&node.name, state)))
            }
            Driver::Qemu => {
                let settings = self.qemu.as_ref().ok_or_else(|| {
                    ConductorError::BadRequest(format!(
                        "node {} uses the qemu driver; start the conductor with \
                         --deploy-kernel and --deploy-initramfs",
                        node.name
                    ))
                })?;
                let info = &node.driver_info;
                let missing = |field: &str| {
                    ConductorError::BadRequest(format!(
                        "node {}: qemu driver needs {field}",
                        node.name
                    ))
                };
                let qemu_node = QemuNode {
                    name: node.name.clone(),
                    disk: info
                        .qemu_disk
                        .clone()
                        .ok_or_else(|| missing("qemu_disk"))?
                        .into(),
                    disk_format: "raw".into(),
                    mac: node
                        .macs
                        .first()
                        .cloned()
                        .ok_or_else(|| missing("a port MAC"))?,
                    memory_mb: info
                        .qemu_memory_mb
                        .or(node.properties.memory_mb)
                        .unwrap_or(1024)
                        .try_into()
                        .unwrap_or(u32::MAX),
                    cpus: info.qemu_cpus.unwrap_or(1),
                    firmware: match info.qemu_firmware {
                        Some(QemuFirmware::Bios) => Firmware::Bios,
                        _ => Firmware::Uefi,
                    },
                    state_dir: settings.state_dir.clone(),
                    deploy_kernel: settings.deploy_kernel.clone(),
                    deploy_initramfs: settings.deploy_initramfs.clone(),
                    kernel_append: settings.kernel_append.clone(),
                    conductor_port: settings.conductor_port,
                    qemu_binary: "qemu-system-x86_64".into(),
                    ovmf_dir: "/usr/share/OVMF".into(),
                    relay: None,
                };
                Ok(Arc::new(QemuDriver::new(qemu_node)?))
            }
            Driver::Ipmi => {
                let (addr, user, password) = bmc_credentials(node)?;
                let mut settings = IpmiSettings::new(addr, user, password);
                if let Some(port) = node.driver_info.pm_port {
                    settings.port = port;
                }
                Ok(Arc::new(IpmiDriver::new(&node.name, settings)))
            }
            Driver::Redfish => {
                let (addr, user, password) = bmc_credentials(node)?;
                let info = &node.driver_info;
                let mut settings = RedfishSettings::new(addr, info.pm_port, user, password);
                settings.system_id = info.pm_system_id.clone();
                settings.verify = VerifyCa::from_driver_info(info.redfish_verify_ca.as_deref());
                if info.redfish_auth_type.as_deref() == Some("session") {
                    settings.auth = RedfishAuth::Session;
                }
                let driver = RedfishDriver::new(&node.name, settings)
                    .map_err(|e| ConductorError::BadRequest(e.to_string()))?;
                Ok(Arc::new(driver))
            }
        }
    }
}

/// pm_addr, pm_user and pm_password, which BMC drivers cannot do without.
fn bmc_credentials<'a>(node: &'a Node) -> Result<(&'a str, &'a str, &'a str)> {
    let info = &node.driver_info;
    let field = |value: Option<&'a str>, name: &str| {
        value.ok_or_else(|| {
            ConductorError::BadRequest(format!(
                "node {}: the {} driver needs {name}",
                node.name, node.driver
            ))
        })
    };
    Ok((
        field(info.pm_addr.as_deref(), "pm_addr")?,
        field(info.pm_user.as_deref(), "pm_user")?,
        field(info.pm_password.as_deref(), "pm_password")?,
    ))
}

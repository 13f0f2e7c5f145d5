//! A virtual node behind an emulated BMC (`kiln vnode`), the way virtualbmc
//! fronts a libvirt domain: a BMC emulator (ipmi_sim's chassis control
//! script, sushy-emulator's systems driver) runs one command per power or
//! boot request, and that command drives the same VM the `qemu` power driver
//! starts, through [`QemuDriver`]. "pxe" is the driver's network boot (the
//! deploy ramdisk with the conductor's URL), "disk" its firmware boot.
//!
//! Each command is a new process, so the node's state directory carries a
//! lock file that keeps two commands for one node from overlapping.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::qemu::{Firmware, QemuDriver, QemuNode};
use super::{BootDevice, PowerDriver, PowerError, PowerState};

/// The boot mode a BMC asks for with a boot device (Redfish's
/// BootSourceOverrideMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    Uefi,
    Legacy,
}

/// One request from a BMC emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VnodeAction {
    PowerOn,
    PowerOff,
    /// Off, then on: the VM starts again from its next boot device.
    Reset,
    Status,
    BootDevice {
        device: BootDevice,
        persistent: bool,
        /// When given, the VM's firmware must be able to boot that way.
        mode: Option<BootMode>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum VnodeError {
    #[error("vnode {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vnode {path}: not a qemu node definition: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("vnode {path}: locking: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vnode {node}: boot mode {wanted:?} asked, but its firmware is {firmware:?}")]
    Mode {
        node: String,
        wanted: BootMode,
        firmware: Firmware,
    },
    #[error(transparent)]
    Power(#[from] PowerError),
}

/// Reads a [`QemuNode`] definition (JSON) and makes its driver.
pub fn load(path: &Path) -> Result<QemuDriver, VnodeError> {
    let bytes = fs::read(path).map_err(|source| VnodeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let node: QemuNode = serde_json::from_slice(&bytes).map_err(|source| VnodeError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(QemuDriver::new(node)?)
}

/// Runs `action` on the node defined in `path`, holding the node's lock.
/// Returns the power state for [`VnodeAction::Status`], None otherwise.
pub fn run(path: &Path, action: VnodeAction) -> Result<Option<PowerState>, VnodeError> {
    let driver = load(path)?;
    let _lock = NodeLock::take(&driver)?;
    match action {
        VnodeAction::PowerOn => driver.power_on()?,
        VnodeAction::PowerOff => driver.power_off()?,
        VnodeAction::Reset => driver.reboot()?,
        VnodeAction::Status => return Ok(Some(driver.power_state()?)),
        VnodeAction::BootDevice {
            device,
            persistent,
            mode,
        } => {
            let firmware = driver.node().firmware;
            let fits = match mode {
                None => true,
                Some(BootMode::Uefi) => firmware == Firmware::Uefi,
                Some(BootMode::Legacy) => firmware == Firmware::Bios,
            };
            if let (false, Some(wanted)) = (fits, mode) {
                return Err(VnodeError::Mode {
                    node: driver.node().name.clone(),
                    wanted,
                    firmware,
                });
            }
            driver.set_boot_device(device, persistent)?;
        }
    }
    Ok(None)
}

/// An exclusive flock on `NAME.vnode.lock` in the node's state directory,
/// released when the process ends or this is dropped.
struct NodeLock {
    _file: File,
}

impl NodeLock {
    fn take(driver: &QemuDriver) -> Result<NodeLock, VnodeError> {
        let node = driver.node();
        let path = node.state_dir.join(format!("{}.vnode.lock", node.name));
        let lock_error = |source| VnodeError::Lock {
            path: path.clone(),
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_error)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(lock_error(std::io::Error::last_os_error()));
        }
        Ok(NodeLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_node(dir: &Path, firmware: &str) -> PathBuf {
        let path = dir.join("node.json");
        let node = serde_json::json!({
            "name": "vn-1", "disk": dir.join("disk.raw"), "mac": "52:54:00:12:34:57",
            "memory_mb": 128, "firmware": firmware, "state_dir": dir.join("state"),
            "deploy_kernel": dir.join("k"), "deploy_initramfs": dir.join("i"),
            "kernel_append": "console=ttyS0", "conductor_port": 8080, "relay": "/bin/true",
        });
        fs::write(&path, node.to_string()).unwrap();
        path
    }

    #[test]
    fn boot_device_reaches_the_qemu_driver_and_a_wrong_mode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_node(dir.path(), "uefi");
        let boot = |device, persistent, mode| {
            run(
                &path,
                VnodeAction::BootDevice {
                    device,
                    persistent,
                    mode,
                },
            )
        };
        boot(BootDevice::Disk, true, Some(BootMode::Uefi)).unwrap();
        assert_eq!(
            load(&path).unwrap().next_boot_device().unwrap(),
            BootDevice::Disk
        );
        boot(BootDevice::Network, false, None).unwrap();
        assert_eq!(
            load(&path).unwrap().next_boot_device().unwrap(),
            BootDevice::Network
        );
        let err = boot(BootDevice::Disk, true, Some(BootMode::Legacy))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vn-1") && err.contains("Legacy"), "{err}");
        // The refused request changed nothing.
        assert_eq!(
            load(&path).unwrap().next_boot_device().unwrap(),
            BootDevice::Network
        );
        assert_eq!(
            run(&path, VnodeAction::Status).unwrap(),
            Some(PowerState::Off)
        );
    }

    #[test]
    fn a_bad_definition_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        fs::write(&path, r#"{"name": "x"}"#).unwrap();
        let err = run(&path, VnodeAction::Status).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("missing field"),
            "{err}"
        );
        let err = run(&dir.path().join("none.json"), VnodeAction::Status)
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.json"), "{err}");
    }
}

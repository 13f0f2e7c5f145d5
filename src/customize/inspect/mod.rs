//! inspect: what operating system a guest root holds, read from its files
//! (os-release, ELF headers, hostname, package databases, fstab), as
//! virt-inspector reports it.

mod elf;
mod fstab;
pub mod packages;

use serde::Serialize;

use crate::customize::commands::PackageManager;
use crate::customize::guest::{GuestError, GuestRoot};
use crate::customize::osinfo::OsRelease;

pub use packages::Package;

/// A filesystem of the image, as the caller found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    pub device: String,
    pub fstype: String,
    pub label: Option<String>,
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mountpoint {
    pub mountpoint: String,
    pub device: String,
    pub fstype: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct OsInfo {
    /// The device holding this root (as the caller named it).
    pub root: String,
    pub distro: String,
    pub version: String,
    pub major_version: Option<u32>,
    pub minor_version: Option<u32>,
    pub product_name: String,
    pub arch: Option<String>,
    pub hostname: Option<String>,
    pub package_format: Option<String>,
    pub package_management: Option<String>,
    pub mountpoints: Vec<Mountpoint>,
    pub filesystems: Vec<Filesystem>,
    pub packages: Vec<Package>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("{file}: {reason}")]
    Packages { file: String, reason: String },
    #[error(transparent)]
    Customize(#[from] crate::customize::CustomizeError),
}

/// Inspect the guest tree at `root` (`root_device` names it in the output).
pub fn inspect(
    root: &std::path::Path,
    root_device: &str,
    filesystems: &[Filesystem],
) -> Result<OsInfo, InspectError> {
    let g = GuestRoot::open(root)?;
    let os = OsRelease::read(&g)?.unwrap_or_default();
    let (format, pkgs) = packages::installed(&g)?;
    Ok(OsInfo {
        root: root_device.to_string(),
        distro: if os.id.is_empty() {
            "unknown".into()
        } else {
            os.id.clone()
        },
        version: os.version_id.clone(),
        major_version: os.major_version(),
        minor_version: os.minor_version(),
        product_name: os.pretty_name.clone(),
        arch: elf::guest_arch(&g)?,
        hostname: hostname(&g)?,
        package_format: format.map(String::from),
        package_management: PackageManager::detect(&g)?.map(|p| p.name().to_string()),
        mountpoints: fstab::mountpoints(&g)?,
        filesystems: filesystems.to_vec(),
        packages: pkgs,
    })
}

fn hostname(g: &GuestRoot) -> Result<Option<String>, GuestError> {
    let first_line = g.read_string_opt("/etc/hostname")?.and_then(|text| {
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
    });
    if first_line.is_some() {
        return Ok(first_line);
    }
    if let Some(text) = g.read_string_opt("/etc/sysconfig/network")? {
        for line in text.lines() {
            if let Some(v) = line.trim().strip_prefix("HOSTNAME=") {
                return Ok(Some(v.trim_matches('"').to_string()));
            }
        }
    }
    Ok(None)
}

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
    let mut os = OsRelease::read(&g)?.unwrap_or_default();
    if let Some(point) = debian_point_release(&g, &os)? {
        os.version_id = point;
    }
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

/// Debian's os-release carries only the major version (VERSION_ID="12"); the
/// point release ("12.15") is in /etc/debian_version, where virt-inspector
/// reads it too. Testing and unstable have a codename there ("trixie/sid"),
/// which is no version: kept out, as is a major that disagrees.
fn debian_point_release(g: &GuestRoot, os: &OsRelease) -> Result<Option<String>, GuestError> {
    if os.id != "debian" || os.minor_version().is_some() {
        return Ok(None);
    }
    let Some(text) = g.read_string_opt("/etc/debian_version")? else {
        return Ok(None);
    };
    let point = text.trim();
    let Some((major, minor)) = point.split_once('.') else {
        return Ok(None);
    };
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let same_major = os.version_id.is_empty() || os.version_id == major;
    Ok((numeric(major) && numeric(minor) && same_major).then(|| point.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn point_release(os_release: &str, debian_version: Option<&str>) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        if let Some(text) = debian_version {
            std::fs::write(dir.path().join("etc/debian_version"), text).unwrap();
        }
        let g = GuestRoot::open(dir.path()).unwrap();
        debian_point_release(&g, &OsRelease::parse(os_release)).unwrap()
    }

    #[test]
    fn debian_point_release_comes_from_debian_version() {
        let bookworm = "ID=debian\nVERSION_ID=\"12\"\n";
        assert_eq!(
            point_release(bookworm, Some("12.15\n")).as_deref(),
            Some("12.15")
        );
        // Codenames of testing/unstable, a disagreeing major, no file at all.
        assert_eq!(point_release(bookworm, Some("trixie/sid\n")), None);
        assert_eq!(point_release(bookworm, Some("11.9\n")), None);
        assert_eq!(point_release(bookworm, None), None);
        // Other distributions keep their os-release version.
        assert_eq!(
            point_release("ID=ubuntu\nVERSION_ID=\"22.04\"\n", Some("bookworm/sid")),
            None
        );
        assert_eq!(
            point_release("ID=raspbian\nVERSION_ID=\"12\"\n", Some("12.1")),
            None
        );
    }
}

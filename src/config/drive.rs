//! The config drive: a FAT or ISO9660 filesystem labelled config-2 holding
//! `openstack/latest/` (meta_data.json, network_data.json, user_data and
//! kiln's role metadata kiln_config.json). FAT is read by kiln itself, so
//! no vfat driver is needed; ISO9660 is mounted read-only in a private
//! mount namespace that dies with its helper process.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::collect::{CollectError, Collector};
use super::value::{self, Value};
use crate::format::fat::read::FatVolume;

/// The label a config drive carries (compared without case).
pub const CONFIG_DRIVE_LABEL: &str = "config-2";
const LATEST: &str = "openstack/latest";

/// Where the config drive's files are.
pub enum DriveLocation {
    /// A folder holding `openstack/latest/` (an already mounted drive).
    Folder(PathBuf),
    /// A block device or image file with a FAT or ISO9660 filesystem.
    Device(PathBuf),
    /// Look for a device labelled config-2.
    Probe,
}

/// The config drive as one metadata object: kiln's role metadata at the top
/// level, the OpenStack files under `meta_data`, `network_data` and
/// `user_data` (text).
pub struct ConfigDrive {
    pub location: DriveLocation,
}

/// The ISO9660 volume identifier, if `dev` holds ISO9660.
fn iso9660_label(dev: &mut File) -> Option<String> {
    let mut pvd = [0u8; 2048];
    dev.seek(SeekFrom::Start(16 * 2048)).ok()?;
    dev.read_exact(&mut pvd).ok()?;
    (pvd[0] == 1 && &pvd[1..6] == b"CD001")
        .then(|| String::from_utf8_lossy(&pvd[40..72]).trim_end().to_string())
}

/// The filesystem label of a device or image: FAT or ISO9660.
pub fn probe_label(path: &Path) -> Option<String> {
    let mut dev = File::open(path).ok()?;
    if let Some(label) = iso9660_label(&mut dev) {
        return Some(label);
    }
    FatVolume::open(dev).ok()?.label().ok()
}

/// A device labelled config-2: udev's by-label links when present, else every
/// block device in /sys/class/block, whole disks and partitions, in name order.
pub fn find_config_drive() -> Option<PathBuf> {
    for label in [CONFIG_DRIVE_LABEL, &CONFIG_DRIVE_LABEL.to_uppercase()] {
        let link = Path::new("/dev/disk/by-label").join(label);
        if link.exists() {
            return Some(link);
        }
    }
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| Path::new("/dev").join(n))
        .find(|dev| probe_label(dev).is_some_and(|l| l.eq_ignore_ascii_case(CONFIG_DRIVE_LABEL)))
}

fn parse_json(bytes: &[u8], path: &Path) -> Result<Value, CollectError> {
    let text = String::from_utf8_lossy(bytes);
    Value::from_json(&text).map_err(|source| CollectError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Build the drive's metadata from a reader of `openstack/latest/NAME`.
fn drive_metadata(
    origin: &Path,
    mut read: impl FnMut(&str) -> Result<Option<Vec<u8>>, CollectError>,
) -> Result<Value, CollectError> {
    let mut entries = Vec::new();
    for (key, file) in [
        ("meta_data", "meta_data.json"),
        ("network_data", "network_data.json"),
    ] {
        if let Some(bytes) = read(file)? {
            entries.push((
                key.to_string(),
                parse_json(&bytes, &origin.join(LATEST).join(file))?,
            ));
        }
    }
    if let Some(bytes) = read("user_data")? {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        entries.push(("user_data".to_string(), Value::Str(text)));
    }
    let mut doc = Value::Map(entries);
    if let Some(bytes) = read("kiln_config.json")? {
        let role = parse_json(&bytes, &origin.join(LATEST).join("kiln_config.json"))?;
        value::deep_merge(&mut doc, &role);
    }
    Ok(doc)
}

/// Read a drive whose files are visible under `root`.
pub fn read_folder(root: &Path) -> Result<Option<Value>, CollectError> {
    let latest = root.join(LATEST);
    if !latest.is_dir() {
        return Ok(None);
    }
    drive_metadata(root, |name| {
        let path = latest.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CollectError::Read { path, source }),
        }
    })
    .map(Some)
}

/// Read a FAT drive with kiln's own reader; None when it is not FAT.
fn read_fat(device: &Path) -> Result<Option<Value>, CollectError> {
    let file = File::open(device).map_err(|source| CollectError::Read {
        path: device.to_path_buf(),
        source,
    })?;
    let Ok(mut volume) = FatVolume::open(file) else {
        return Ok(None);
    };
    let fat_err = |source| CollectError::Fat {
        device: device.to_path_buf(),
        source,
    };
    drive_metadata(device, |name| {
        volume
            .read_file(&format!("{LATEST}/{name}"))
            .map_err(fat_err)
    })
    .map(Some)
}

/// Mount read-only in a private mount namespace and copy `openstack/latest`
/// out; the namespace, and so the mount, ends with the helper process.
fn read_mounted(device: &Path) -> Result<Option<Value>, CollectError> {
    let temp = tempfile::tempdir().map_err(|source| CollectError::Read {
        path: std::env::temp_dir(),
        source,
    })?;
    let (mount_point, copy) = (temp.path().join("mnt"), temp.path().join("copy"));
    let latest_copy = copy.join(LATEST);
    for dir in [&mount_point, &latest_copy] {
        std::fs::create_dir_all(dir).map_err(|source| CollectError::Read {
            path: dir.clone(),
            source,
        })?;
    }
    let script = r#"mount -r "$1" "$2" || exit 1
if [ -d "$2/openstack/latest" ]; then cp -r "$2/openstack/latest/." "$3/"; fi"#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(device)
        .arg(&mount_point)
        .arg(&latest_copy)
        .output()
        .map_err(|e| CollectError::Mount {
            device: device.to_path_buf(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(CollectError::Mount {
            device: device.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    read_folder(&copy)
}

/// Read a config drive device or image: FAT directly, anything else mounted.
pub fn read_device(device: &Path) -> Result<Option<Value>, CollectError> {
    match read_fat(device)? {
        Some(v) => Ok(Some(v)),
        None => read_mounted(device),
    }
}

impl Collector for ConfigDrive {
    fn name(&self) -> &str {
        "config_drive"
    }

    fn collect(&self) -> Result<Option<Value>, CollectError> {
        match &self.location {
            DriveLocation::Folder(root) => read_folder(root),
            DriveLocation::Device(device) => read_device(device),
            DriveLocation::Probe => match find_config_drive() {
                Some(device) => read_device(&device),
                None => Ok(None),
            },
        }
    }
}

//! The config drive: a FAT or ISO9660 filesystem labelled config-2 holding
//! `openstack/latest/` (meta_data.json, network_data.json, user_data and
//! kiln's role metadata kiln_config.json). Both are read by kiln itself, so
//! neither a vfat nor an isofs kernel driver is needed, and nothing is mounted.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::collect::{CollectError, Collector};
use super::value::{self, Value};
use crate::format::fat::read::FatVolume;
use crate::format::iso9660::{IsoReadError, IsoVolume};

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

/// The filesystem label of a device or image: ISO9660 or FAT.
pub fn probe_label(path: &Path) -> Option<String> {
    let dev = File::open(path).ok()?;
    if let Ok(volume) = IsoVolume::open(&dev) {
        return Some(volume.label().to_string());
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

/// Read an ISO9660 drive with kiln's own reader; None when it is not ISO9660.
fn read_iso(device: &Path) -> Result<Option<Value>, CollectError> {
    let file = File::open(device).map_err(|source| CollectError::Read {
        path: device.to_path_buf(),
        source,
    })?;
    let iso_err = |source| CollectError::Iso {
        device: device.to_path_buf(),
        source,
    };
    let volume = match IsoVolume::open(&file) {
        Ok(volume) => volume,
        Err(IsoReadError::NotIso(_)) => return Ok(None),
        Err(e) => return Err(iso_err(e)),
    };
    drive_metadata(device, |name| {
        volume
            .read_file(&format!("{LATEST}/{name}"))
            .map_err(iso_err)
    })
    .map(Some)
}

/// Read a config drive device or image: ISO9660 or FAT, both without mounting.
pub fn read_device(device: &Path) -> Result<Option<Value>, CollectError> {
    if let Some(v) = read_iso(device)? {
        return Ok(Some(v));
    }
    match read_fat(device)? {
        Some(v) => Ok(Some(v)),
        None => Err(CollectError::UnknownDrive {
            device: device.to_path_buf(),
        }),
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

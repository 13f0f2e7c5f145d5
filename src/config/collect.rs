//! Metadata sources, in the order their data is merged (later wins): the
//! config drive, the conductor's HTTP endpoint, local JSON files.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::value::{self, Value};

/// Labels a config drive may carry (FAT labels often read back upper case).
pub const CONFIG_DRIVE_LABELS: &[&str] = &["config-2", "CONFIG-2"];

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config drive {device} could not be mounted: {detail}")]
    Mount { device: PathBuf, detail: String },
    #[error("source {0} is not implemented yet")]
    NotImplemented(&'static str),
}

/// One metadata source. `collect` returns None when the source has nothing
/// (no config drive attached, empty folder).
pub trait Collector {
    /// Cache name of the source.
    fn name(&self) -> &str;
    fn collect(&self) -> Result<Option<Value>, CollectError>;
}

fn read_json(path: &Path) -> Result<Option<Value>, CollectError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CollectError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    Value::from_json(&text)
        .map(Some)
        .map_err(|source| CollectError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// os-collect-config's local collector: every `*.json` file of a folder,
/// in name order, deep-merged.
pub struct LocalDir {
    pub dir: PathBuf,
}

impl Collector for LocalDir {
    fn name(&self) -> &str {
        "local"
    }

    fn collect(&self) -> Result<Option<Value>, CollectError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CollectError::Read {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
            .collect();
        paths.sort();
        let mut docs = Vec::new();
        for path in &paths {
            docs.extend(read_json(path)?);
        }
        Ok((!docs.is_empty()).then(|| value::merge_documents(&docs)))
    }
}

/// Where the config drive's files are.
pub enum DriveLocation {
    /// A folder holding `openstack/latest/` (an already mounted drive, tests).
    Folder(PathBuf),
    /// A block device (or image file) with a FAT or ISO9660 filesystem.
    Device(PathBuf),
    /// Look for a device labelled config-2.
    Probe,
}

/// The config drive: kiln's role metadata (`kiln_config.json`) at the top
/// level, with the OpenStack files under `meta_data`, `network_data` and
/// `user_data` (user data as text).
pub struct ConfigDrive {
    pub location: DriveLocation,
}

/// A device labelled config-2, by udev's by-label links or blkid.
pub fn find_config_drive() -> Option<PathBuf> {
    for label in CONFIG_DRIVE_LABELS {
        let link = Path::new("/dev/disk/by-label").join(label);
        if link.exists() {
            return Some(link);
        }
    }
    for label in CONFIG_DRIVE_LABELS {
        let out = Command::new("blkid")
            .args(["-l", "-o", "device", "-t"])
            .arg(format!("LABEL={label}"))
            .output()
            .ok()?;
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !device.is_empty() {
            return Some(PathBuf::from(device));
        }
    }
    None
}

/// Copy `openstack/latest/` of a drive into `into`, mounting it read-only
/// in a private mount namespace that dies with the helper process, so no
/// mount outlives a crash.
fn copy_from_device(device: &Path, into: &Path) -> Result<(), CollectError> {
    let mount_point = into.join("mnt");
    let copy = into.join("openstack/latest");
    for dir in [&mount_point, &copy] {
        std::fs::create_dir_all(dir).map_err(|source| CollectError::Read {
            path: dir.clone(),
            source,
        })?;
    }
    let script =
        r#"mount -r "$1" "$2" || exit 1; cp -r "$2/openstack/latest/." "$3/" 2>/dev/null; exit 0"#;
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
        .arg(&copy)
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
    Ok(())
}

/// Turn a drive's `openstack/latest/` folder into one metadata object.
pub fn read_drive_folder(root: &Path) -> Result<Option<Value>, CollectError> {
    let latest = root.join("openstack/latest");
    if !latest.is_dir() {
        return Ok(None);
    }
    let mut doc = Value::empty_map();
    let Value::Map(entries) = &mut doc else {
        unreachable!()
    };
    for (key, file) in [
        ("meta_data", "meta_data.json"),
        ("network_data", "network_data.json"),
    ] {
        if let Some(v) = read_json(&latest.join(file))? {
            entries.push((key.to_string(), v));
        }
    }
    match std::fs::read(latest.join("user_data")) {
        Ok(bytes) => entries.push((
            "user_data".into(),
            Value::Str(String::from_utf8_lossy(&bytes).into_owned()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CollectError::Read {
                path: latest.join("user_data"),
                source,
            });
        }
    }
    if let Some(role) = read_json(&latest.join("kiln_config.json"))? {
        value::deep_merge(&mut doc, &role);
    }
    Ok(Some(doc))
}

impl Collector for ConfigDrive {
    fn name(&self) -> &str {
        "config_drive"
    }

    fn collect(&self) -> Result<Option<Value>, CollectError> {
        let device = match &self.location {
            DriveLocation::Folder(root) => return read_drive_folder(root),
            DriveLocation::Device(device) => device.clone(),
            DriveLocation::Probe => match find_config_drive() {
                Some(d) => d,
                None => return Ok(None),
            },
        };
        let temp = tempfile::tempdir().map_err(|source| CollectError::Read {
            path: std::env::temp_dir(),
            source,
        })?;
        copy_from_device(&device, temp.path())?;
        read_drive_folder(temp.path())
    }
}

/// The conductor's metadata endpoint for this node (token-authenticated).
// TODO(issue 6): GET the node's metadata from the conductor once its API exists.
pub struct Http {
    pub url: String,
}

impl Collector for Http {
    fn name(&self) -> &str {
        "http"
    }

    fn collect(&self) -> Result<Option<Value>, CollectError> {
        Err(CollectError::NotImplemented("http"))
    }
}

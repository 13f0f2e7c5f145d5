//! LVM logical volumes, mapped by kiln instead of device-mapper.
//!
//! kiln asks the LVM tools for the volume layout (`lvs --segments`, `pvs`),
//! restricted with `--devices` to loop devices on the image's physical
//! volumes and with activation switched off, so the host's volume groups are
//! neither scanned nor touched, and a guest VG named like a host VG cannot
//! clash. Each linear volume then becomes a FUSE file made of the disk ranges
//! of its segments (see `blockfile::Region`). This works without the
//! device-mapper driver (absent on this kernel) and leaves nothing activated
//! to clean up: releasing the scan only detaches its loop devices.

use std::path::{Path, PathBuf};

use super::loopdev::LoopDevice;
use super::{GuestError, run_tool};

/// A logical volume and where its bytes are on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalVolume {
    /// "VG/LV".
    pub name: String,
    /// (disk offset, length) of each segment, in volume order.
    pub extents: Vec<(u64, u64)>,
}

/// (first logical extent, (disk offset, length)) of one segment of a volume.
type Segment = (u64, (u64, u64));

/// The volumes found on an image's physical volumes.
pub struct LvmScan {
    loops: Vec<LoopDevice>,
    volumes: Vec<LogicalVolume>,
}

/// Settings for every LVM command kiln runs: no device-mapper, no host
/// devices file, no metadata backups written on the host.
const LVM_CONFIG: &str = "global { activation = 0 } devices { use_devicesfile = 0 } \
                          backup { backup = 0 archive = 0 }";

impl LvmScan {
    /// Read the layout of the volumes on `pvs`: (served file of the PV,
    /// offset of the PV on the disk).
    pub fn open(pvs: &[(PathBuf, u64)]) -> Result<Self, GuestError> {
        let mut scan = LvmScan {
            loops: Vec::new(),
            volumes: Vec::new(),
        };
        let mut devices = Vec::new();
        for (file, _) in pvs {
            let dev = LoopDevice::attach(file, false, false)?;
            devices.push(dev.path());
            scan.loops.push(dev);
        }
        let device_list = devices
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let report = |what: &str, fields: &str, segments: bool| {
            let mut cmd = std::process::Command::new(what);
            cmd.env("LVM_SUPPRESS_FD_WARNINGS", "1")
                .args(["--readonly", "--config", LVM_CONFIG, "--devices"])
                .arg(&device_list)
                .args(["--reportformat", "json", "--units", "b", "--nosuffix", "-o"])
                .arg(fields);
            if segments {
                cmd.arg("--segments");
            }
            run_tool(&mut cmd)
        };
        let pv_json = report("pvs", "pv_name,pe_start", false)?;
        let seg_json = report(
            "lvs",
            "vg_name,lv_name,segtype,stripes,seg_start_pe,seg_pe_ranges,vg_extent_size",
            true,
        )?;
        // PV device -> (disk offset of its first extent).
        let mut pv_base = Vec::new();
        for row in rows(&pv_json, "pv", &devices[0])? {
            let name = field(&row, "pv_name");
            let pe_start = number(&row, "pe_start", &devices[0])?;
            let Some(index) = devices.iter().position(|d| d.as_os_str() == name.as_str()) else {
                continue;
            };
            pv_base.push((name, pvs[index].1 + pe_start));
        }
        let mut segments: Vec<(String, Vec<Segment>)> = Vec::new();
        for row in rows(&seg_json, "seg", &devices[0])? {
            let name = format!("{}/{}", field(&row, "vg_name"), field(&row, "lv_name"));
            let segtype = field(&row, "segtype");
            let stripes = number(&row, "stripes", &devices[0])?;
            if !(segtype == "linear" || segtype == "striped" && stripes == 1) {
                return Err(GuestError::Lvm {
                    path: devices[0].clone(),
                    message: format!(
                        "volume {name} has a {segtype} segment with {stripes} stripes; \
                         kiln maps linear volumes only"
                    ),
                });
            }
            let extent_size = number(&row, "vg_extent_size", &devices[0])?;
            let ranges = field(&row, "seg_pe_ranges");
            let (pv, first, last) = parse_pe_range(&ranges).ok_or_else(|| GuestError::Lvm {
                path: devices[0].clone(),
                message: format!("volume {name}: cannot read the extent range {ranges:?}"),
            })?;
            let base = pv_base
                .iter()
                .find(|(n, _)| *n == pv)
                .map(|(_, b)| *b)
                .ok_or_else(|| GuestError::Lvm {
                    path: devices[0].clone(),
                    message: format!("volume {name} lies on {pv}, which is not on this image"),
                })?;
            let extent = (base + first * extent_size, (last - first + 1) * extent_size);
            let seg_start = number(&row, "seg_start_pe", &devices[0])?;
            match segments.iter_mut().find(|(n, _)| *n == name) {
                Some((_, segs)) => segs.push((seg_start, extent)),
                None => segments.push((name, vec![(seg_start, extent)])),
            }
        }
        for (name, mut segs) in segments {
            segs.sort_by_key(|(start, _)| *start);
            scan.volumes.push(LogicalVolume {
                name,
                extents: segs.into_iter().map(|(_, e)| e).collect(),
            });
        }
        Ok(scan)
    }

    pub fn volumes(&self) -> &[LogicalVolume] {
        &self.volumes
    }

    /// Detach the loop devices used for scanning.
    pub fn release(&mut self) -> Result<(), GuestError> {
        let mut first_err = None;
        for mut dev in self.loops.drain(..) {
            if let Err(e) = dev.detach()
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn rows(json: &str, kind: &str, device: &Path) -> Result<Vec<serde_json::Value>, GuestError> {
    let bad = |message: String| GuestError::Lvm {
        path: device.to_path_buf(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(format!("unreadable LVM report: {e}")))?;
    let mut out = Vec::new();
    for report in value["report"].as_array().into_iter().flatten() {
        out.extend(report[kind].as_array().into_iter().flatten().cloned());
    }
    Ok(out)
}

fn field(row: &serde_json::Value, key: &str) -> String {
    row[key].as_str().unwrap_or("").trim().to_string()
}

fn number(row: &serde_json::Value, key: &str, device: &Path) -> Result<u64, GuestError> {
    let text = field(row, key);
    text.parse().map_err(|_| GuestError::Lvm {
        path: device.to_path_buf(),
        message: format!("field {key} is {text:?}, not a number"),
    })
}

/// "/dev/loop3:0-255" -> ("/dev/loop3", 0, 255).
fn parse_pe_range(text: &str) -> Option<(String, u64, u64)> {
    let (pv, range) = text.trim().rsplit_once(':')?;
    let (a, b) = range.split_once('-')?;
    let (first, last): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    (first <= last).then(|| (pv.to_string(), first, last))
}

/// "vg-lv--x" (device-mapper name, '-' doubled inside names) -> "vg/lv-x".
pub fn mapper_name_to_vg_lv(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'-' {
            if b.get(i + 1) == Some(&b'-') {
                i += 2;
                continue;
            }
            let vg = name[..i].replace("--", "-");
            let lv = name[i + 1..].replace("--", "-");
            return Some(format!("{vg}/{lv}"));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapper_names_split_at_the_single_dash() {
        assert_eq!(mapper_name_to_vg_lv("vg-root").as_deref(), Some("vg/root"));
        assert_eq!(
            mapper_name_to_vg_lv("my--vg-lv--x").as_deref(),
            Some("my-vg/lv-x")
        );
        assert_eq!(mapper_name_to_vg_lv("nodash"), None);
    }

    #[test]
    fn pe_ranges_parse_or_refuse() {
        assert_eq!(
            parse_pe_range("/dev/loop3:10-255"),
            Some(("/dev/loop3".to_string(), 10, 255))
        );
        assert_eq!(parse_pe_range("/dev/loop3:9-2"), None);
        assert_eq!(parse_pe_range("garbage"), None);
    }
}

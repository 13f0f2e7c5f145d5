//! `kiln initrd add --firmware NAME`: firmware files as the kernel's loader looks
//! for them: `NAME`, then the compressed `NAME.zst` and `NAME.xz`, first under
//! `updates/` and then at the top of the firmware directory. They are placed at
//! the same relative path under /lib/firmware in the initrd; symlinks inside the
//! firmware directory (linux-firmware has many) are kept as symlinks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::hostpath::{self, WalkError, merge, staged_from_walk, walk};
use super::staging::Staged;

/// Where firmware lives in the initrd.
pub const GUEST_DIR: &str = "/lib/firmware";

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("firmware name {0:?} must be a relative path without '..'")]
    BadName(String),
    #[error("firmware {name:?} not found in {dir} (also tried .zst and .xz)")]
    NotFound { name: String, dir: PathBuf },
    #[error(transparent)]
    Walk(#[from] WalkError),
}

/// Firmware found for a list of names, and the names that were not found.
#[derive(Debug, Default, Clone)]
pub struct FirmwareSet {
    pub staged: Vec<Staged>,
    pub missing: Vec<String>,
}

/// The firmware `names` from `sysroot`/lib/firmware. A missing name is an error.
pub fn firmware(sysroot: &Path, names: &[String]) -> Result<Vec<Staged>, FirmwareError> {
    let dir = hostpath::host_path(sysroot, GUEST_DIR);
    let set = firmware_in(&dir, names)?;
    if let Some(name) = set.missing.into_iter().next() {
        return Err(FirmwareError::NotFound { name, dir });
    }
    Ok(set.staged)
}

/// The firmware `names` from the host directory `dir`; names not found are
/// listed in `missing` (modules declare firmware for every model they drive).
pub fn firmware_in(dir: &Path, names: &[String]) -> Result<FirmwareSet, FirmwareError> {
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for name in names {
        check_name(name)?;
        match find(dir, name)? {
            Some(items) => merge(&mut out, items),
            None => missing.push(name.clone()),
        }
    }
    Ok(FirmwareSet {
        staged: out.into_values().collect(),
        missing,
    })
}

fn check_name(name: &str) -> Result<(), FirmwareError> {
    let bad = name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c == "..");
    if bad {
        return Err(FirmwareError::BadName(name.to_string()));
    }
    Ok(())
}

/// Absolute link targets inside the firmware tree are followed when they point
/// into /lib/firmware or /usr/lib/firmware; anything else is outside it.
fn abs_in_firmware(target: &str) -> Option<String> {
    ["/lib/firmware/", "/usr/lib/firmware/"]
        .iter()
        .find_map(|p| target.strip_prefix(p))
        .map(|rest| format!("/{rest}"))
}

fn find(dir: &Path, name: &str) -> Result<Option<Vec<Staged>>, FirmwareError> {
    for prefix in ["updates/", ""] {
        for suffix in ["", ".zst", ".xz"] {
            let rel = format!("/{prefix}{name}{suffix}");
            let w = match walk(dir, &rel, &abs_in_firmware) {
                Ok(w) => w,
                Err(WalkError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(WalkError::NotDir(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if !w.meta.is_file() {
                continue;
            }
            let place = |p: &str| Some(format!("{GUEST_DIR}{p}"));
            let mut items = staged_from_walk(&w, &place);
            // The firmware directory itself is not "on the way".
            items.retain(|s| s.path != GUEST_DIR);
            return Ok(Some(items));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initrd::staging::{Content, StagedKind};
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_compressed_linked_and_missing() {
        let t = tempfile::tempdir().unwrap();
        let fw = t.path().join("lib/firmware");
        fs::create_dir_all(fw.join("vendor")).unwrap();
        fs::create_dir_all(fw.join("updates")).unwrap();
        fs::write(fw.join("vendor/a.bin"), b"a").unwrap();
        fs::write(fw.join("b.bin.zst"), b"b").unwrap();
        fs::write(fw.join("c.bin"), b"old").unwrap();
        fs::write(fw.join("updates/c.bin"), b"new").unwrap();
        symlink("vendor/a.bin", fw.join("a.bin")).unwrap();
        symlink("/lib/firmware/vendor/a.bin", fw.join("abs.bin")).unwrap();
        symlink("/etc/passwd", fw.join("evil.bin")).unwrap();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = firmware(t.path(), &names(&["a.bin", "b.bin", "c.bin", "abs.bin"])).unwrap();
        let paths: Vec<_> = got.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/lib/firmware/a.bin",
                "/lib/firmware/abs.bin",
                "/lib/firmware/b.bin.zst",
                "/lib/firmware/updates",
                "/lib/firmware/updates/c.bin",
                "/lib/firmware/vendor",
                "/lib/firmware/vendor/a.bin",
            ]
        );
        assert_eq!(got[0].kind, StagedKind::Symlink("vendor/a.bin".into()));
        assert_eq!(
            got[6].kind,
            StagedKind::File(Content::Host(fw.join("vendor/a.bin")))
        );
        assert!(matches!(
            firmware(t.path(), &names(&["nope.bin"])),
            Err(FirmwareError::NotFound { .. })
        ));
        assert!(matches!(
            firmware(t.path(), &names(&["evil.bin"])),
            Err(FirmwareError::Walk(WalkError::Escapes { .. }))
        ));
        assert!(firmware(t.path(), &names(&["../x"])).is_err());
        assert!(firmware(t.path(), &names(&["/x"])).is_err());
        let set = firmware_in(&fw, &names(&["a.bin", "gone.bin"])).unwrap();
        assert_eq!(set.missing, ["gone.bin"]);
    }
}

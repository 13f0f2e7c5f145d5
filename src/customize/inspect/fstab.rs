//! Mount points from the guest's /etc/fstab.

use crate::customize::guest::{GuestError, GuestRoot};

use super::Mountpoint;

pub fn mountpoints(g: &GuestRoot) -> Result<Vec<Mountpoint>, GuestError> {
    let text = g.read_string_opt("/etc/fstab")?.unwrap_or_default();
    let mut out: Vec<Mountpoint> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, mp, ty) = (*f.first()?, *f.get(1)?, *f.get(2)?);
            // Swap and pseudo filesystems mount nothing of the image.
            (mp.starts_with('/') && !matches!(ty, "swap" | "proc" | "sysfs" | "tmpfs" | "devpts"))
                .then(|| Mountpoint {
                    mountpoint: mp.to_string(),
                    device: dev.to_string(),
                    fstype: ty.to_string(),
                })
        })
        .collect();
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    Ok(out)
}

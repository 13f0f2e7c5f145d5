//! Find an image's filesystems and mount the guest: its root (the filesystem
//! with /etc/os-release or /etc/fstab) and the fstab mounts below it.
//!
//! kiln reads the partition table (GPT, else MBR primaries) itself and serves
//! each partition and LVM volume as its own FUSE file with its own loop
//! device. That needs no kernel partition parser (this kernel has none) and
//! no device-mapper (LVM volumes are mapped by kiln, see `lvm`), and each
//! byte of the disk is cached through exactly one file.
//!
//! Mount points inside the guest are reached with openat2(RESOLVE_IN_ROOT),
//! so a guest symlink such as /boot -> /../../etc cannot place a mount on a
//! host directory.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::blockfile::{BlockFile, FuseBlockFiles, Region};
use super::journal::{Journal, journal_path, replay_pending};
use super::loopdev::LoopDevice;
use super::overlay::Overlay;
use super::writer::open_writer;
use super::{GuestError, lvm, run_tool};
use crate::build::sandbox::{in_private_mount_namespace, sys};
use crate::format::ImageFormat;

/// One filesystem (or other content) found on the image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FsInfo {
    /// "disk" (the whole disk), "p1".. (partitions) or "VG/LV" (LVM volumes).
    pub name: String,
    /// Partition number, for partitions.
    pub partition: Option<u32>,
    /// What `blkid -p` calls it (ext4, xfs, vfat, swap, LVM2_member), if anything.
    pub fstype: Option<String>,
    pub uuid: Option<String>,
    pub label: Option<String>,
    /// GPT partition GUID, for `PARTUUID=` in fstab.
    pub part_uuid: Option<String>,
    /// Where it is mounted in the guest ("/", "/boot"), when it is.
    pub mountpoint: Option<PathBuf>,
    /// Why an fstab entry for it was not mounted (unsupported type, missing directory).
    pub mount_error: Option<String>,
}

/// Filesystem types kiln mounts.
const MOUNTABLE: &[&str] = &["ext2", "ext3", "ext4", "xfs", "vfat", "btrfs"];

struct Mounted {
    /// Host path, for messages.
    target: PathBuf,
    /// The root of the mount: unmount hits exactly this mount.
    root: OwnedFd,
}

/// A guest image opened on the host kernel. Everything is unmounted,
/// detached and removed on drop (also when `open` fails half-way).
pub struct GuestSession {
    image: PathBuf,
    format: ImageFormat,
    writable: bool,
    overlay: Arc<Overlay>,
    filesystems: Vec<FsInfo>,
    root: PathBuf,
    mounts: Vec<Mounted>,
    /// Loop device per entry of `filesystems` that has one.
    loops: Vec<(usize, LoopDevice)>,
    lvm: Option<lvm::LvmScan>,
    fuse: Option<FuseBlockFiles>,
    work: Option<tempfile::TempDir>,
}

impl GuestSession {
    /// Open `image` (format probed unless given), find its filesystems and
    /// mount the guest root with its fstab mounts, read-write when `writable`
    /// (writes stay in memory until `commit`). The calling thread must be in
    /// kiln's private mount namespace.
    pub fn open(
        image: &Path,
        format: Option<ImageFormat>,
        writable: bool,
    ) -> Result<Self, GuestError> {
        if !in_private_mount_namespace() {
            return Err(GuestError::NotPrivate {
                image: image.to_path_buf(),
            });
        }
        // An earlier commit that was cut short is completed first.
        if journal_path(image).exists() {
            let format = match format {
                Some(f) => f,
                None => crate::format::probe_path(image)?,
            };
            replay_pending(image, format)?;
        }
        let (format, source) = crate::format::open_image(image, format)?;
        let overlay = Arc::new(Overlay::new(source));
        let work = tempfile::Builder::new()
            .prefix("kiln-guest-")
            .tempdir()
            .map_err(|source| GuestError::Io {
                what: "creating a work directory for",
                path: image.to_path_buf(),
                source,
            })?;
        let root = work.path().join("root");
        std::fs::create_dir(&root).map_err(|source| GuestError::Io {
            what: "creating",
            path: root.clone(),
            source,
        })?;
        let fuse = FuseBlockFiles::mount(work.path(), overlay.clone())?;
        let mut session = GuestSession {
            image: image.to_path_buf(),
            format,
            writable,
            overlay,
            filesystems: Vec::new(),
            root,
            mounts: Vec::new(),
            loops: Vec::new(),
            lvm: None,
            fuse: Some(fuse),
            work: Some(work),
        };
        // From here on, an error drops `session`, which undoes what was done.
        let files = session.find_filesystems()?;
        session.mount_guest(&files)?;
        Ok(session)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn filesystems(&self) -> &[FsInfo] {
        &self.filesystems
    }

    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The copy-on-write layer (what changed, the current disk bytes).
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    fn fuse(&self) -> &FuseBlockFiles {
        self.fuse
            .as_ref()
            .expect("the FUSE files live as long as the session")
    }

    /// The partitions (or the whole disk) and LVM volumes, each served as a
    /// FUSE file and identified by blkid. Returns the FUSE path of each entry
    /// of `self.filesystems`.
    fn find_filesystems(&mut self) -> Result<Vec<PathBuf>, GuestError> {
        let disk: Arc<dyn BlockFile> = self.overlay.clone();
        let mut paths = Vec::new();
        for part in partitions(&self.overlay, &self.image)? {
            let region =
                Region::new(disk.clone(), vec![(part.start, part.len)]).ok_or_else(|| {
                    GuestError::Parse {
                        path: self.image.clone(),
                        what: "a partition inside the disk",
                        text: format!("partition {} at {}+{}", part.number, part.start, part.len),
                    }
                })?;
            let name = format!("p{}", part.number);
            paths.push(self.fuse().add_file(&name, Arc::new(region)));
            self.filesystems.push(FsInfo {
                name,
                partition: Some(part.number),
                part_uuid: part.part_uuid,
                ..FsInfo::default_for("")
            });
        }
        if paths.is_empty() {
            paths.push(self.fuse().disk_path());
            self.filesystems.push(FsInfo::default_for("disk"));
        }
        for (info, path) in self.filesystems.iter_mut().zip(&paths) {
            identify(info, path)?;
        }
        // LVM physical volumes: map their logical volumes as more files.
        let pvs: Vec<(PathBuf, u64)> = self
            .filesystems
            .iter()
            .zip(&paths)
            .filter(|(info, _)| info.fstype.as_deref() == Some("LVM2_member"))
            .map(|(info, path)| (path.clone(), self.region_start(info)))
            .collect();
        if !pvs.is_empty() {
            let scan = lvm::LvmScan::open(&pvs)?;
            for lv in scan.volumes() {
                let region = Region::new(disk.clone(), lv.extents.clone()).ok_or_else(|| {
                    GuestError::Lvm {
                        path: self.image.clone(),
                        message: format!("volume {} lies outside the disk", lv.name),
                    }
                })?;
                let file_name = lv.name.replace('/', "-");
                let path = self.fuse().add_file(&file_name, Arc::new(region));
                let mut info = FsInfo::default_for(&lv.name);
                identify(&mut info, &path)?;
                self.filesystems.push(info);
                paths.push(path);
            }
            self.lvm = Some(scan);
        }
        Ok(paths)
    }

    /// Byte offset on the disk where the content of `info` starts.
    fn region_start(&self, info: &FsInfo) -> u64 {
        info.partition
            .and_then(|n| {
                partitions(&self.overlay, &self.image)
                    .ok()?
                    .into_iter()
                    .find(|p| p.number == n)
            })
            .map_or(0, |p| p.start)
    }

    fn mount_guest(&mut self, files: &[PathBuf]) -> Result<(), GuestError> {
        let candidates: Vec<usize> = (0..self.filesystems.len())
            .filter(|&i| {
                self.filesystems[i]
                    .fstype
                    .as_deref()
                    .is_some_and(|t| MOUNTABLE.contains(&t))
            })
            .collect();
        let root_dir = self.root.clone();
        let mut found = None;
        for &i in &candidates {
            let Ok(()) = self.mount_fs(i, &files[i], &root_dir) else {
                continue;
            };
            let is_root = ["etc/os-release", "etc/fstab"]
                .iter()
                .any(|p| root_dir.join(p).symlink_metadata().is_ok());
            if is_root {
                found = Some(i);
                break;
            }
            self.unmount_last()?;
        }
        let Some(root_index) = found else {
            return Err(GuestError::NoRoot {
                image: self.image.clone(),
                searched: candidates
                    .iter()
                    .map(|&i| self.filesystems[i].name.clone())
                    .collect(),
            });
        };
        self.filesystems[root_index].mountpoint = Some(PathBuf::from("/"));
        let root_fd = self
            .mounts
            .last()
            .map(|m| m.root.try_clone())
            .transpose()
            .map_err(|source| GuestError::Io {
                what: "opening",
                path: root_dir.clone(),
                source,
            })?
            .expect("the root was just mounted");
        let mut entries = read_fstab(&root_fd);
        // Parents before children.
        entries.sort_by_key(|e| e.mountpoint.components().count());
        for entry in entries {
            let Some(i) = self.resolve_spec(&entry.spec) else {
                continue;
            };
            if self.filesystems[i].mountpoint.is_some() {
                continue;
            }
            let rel = entry
                .mountpoint
                .strip_prefix("/")
                .unwrap_or(&entry.mountpoint);
            let target = match sys::openat2(
                root_fd.as_fd(),
                rel.as_os_str().as_encoded_bytes(),
                libc::O_PATH | libc::O_DIRECTORY,
                libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
            ) {
                Ok(fd) => fd,
                Err(e) => {
                    self.filesystems[i].mount_error =
                        Some(format!("mount point {}: {e}", entry.mountpoint.display()));
                    continue;
                }
            };
            let host = root_dir.join(rel);
            match self.mount_fs_on(i, &files[i], target, &host) {
                Ok(()) => self.filesystems[i].mountpoint = Some(entry.mountpoint.clone()),
                Err(e) => self.filesystems[i].mount_error = Some(e.to_string()),
            }
        }
        Ok(())
    }

    /// Which filesystem an fstab first field names.
    fn resolve_spec(&self, spec: &str) -> Option<usize> {
        let fs = &self.filesystems;
        let by = |value: &str, field: fn(&FsInfo) -> Option<&String>| {
            fs.iter()
                .position(|f| field(f).is_some_and(|v| v.eq_ignore_ascii_case(value)))
        };
        if let Some(v) = spec
            .strip_prefix("UUID=")
            .or_else(|| spec.strip_prefix("/dev/disk/by-uuid/"))
        {
            return by(v, |f| f.uuid.as_ref());
        }
        if let Some(v) = spec
            .strip_prefix("LABEL=")
            .or_else(|| spec.strip_prefix("/dev/disk/by-label/"))
        {
            return fs.iter().position(|f| f.label.as_deref() == Some(v));
        }
        if let Some(v) = spec
            .strip_prefix("PARTUUID=")
            .or_else(|| spec.strip_prefix("/dev/disk/by-partuuid/"))
        {
            return by(v, |f| f.part_uuid.as_ref());
        }
        // /dev/mapper/VG-LV and /dev/VG/LV.
        if let Some(v) = spec.strip_prefix("/dev/mapper/") {
            let unescaped = lvm::mapper_name_to_vg_lv(v)?;
            return fs.iter().position(|f| f.name == unescaped);
        }
        if let Some(v) = spec.strip_prefix("/dev/")
            && let Some(i) = fs.iter().position(|f| f.name == v)
        {
            return Some(i);
        }
        // /dev/sda2, /dev/vda2, /dev/nvme0n1p2: the partition number at the end.
        let rest = spec.strip_prefix("/dev/")?;
        let digits: String = rest
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let number: u32 = digits.parse().ok()?;
        fs.iter().position(|f| f.partition == Some(number))
    }

    /// Mount filesystem `i` on the host directory `dir` (one kiln created).
    fn mount_fs(&mut self, i: usize, file: &Path, dir: &Path) -> Result<(), GuestError> {
        let target = std::fs::File::open(dir).map_err(|source| GuestError::Io {
            what: "opening the mount point",
            path: dir.to_path_buf(),
            source,
        })?;
        self.mount_fs_on(i, file, target.into(), dir)
    }

    fn mount_fs_on(
        &mut self,
        i: usize,
        file: &Path,
        target: OwnedFd,
        host: &Path,
    ) -> Result<(), GuestError> {
        let fstype = self.filesystems[i].fstype.clone().unwrap_or_default();
        let device = self.loop_for(i, file)?;
        let mount_err = |source| GuestError::Mount {
            device: device.clone(),
            fstype: fstype.clone(),
            target: host.to_path_buf(),
            source,
        };
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        let mut data = String::new();
        if !self.writable {
            flags |= libc::MS_RDONLY;
            // A read-only device cannot replay a journal.
            data = match fstype.as_str() {
                "ext3" | "ext4" => "noload".into(),
                "xfs" => "norecovery".into(),
                _ => String::new(),
            };
        }
        let dev_c = sys::path_cstring(&device).map_err(mount_err)?;
        let type_c = CString::new(fstype.clone())
            .map_err(|_| mount_err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let data_c = CString::new(data).expect("no NUL in constant options");
        let target_c = sys::fd_path(target.as_fd());
        // SAFETY: valid NUL-terminated strings.
        let ret = unsafe {
            libc::mount(
                dev_c.as_ptr(),
                target_c.as_ptr(),
                type_c.as_ptr(),
                flags,
                data_c.as_ptr().cast(),
            )
        };
        if ret < 0 {
            return Err(mount_err(std::io::Error::last_os_error()));
        }
        // A fresh open through the fd's path crosses into the new mount.
        let root = sys::openat2(target.as_fd(), b".", libc::O_PATH | libc::O_DIRECTORY, 0);
        let root = match root {
            Ok(fd) if sys::mount_id(fd.as_fd()).ok() != sys::mount_id(target.as_fd()).ok() => fd,
            // Fall back to the host path, which kiln made and controls.
            _ => std::fs::File::open(host).map_err(mount_err)?.into(),
        };
        self.mounts.push(Mounted {
            target: host.to_path_buf(),
            root,
        });
        Ok(())
    }

    /// The loop device of filesystem `i`, attached on first use.
    fn loop_for(&mut self, i: usize, file: &Path) -> Result<PathBuf, GuestError> {
        if let Some((_, dev)) = self.loops.iter().find(|(j, _)| *j == i) {
            return Ok(dev.path());
        }
        let dev = LoopDevice::attach(file, self.writable, false)?;
        let path = dev.path();
        self.loops.push((i, dev));
        Ok(path)
    }

    fn unmount_last(&mut self) -> Result<(), GuestError> {
        let Some(m) = self.mounts.pop() else {
            return Ok(());
        };
        sys::detach_mount_at_fd(m.root.as_fd()).map_err(|source| GuestError::Io {
            what: "unmounting",
            path: m.target.clone(),
            source,
        })
    }

    /// Unmount, detach and stop serving; collect every error instead of
    /// stopping at the first.
    fn teardown(&mut self) -> Result<(), GuestError> {
        let mut errors = Vec::new();
        // Write out what the guest filesystems still hold in memory.
        for m in &self.mounts {
            // SAFETY: syncfs on a valid fd.
            if unsafe { libc::syncfs(m.root.as_raw_fd()) } < 0 {
                errors.push(format!(
                    "syncing {}: {}",
                    m.target.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
        // Children first; the last close of each mount root shuts its
        // filesystem down (writing its final metadata) before close returns.
        while !self.mounts.is_empty() {
            if let Err(e) = self.unmount_last() {
                errors.push(e.to_string());
            }
        }
        for (_, dev) in self.loops.iter_mut() {
            if let Err(e) = dev.flush_and_detach() {
                errors.push(e.to_string());
            }
        }
        self.loops.clear();
        if let Some(mut scan) = self.lvm.take()
            && let Err(e) = scan.release()
        {
            errors.push(e.to_string());
        }
        if let Some(mut fuse) = self.fuse.take()
            && let Err(e) = fuse.unmount()
        {
            errors.push(e.to_string());
        }
        if let Some(work) = self.work.take() {
            let path = work.path().to_path_buf();
            if let Err(e) = work.close() {
                errors.push(format!("removing {}: {e}", path.display()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(GuestError::Teardown {
                image: self.image.clone(),
                errors,
            })
        }
    }

    /// Unmount everything, then write every changed range into the image.
    /// Returns how many bytes were written.
    pub fn commit(mut self) -> Result<u64, GuestError> {
        if !self.writable {
            return Err(GuestError::ReadOnly {
                image: self.image.clone(),
            });
        }
        self.teardown()?;
        if self.overlay.is_clean() {
            return Ok(0);
        }
        // Durable first, then into the image: a crash from here on is
        // completed by the next open (see `journal`).
        let journal = Journal::write(&self.image, &self.overlay)?;
        let mut writer = open_writer(&self.image, self.format)?;
        let written = self.overlay.commit(writer.as_mut(), &self.image)?;
        drop(writer);
        journal.finish()?;
        Ok(written)
    }

    /// Unmount everything and drop the changes: the image stays as it was.
    pub fn discard(mut self) -> Result<(), GuestError> {
        self.teardown()
    }
}

impl Drop for GuestSession {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

impl FsInfo {
    fn default_for(name: &str) -> Self {
        FsInfo {
            name: name.to_string(),
            partition: None,
            fstype: None,
            uuid: None,
            label: None,
            part_uuid: None,
            mountpoint: None,
            mount_error: None,
        }
    }
}

/// Fill type, UUID and label of `info` from `blkid -p` on `file`.
fn identify(info: &mut FsInfo, file: &Path) -> Result<(), GuestError> {
    let out = std::process::Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| GuestError::Spawn {
            command: "blkid".into(),
            source,
        })?;
    // Exit status 2: nothing recognised, which is an answer, not an error.
    if !out.status.success() && out.status.code() != Some(2) {
        return run_tool(std::process::Command::new("blkid").arg("-p").arg(file)).map(|_| ());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = Some(value.to_string());
        match key {
            "TYPE" => info.fstype = value,
            "UUID" => info.uuid = value,
            "LABEL" => info.label = value,
            _ => {}
        }
    }
    Ok(())
}

struct Partition {
    number: u32,
    start: u64,
    len: u64,
    part_uuid: Option<String>,
}

/// The partitions of the disk: GPT if present, else the MBR's primary
/// partitions (extended partitions are not followed), else none.
fn partitions(disk: &Overlay, image: &Path) -> Result<Vec<Partition>, GuestError> {
    let gpt = crate::format::gpt::read_gpt(disk).map_err(|e| GuestError::Parse {
        path: image.to_path_buf(),
        what: "the GPT partition table",
        text: e.to_string(),
    })?;
    if let Some(table) = gpt {
        return Ok(table
            .partitions
            .iter()
            .map(|p| Partition {
                number: p.number,
                start: p.first_lba * 512,
                len: p.sectors() * 512,
                part_uuid: Some(p.part_guid.hyphenated().to_string()),
            })
            .collect());
    }
    if disk.size() < 512 {
        return Ok(Vec::new());
    }
    let mut mbr = [0u8; 512];
    disk.read_at(&mut mbr, 0)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(Vec::new());
    }
    let mut parts = Vec::new();
    for n in 0..4 {
        let e = &mbr[446 + n * 16..446 + n * 16 + 16];
        let kind = e[4];
        let start = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64;
        let count = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64;
        // Empty, extended (0x05, 0x0f, 0x85) and protective-GPT entries hold no filesystem.
        if matches!(kind, 0 | 0x05 | 0x0f | 0x85 | 0xee) || count == 0 {
            continue;
        }
        // Boot sectors of bare filesystems also end in 55 AA: their "entries"
        // rarely fit the disk, and those that do not are not partitions.
        if (start + count) * 512 > disk.size() || start == 0 {
            return Ok(Vec::new());
        }
        parts.push(Partition {
            number: n as u32 + 1,
            start: start * 512,
            len: count * 512,
            part_uuid: None,
        });
    }
    Ok(parts)
}

/// One line of /etc/fstab that may name a filesystem to mount.
struct FstabEntry {
    spec: String,
    mountpoint: PathBuf,
}

/// The guest's /etc/fstab, read confined to the guest root. A missing or
/// unreadable fstab gives no entries (a root without one is still a root).
fn read_fstab(root: &OwnedFd) -> Vec<FstabEntry> {
    let Ok(fd) = sys::openat2(
        root.as_fd(),
        b"etc/fstab",
        libc::O_RDONLY,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    ) else {
        return Vec::new();
    };
    let mut text = String::new();
    use std::io::Read;
    let _ = std::fs::File::from(fd)
        .take(1 << 20)
        .read_to_string(&mut text);
    parse_fstab(&text)
}

fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let mut fields = line.split_whitespace();
            let spec = fields.next()?;
            let mountpoint = fields.next()?;
            let fstype = fields.next().unwrap_or("auto");
            let options = fields.next().unwrap_or("defaults");
            if !mountpoint.starts_with('/')
                || mountpoint == "/"
                || matches!(
                    fstype,
                    "swap" | "proc" | "sysfs" | "tmpfs" | "devpts" | "none"
                )
                || options.split(',').any(|o| o == "bind")
            {
                return None;
            }
            Some(FstabEntry {
                spec: unescape_octal(spec),
                mountpoint: PathBuf::from(unescape_octal(mountpoint)),
            })
        })
        .collect()
}

/// fstab writes spaces in names as \040.
fn unescape_octal(s: &str) -> String {
    String::from_utf8_lossy(&crate::build::sandbox::unescape_octal(s.as_bytes())).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_keeps_mountable_entries_only() {
        let text = "# comment\nUUID=abc / ext4 defaults 0 1\n\
                    LABEL=boot\\040x /boot ext4 defaults 0 2\n\
                    /dev/vda3 none swap sw 0 0\nproc /proc proc defaults 0 0\n\
                    /srv /mnt/srv none bind 0 0\n/dev/mapper/vg-lv--x /var xfs defaults 0 0\n";
        let entries: Vec<(String, PathBuf)> = parse_fstab(text)
            .into_iter()
            .map(|e| (e.spec, e.mountpoint))
            .collect();
        assert_eq!(
            entries,
            vec![
                ("LABEL=boot x".to_string(), PathBuf::from("/boot")),
                ("/dev/mapper/vg-lv--x".to_string(), PathBuf::from("/var")),
            ]
        );
    }
}

//! A loop device on a file, with partition scanning, set up by ioctl (no
//! losetup). The device is configured with LO_FLAGS_AUTOCLEAR: the kernel
//! detaches it when its last opener closes, so a crashed kiln frees it. Drop
//! detaches it explicitly too.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::GuestError;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_PARTSCAN: u32 = 8;

/// struct loop_info64 (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// struct loop_config (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// How often to try another free device when a concurrent user takes ours.
const BUSY_RETRIES: usize = 16;
/// How long to wait for the kernel to announce partition devices.
const PARTITION_WAIT: Duration = Duration::from_secs(5);

/// A bound loop device; detached on drop.
pub struct LoopDevice {
    number: u32,
    dev: Option<File>,
    /// Nodes we had to create ourselves because nothing else did.
    created_nodes: Vec<PathBuf>,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GuestError {
    let path = path.to_path_buf();
    move |source| GuestError::Io { what, path, source }
}

impl LoopDevice {
    /// Bind a free loop device to `backing` (read-only unless `writable`).
    /// With `partscan` the kernel scans its partition table and this waits
    /// until the partition nodes exist (kiln itself reads partition tables,
    /// so kernels without partition parsers work too; see `mount`).
    pub fn attach(backing: &Path, writable: bool, partscan: bool) -> Result<Self, GuestError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(backing)
            .map_err(io_err("opening the loop backing file", backing))?;
        let control = Path::new("/dev/loop-control");
        let ctl = File::open(control).map_err(io_err("opening", control))?;
        let mut last_busy = None;
        for _ in 0..BUSY_RETRIES {
            // SAFETY: ioctl without an argument on the control device.
            let number = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if number < 0 {
                return Err(io_err("asking for a free loop device at", control)(
                    std::io::Error::last_os_error(),
                ));
            }
            let number = number as u32;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let dev = match std::fs::OpenOptions::new()
                .read(true)
                .write(writable)
                .open(&path)
            {
                Ok(d) => d,
                // udev may not have made the node yet: make it from sysfs.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    make_node_from_sysfs(&format!("loop{number}"), &path)?;
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(writable)
                        .open(&path)
                        .map_err(io_err("opening", &path))?
                }
                Err(e) => return Err(io_err("opening", &path)(e)),
            };
            // SAFETY: LoopConfig is plain data; all-zero is a valid value.
            let mut config: LoopConfig = unsafe { std::mem::zeroed() };
            config.fd = file.as_raw_fd() as u32;
            config.info.flags = LO_FLAGS_AUTOCLEAR
                | if partscan { LO_FLAGS_PARTSCAN } else { 0 }
                | if writable { 0 } else { LO_FLAGS_READ_ONLY };
            let name = backing.as_os_str().as_encoded_bytes();
            let n = name.len().min(63);
            config.info.file_name[..n].copy_from_slice(&name[..n]);
            // SAFETY: valid fd and a pointer to a correctly laid out loop_config.
            let ret = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config) };
            if ret < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EBUSY) {
                    last_busy = Some(err);
                    continue;
                }
                return Err(io_err("binding", &path)(err));
            }
            let mut this = LoopDevice {
                number,
                dev: Some(dev),
                created_nodes: Vec::new(),
            };
            if partscan {
                this.wait_for_partitions()?;
            }
            return Ok(this);
        }
        Err(io_err("binding a free loop device (all busy)", control)(
            last_busy.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EBUSY)),
        ))
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/loop{}", self.number))
    }

    /// The partition devices found by the kernel, in partition-number order.
    pub fn partitions(&self) -> Vec<PathBuf> {
        let mut parts = self.sysfs_partitions();
        parts.sort_by_key(|(n, _)| *n);
        parts
            .into_iter()
            .map(|(n, _)| PathBuf::from(format!("/dev/loop{}p{n}", self.number)))
            .collect()
    }

    /// (partition number, sysfs name) of each partition of the device.
    fn sysfs_partitions(&self) -> Vec<(u32, String)> {
        let base = format!("loop{}", self.number);
        let prefix = format!("{base}p");
        let Ok(entries) = std::fs::read_dir(format!("/sys/block/{base}")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n = name.strip_prefix(&prefix)?.parse().ok()?;
                Some((n, name))
            })
            .collect()
    }

    /// The byte offset of partition device `part` on the loop device.
    pub fn partition_start(&self, part: &Path) -> Option<u64> {
        let name = part.file_name()?.to_str()?;
        let text =
            std::fs::read_to_string(format!("/sys/block/loop{}/{name}/start", self.number)).ok()?;
        text.trim().parse::<u64>().ok().map(|s| s * 512)
    }

    fn wait_for_partitions(&mut self) -> Result<(), GuestError> {
        let deadline = Instant::now() + PARTITION_WAIT;
        for (_, name) in self.sysfs_partitions() {
            let node = PathBuf::from(format!("/dev/{name}"));
            while !node.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !node.exists() {
                make_node_from_sysfs(&format!("loop{}/{name}", self.number), &node)?;
                self.created_nodes.push(node);
            }
        }
        Ok(())
    }

    /// Write out the device's cached blocks to the backing file, then detach.
    pub fn flush_and_detach(&mut self) -> Result<(), GuestError> {
        if let Some(dev) = &self.dev
            && let Err(e) = dev.sync_all()
        {
            let path = self.path();
            let _ = self.detach();
            return Err(io_err("flushing", &path)(e));
        }
        self.detach()
    }

    /// Detach now and report errors (drop does the same silently).
    pub fn detach(&mut self) -> Result<(), GuestError> {
        let Some(dev) = self.dev.take() else {
            return Ok(());
        };
        for node in self.created_nodes.drain(..) {
            let _ = std::fs::remove_file(node);
        }
        // SAFETY: ioctl without an argument on our loop fd.
        let ret = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) };
        let err = std::io::Error::last_os_error();
        drop(dev);
        // ENXIO: already unbound. EBUSY: still open elsewhere; autoclear
        // detaches it when that opener closes.
        if ret < 0 && !matches!(err.raw_os_error(), Some(libc::ENXIO | libc::EBUSY)) {
            return Err(io_err("detaching", &self.path())(err));
        }
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

/// Create the block device node `node` from /sys/block/`sys_name`/dev.
fn make_node_from_sysfs(sys_name: &str, node: &Path) -> Result<(), GuestError> {
    let dev_file = PathBuf::from(format!("/sys/block/{sys_name}/dev"));
    let text = std::fs::read_to_string(&dev_file).map_err(io_err("reading", &dev_file))?;
    let (major, minor) = text
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| GuestError::Parse {
            path: dev_file.clone(),
            what: "major:minor",
            text: text.clone(),
        })?;
    let c = crate::build::sandbox::sys::path_cstring(node).map_err(io_err("creating", node))?;
    // SAFETY: valid path; mknod creates a device node.
    let ret = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFBLK | 0o600,
            libc::makedev(major, minor),
        )
    };
    if ret < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(io_err("creating the device node", node)(err));
        }
    }
    Ok(())
}

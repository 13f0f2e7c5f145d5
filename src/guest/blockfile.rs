//! The guest disk as one regular file, served to the kernel through FUSE.
//!
//! Why FUSE + loop and not NBD: the kernel here has no nbd driver (and no
//! ublk), but it has FUSE and loop. A FUSE filesystem with a single file
//! `disk` whose bytes come from the copy-on-write overlay, with a loop device
//! on that file, gives the kernel a block device backed by kiln's own code:
//! qcow2 decoding and the overlay stay in userspace, and nothing touches the
//! image until commit.
//!
//! The cost: every block request crosses the kernel/user boundary (loop ->
//! FUSE -> kiln) and data is cached twice (the loop device's page cache and
//! the FUSE file's). direct_io stays off so the FUSE file's page cache
//! absorbs re-reads, and requests are up to 1 MiB (FUSE_MAX_PAGES) to keep the
//! number of crossings low. Several threads read /dev/fuse, so a slow base
//! read does not hold up the others (the overlay is behind a read/write lock).
//!
//! We speak the /dev/fuse protocol ourselves instead of using a FUSE crate:
//! one file needs about fifteen opcodes, we mount with mount(2) directly
//! (root, inside kiln's private namespace; no fusermount, no libfuse), and we
//! choose the threading.
//!
//! Lifetime: the mount lives in a temp directory in the caller's private mount
//! namespace. Drop detaches it and stops the threads; closing the last
//! /dev/fuse descriptor aborts the connection, so a request the kernel still
//! has fails with ENOTCONN instead of hanging. If kiln dies, the kernel closes
//! the descriptor the same way.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use super::GuestError;
use super::overlay::Overlay;

/// What a served file is: a fixed-size byte range that can be read and written.
pub trait BlockFile: Send + Sync {
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
}

impl BlockFile for Overlay {
    fn size(&self) -> u64 {
        Overlay::size(self)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Ok(Overlay::read_at(self, buf, offset)?)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        Ok(Overlay::write_at(self, data, offset)?)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(Overlay::write_zeroes(self, offset, len)?)
    }
}

/// Largest read or write the kernel sends us (FUSE_MAX_PAGES * 4 KiB).
const MAX_IO: usize = 1 << 20;
const MAX_PAGES: u16 = (MAX_IO / 4096) as u16;
/// Room for the request headers in front of a full-size write.
const BUF_SIZE: usize = MAX_IO + 4096;
const SERVER_THREADS: usize = 4;
const ROOT_INO: u64 = 1;
/// How long the kernel may cache names and attributes (they never change).
const CACHE_SECS: u64 = 3600;

// Opcodes of the FUSE protocol (linux/fuse.h).
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const FSYNCDIR: u32 = 30;
const ACCESS: u32 = 34;
const INTERRUPT: u32 = 36;
const DESTROY: u32 = 38;
const BATCH_FORGET: u32 = 42;
const FALLOCATE: u32 = 43;

// INIT flags we ask for (only if the kernel offers them).
const FUSE_ASYNC_READ: u32 = 1 << 0;
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES_FLAG: u32 = 1 << 22;

const FATTR_SIZE: u32 = 1 << 3;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;

struct Entry {
    name: String,
    file: Arc<dyn BlockFile>,
}

/// The files of the filesystem; inode of entry `i` is `i + 2`.
type Files = Arc<RwLock<Vec<Entry>>>;

/// A mounted single-directory FUSE filesystem serving block files.
pub struct FuseBlockFiles {
    dir: Option<tempfile::TempDir>,
    mounted: bool,
    files: Files,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl FuseBlockFiles {
    /// Mount a filesystem in a new temp directory below `parent` with one file
    /// `disk` serving `disk`. The caller must be in a private mount namespace.
    pub fn mount(parent: &Path, disk: Arc<dyn BlockFile>) -> Result<Self, GuestError> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-fuse-")
            .tempdir_in(parent)
            .map_err(|source| GuestError::Io {
                what: "creating the FUSE mount point in",
                path: parent.to_path_buf(),
                source,
            })?;
        let dir_path = dir.path().to_path_buf();
        let fuse_err = |what: &'static str| {
            let path = dir_path.clone();
            move |source| GuestError::Io { what, path, source }
        };
        // SAFETY: plain open(2) of a device node with a constant path.
        let raw = unsafe {
            libc::open(
                c"/dev/fuse".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if raw < 0 {
            return Err(fuse_err("opening /dev/fuse for")(io::Error::last_os_error()));
        }
        // SAFETY: fresh descriptor owned by nobody else.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let target = crate::build::sandbox::sys::path_cstring(dir.path())
            .map_err(fuse_err("mounting FUSE on"))?;
        let data = CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            fd.as_raw_fd()
        ))
        .expect("no NUL in numbers");
        // SAFETY: valid NUL-terminated strings.
        let ret = unsafe {
            libc::mount(
                c"kiln".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data.as_ptr().cast(),
            )
        };
        if ret < 0 {
            return Err(fuse_err("mounting FUSE on")(io::Error::last_os_error()));
        }
        let files: Files = Arc::new(RwLock::new(vec![Entry {
            name: "disk".into(),
            file: disk,
        }]));
        let stop = Arc::new(AtomicBool::new(false));
        let mut this = FuseBlockFiles {
            dir: Some(dir),
            mounted: true,
            files: files.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for i in 0..SERVER_THREADS {
            let server = Server {
                fd: fd.clone(),
                files: files.clone(),
                stop: stop.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-fuse-{i}"))
                .spawn(move || server.run());
            match spawned {
                Ok(handle) => this.threads.push(handle),
                // Dropping `this` unmounts and stops the threads started so far.
                Err(source) => return Err(fuse_err("starting the FUSE server for")(source)),
            }
        }
        Ok(this)
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/"), |d| d.path())
    }

    /// The path of the `disk` file.
    pub fn disk_path(&self) -> PathBuf {
        self.dir().join("disk")
    }

    /// Serve one more file, `name`, and return its path.
    pub fn add_file(&self, name: &str, file: Arc<dyn BlockFile>) -> PathBuf {
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Entry {
                name: name.to_string(),
                file,
            });
        self.dir().join(name)
    }

    /// Unmount and stop serving. Whoever still has a file open gets ENOTCONN.
    pub fn unmount(&mut self) -> Result<(), GuestError> {
        let mut result = Ok(());
        if self.mounted {
            self.mounted = false;
            if let Err(source) = crate::build::sandbox::sys::detach_mount_at_path(self.dir()) {
                result = Err(GuestError::Io {
                    what: "unmounting the FUSE filesystem at",
                    path: self.dir().to_path_buf(),
                    source,
                });
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
        if result.is_ok()
            && let Some(dir) = self.dir.take()
        {
            let path = dir.path().to_path_buf();
            dir.close().map_err(|source| GuestError::Io {
                what: "removing the FUSE mount point",
                path,
                source,
            })?;
        }
        result
    }
}

impl Drop for FuseBlockFiles {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

struct Server {
    fd: Arc<OwnedFd>,
    files: Files,
    stop: Arc<AtomicBool>,
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ne_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A reply body under construction.
struct Out(Vec<u8>);

impl Out {
    fn new() -> Self {
        Out(vec![0; OUT_HEADER])
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

enum Reply {
    Ok(Out),
    Err(i32),
    None,
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(match e.kind() {
        io::ErrorKind::InvalidInput => libc::EINVAL,
        _ => libc::EIO,
    })
}

impl Server {
    fn run(self) {
        let mut buf = vec![0u8; BUF_SIZE];
        let fd = self.fd.as_raw_fd();
        while !self.stop.load(Ordering::SeqCst) {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: buf is valid for BUF_SIZE bytes.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    // Another thread took the request, or it was interrupted.
                    Some(libc::EAGAIN | libc::EINTR | libc::ENOENT) => continue,
                    // Unmounted and gone.
                    _ => break,
                }
            }
            self.handle(&buf[..n as usize]);
        }
    }

    fn handle(&self, req: &[u8]) {
        let (Some(opcode), Some(unique), Some(nodeid)) =
            (ne_u32(req, 4), ne_u64(req, 8), ne_u64(req, 16))
        else {
            return;
        };
        let body = req.get(IN_HEADER..).unwrap_or(&[]);
        let reply = self.dispatch(opcode, nodeid, body);
        let mut out = match reply {
            Reply::None => return,
            Reply::Err(errno) => {
                let mut o = Out::new();
                o.0[4..8].copy_from_slice(&(-errno).to_ne_bytes());
                o
            }
            Reply::Ok(o) => o,
        };
        let len = out.0.len() as u32;
        out.0[0..4].copy_from_slice(&len.to_ne_bytes());
        out.0[8..16].copy_from_slice(&unique.to_ne_bytes());
        // SAFETY: the buffer is valid for its length. A failed write (ENOENT:
        // the request was interrupted) needs no handling.
        unsafe { libc::write(self.fd.as_raw_fd(), out.0.as_ptr().cast(), out.0.len()) };
    }

    fn file(&self, nodeid: u64) -> Option<Arc<dyn BlockFile>> {
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        let index = usize::try_from(nodeid.checked_sub(2)?).ok()?;
        files.get(index).map(|e| e.file.clone())
    }

    fn dispatch(&self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        match opcode {
            INIT => self.init(body),
            LOOKUP => self.lookup(nodeid, body),
            GETATTR | SETATTR => self.getattr(opcode, nodeid, body),
            OPEN | OPENDIR => {
                let mut o = Out::new();
                o.u64(0).u32(0).u32(0);
                Reply::Ok(o)
            }
            READ => self.read(nodeid, body),
            WRITE => self.write(nodeid, body),
            FALLOCATE => self.fallocate(nodeid, body),
            READDIR => self.readdir(nodeid, body),
            STATFS => {
                let mut o = Out::new();
                o.zeros(40).u32(4096).u32(255).u32(4096).zeros(4 + 24);
                Reply::Ok(o)
            }
            RELEASE | RELEASEDIR | FLUSH | FSYNC | FSYNCDIR | ACCESS | DESTROY => {
                Reply::Ok(Out::new())
            }
            FORGET | BATCH_FORGET | INTERRUPT => Reply::None,
            _ => Reply::Err(libc::ENOSYS),
        }
    }

    fn init(&self, body: &[u8]) -> Reply {
        let (Some(major), Some(minor), Some(readahead), Some(flags)) = (
            ne_u32(body, 0),
            ne_u32(body, 4),
            ne_u32(body, 8),
            ne_u32(body, 12),
        ) else {
            return Reply::Err(libc::EINVAL);
        };
        let mut o = Out::new();
        if major != 7 {
            // Tell the kernel which major we speak; it retries or gives up.
            o.u32(7).u32(31);
            return Reply::Ok(o);
        }
        let wanted = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES_FLAG;
        o.u32(7)
            .u32(minor.min(31))
            .u32(readahead)
            .u32(flags & wanted)
            .u16(16) // max_background
            .u16(12) // congestion_threshold
            .u32(MAX_IO as u32) // max_write
            .u32(1) // time_gran
            .u16(MAX_PAGES)
            .u16(0) // map_alignment
            .u32(0) // flags2
            .zeros(4 + 6 * 4);
        Reply::Ok(o)
    }

    fn attr(&self, o: &mut Out, nodeid: u64, size: u64) {
        let (mode, nlink) = if nodeid == ROOT_INO {
            (libc::S_IFDIR | 0o755, 2)
        } else {
            (libc::S_IFREG | 0o600, 1)
        };
        o.u64(nodeid)
            .u64(size)
            .u64(size.div_ceil(512))
            .zeros(3 * 8 + 3 * 4) // times
            .u32(mode)
            .u32(nlink)
            .u32(0) // uid
            .u32(0) // gid
            .u32(0) // rdev
            .u32(4096) // blksize
            .u32(0); // flags
    }

    fn lookup(&self, parent: u64, body: &[u8]) -> Reply {
        if parent != ROOT_INO {
            return Reply::Err(libc::ENOENT);
        }
        let name = body.split(|&b| b == 0).next().unwrap_or(&[]);
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        let Some((index, entry)) = files
            .iter()
            .enumerate()
            .find(|(_, e)| e.name.as_bytes() == name)
        else {
            return Reply::Err(libc::ENOENT);
        };
        let ino = index as u64 + 2;
        let mut o = Out::new();
        o.u64(ino)
            .u64(0)
            .u64(CACHE_SECS)
            .u64(CACHE_SECS)
            .u32(0)
            .u32(0);
        self.attr(&mut o, ino, entry.file.size());
        Reply::Ok(o)
    }

    fn getattr(&self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        let size = if nodeid == ROOT_INO {
            0
        } else {
            match self.file(nodeid) {
                Some(f) => f.size(),
                None => return Reply::Err(libc::ENOENT),
            }
        };
        if opcode == SETATTR {
            let valid = ne_u32(body, 0).unwrap_or(0);
            let new_size = ne_u64(body, 16).unwrap_or(size);
            if valid & FATTR_SIZE != 0 && new_size != size {
                // A disk does not change size under a mounted guest.
                return Reply::Err(libc::EPERM);
            }
        }
        let mut o = Out::new();
        o.u64(CACHE_SECS).u32(0).u32(0);
        self.attr(&mut o, nodeid, size);
        Reply::Ok(o)
    }

    fn read(&self, nodeid: u64, body: &[u8]) -> Reply {
        let (Some(offset), Some(size)) = (ne_u64(body, 8), ne_u32(body, 16)) else {
            return Reply::Err(libc::EINVAL);
        };
        let Some(file) = self.file(nodeid) else {
            return Reply::Err(libc::EISDIR);
        };
        let len = (size as u64)
            .min(MAX_IO as u64)
            .min(file.size().saturating_sub(offset)) as usize;
        let mut o = Out::new();
        o.zeros(len);
        if let Err(e) = file.read_at(&mut o.0[OUT_HEADER..], offset) {
            return Reply::Err(errno_of(&e));
        }
        Reply::Ok(o)
    }

    fn write(&self, nodeid: u64, body: &[u8]) -> Reply {
        let (Some(offset), Some(size)) = (ne_u64(body, 8), ne_u32(body, 16)) else {
            return Reply::Err(libc::EINVAL);
        };
        let Some(data) = body.get(40..40 + size as usize) else {
            return Reply::Err(libc::EINVAL);
        };
        let Some(file) = self.file(nodeid) else {
            return Reply::Err(libc::EISDIR);
        };
        if offset.saturating_add(size as u64) > file.size() {
            return Reply::Err(libc::EFBIG);
        }
        if let Err(e) = file.write_at(data, offset) {
            return Reply::Err(errno_of(&e));
        }
        let mut o = Out::new();
        o.u32(size).u32(0);
        Reply::Ok(o)
    }

    fn fallocate(&self, nodeid: u64, body: &[u8]) -> Reply {
        let (Some(offset), Some(len), Some(mode)) =
            (ne_u64(body, 8), ne_u64(body, 16), ne_u32(body, 24))
        else {
            return Reply::Err(libc::EINVAL);
        };
        let Some(file) = self.file(nodeid) else {
            return Reply::Err(libc::EISDIR);
        };
        let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
        let zero = libc::FALLOC_FL_ZERO_RANGE as u32;
        let keep = libc::FALLOC_FL_KEEP_SIZE as u32;
        let end = offset.saturating_add(len);
        let result = match mode {
            // Plain allocation: every byte is already "allocated".
            0 if end <= file.size() => Ok(()),
            m if m == keep => Ok(()),
            m if m == punch || m & !keep == zero => {
                if end > file.size() {
                    return Reply::Err(libc::EFBIG);
                }
                file.write_zeroes(offset, len)
            }
            _ => return Reply::Err(libc::EOPNOTSUPP),
        };
        match result {
            Ok(()) => Reply::Ok(Out::new()),
            Err(e) => Reply::Err(errno_of(&e)),
        }
    }

    fn readdir(&self, nodeid: u64, body: &[u8]) -> Reply {
        if nodeid != ROOT_INO {
            return Reply::Err(libc::ENOTDIR);
        }
        let (Some(start), Some(size)) = (ne_u64(body, 8), ne_u32(body, 16)) else {
            return Reply::Err(libc::EINVAL);
        };
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<(u64, u32, &[u8])> = vec![
            (ROOT_INO, libc::DT_DIR as u32, b"."),
            (ROOT_INO, libc::DT_DIR as u32, b".."),
        ];
        for (i, e) in files.iter().enumerate() {
            names.push((i as u64 + 2, libc::DT_REG as u32, e.name.as_bytes()));
        }
        let mut o = Out::new();
        for (index, (ino, kind, name)) in names.iter().enumerate().skip(start as usize) {
            let entry_len = (24 + name.len()).div_ceil(8) * 8;
            if o.0.len() - OUT_HEADER + entry_len > size as usize {
                break;
            }
            o.u64(*ino)
                .u64(index as u64 + 1)
                .u32(name.len() as u32)
                .u32(*kind);
            o.0.extend_from_slice(name);
            o.zeros(entry_len - 24 - name.len());
        }
        Reply::Ok(o)
    }
}

/// A file made of extents of the disk, in order: a partition (one extent) or
/// an LVM logical volume (one extent per segment).
pub struct Region {
    disk: Arc<dyn BlockFile>,
    /// (offset on the disk, length), in file order.
    extents: Vec<(u64, u64)>,
    size: u64,
}

impl Region {
    /// None when an extent lies outside the disk.
    pub fn new(disk: Arc<dyn BlockFile>, extents: Vec<(u64, u64)>) -> Option<Self> {
        let disk_size = disk.size();
        let mut size = 0u64;
        for &(off, len) in &extents {
            if off.checked_add(len)? > disk_size {
                return None;
            }
            size = size.checked_add(len)?;
        }
        Some(Region {
            disk,
            extents,
            size,
        })
    }

    /// Call `f(disk_offset, range_in_buffer)` for each piece of `len` bytes at `offset`.
    fn pieces(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut file_pos = 0u64;
        let mut done = 0usize;
        for &(disk_off, ext_len) in &self.extents {
            if done == len {
                break;
            }
            let want = offset + done as u64;
            if want < file_pos + ext_len {
                let within = want - file_pos;
                let n = ((ext_len - within) as usize).min(len - done);
                f(disk_off + within, done..done + n)?;
                done += n;
            }
            file_pos += ext_len;
        }
        Ok(())
    }
}

impl BlockFile for Region {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len();
        self.pieces(offset, len, |at, r| self.disk.read_at(&mut buf[r], at))
    }
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.pieces(offset, data.len(), |at, r| self.disk.write_at(&data[r], at))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.pieces(offset, len, |at, r| {
            self.disk.write_zeroes(at, (r.end - r.start) as u64)
        })
    }
}

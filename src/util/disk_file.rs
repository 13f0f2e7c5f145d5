//! A disk that is either a block device or a regular file: its size, and making
//! a byte range read as zeros the cheapest way the storage allows.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// _IOR(0x12, 114, u64): size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// _IO(0x12, 127): make a byte range of a block device read as zeros.
const BLKZEROOUT: libc::c_ulong = 0x127f;
/// Bytes of zeros written at a time when nothing cheaper works.
const ZERO_WRITE: usize = 1 << 20;

/// The size in bytes of a block device.
pub fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 stores one u64 through the pointer we pass.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// What a regular file's zeroed range should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeroing {
    /// A hole first (frees the space, as UNMAP means), else allocated zeros.
    FreeSpace,
    /// Allocated zeros first (no fragmentation of a disk image being written),
    /// else a hole.
    KeepAllocated,
}

/// Makes `[offset, offset + len)` read as zeros: BLKZEROOUT on a block device,
/// fallocate on a file (never growing it), written zeros where neither works.
pub fn zero_range(
    file: &File,
    block_device: bool,
    offset: u64,
    len: u64,
    zeroing: Zeroing,
) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let fd = file.as_raw_fd();
    if block_device {
        let range = [offset, len];
        // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer.
        if unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) } == 0 {
            return Ok(());
        }
    } else {
        let modes = match zeroing {
            Zeroing::FreeSpace => [libc::FALLOC_FL_PUNCH_HOLE, libc::FALLOC_FL_ZERO_RANGE],
            Zeroing::KeepAllocated => [libc::FALLOC_FL_ZERO_RANGE, libc::FALLOC_FL_PUNCH_HOLE],
        };
        for mode in modes {
            // SAFETY: a plain syscall on a descriptor we own; KEEP_SIZE means
            // the file never grows.
            let rc = unsafe {
                libc::fallocate(
                    fd,
                    mode | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc == 0 {
                return Ok(());
            }
        }
    }
    write_zeros(file, offset, len)
}

/// Writes zeros over `[offset, offset + len)`, a MiB at a time.
pub fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_WRITE.min(len as usize)];
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let n = zeros.len().min((end - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_ranges_read_as_zeros_and_the_file_keeps_its_size() {
        for zeroing in [Zeroing::FreeSpace, Zeroing::KeepAllocated] {
            let file = tempfile::tempfile().unwrap();
            let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8 + 1).collect();
            file.write_all_at(&data, 0).unwrap();
            zero_range(&file, false, 4096, 2 << 20, zeroing).unwrap();
            write_zeros(&file, 100, 10).unwrap();
            let mut back = vec![0u8; data.len()];
            file.read_exact_at(&mut back, 0).unwrap();
            let mut want = data.clone();
            want[4096..4096 + (2 << 20)].fill(0);
            want[100..110].fill(0);
            assert!(back == want, "{zeroing:?}");
            assert_eq!(file.metadata().unwrap().len(), data.len() as u64);
        }
    }
}

//! Writing newc archives ("070701", no checksum) into any byte sink. File data goes
//! to the sink straight from the entry's buffer, so an archive of any size streams
//! into a compressor or a file without being assembled in memory first.

use std::io::Write;

use super::{CpioError, Entry, HEADER_LEN, MAGIC_NEWC, TRAILER, pad4};

/// Writes one complete archive into `W`. Entries are written exactly as given;
/// `finish` appends the trailer and hands the sink back.
#[derive(Debug)]
pub struct ArchiveWriter<W: Write = Vec<u8>> {
    sink: W,
    written: u64,
    /// Header, name and padding of the entry being written.
    scratch: Vec<u8>,
}

impl ArchiveWriter<Vec<u8>> {
    /// An archive built in memory.
    pub fn new() -> Self {
        Self::to(Vec::new())
    }
}

impl Default for ArchiveWriter<Vec<u8>> {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes an entry with a `name_len`-byte name and `data_len` bytes of data takes
/// in a newc archive (header, NUL-terminated name and data, each padded to 4).
pub fn entry_len(name_len: usize, data_len: usize) -> u64 {
    (pad4(HEADER_LEN + name_len + 1) + pad4(data_len)) as u64
}

/// Bytes of the trailer entry.
pub fn trailer_len() -> u64 {
    entry_len(TRAILER.len(), 0)
}

impl<W: Write> ArchiveWriter<W> {
    pub fn to(sink: W) -> Self {
        ArchiveWriter {
            sink,
            written: 0,
            scratch: Vec::with_capacity(512),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Append `entry`. Fails, writing nothing, if its name is empty or holds a NUL,
    /// or if its data does not fit newc's 32-bit size field; fails with
    /// [`CpioError::Write`] if the sink does.
    pub fn add(&mut self, entry: &Entry) -> Result<(), CpioError> {
        self.add_with_data(entry, &entry.data)
    }

    /// [`ArchiveWriter::add`] with `data` in place of the entry's own (for data
    /// read just in time into a reused buffer).
    pub fn add_with_data(&mut self, entry: &Entry, data: &[u8]) -> Result<(), CpioError> {
        if entry.name.is_empty() || entry.name.contains(&0) {
            return Err(CpioError::NameNotStorable {
                name: entry.name_lossy(),
            });
        }
        let filesize = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            name: entry.name_lossy(),
            what: "size",
            value: data.len() as u64,
        })?;
        let namesize = u32::try_from(entry.name.len() + 1).map_err(|_| CpioError::TooLarge {
            name: entry.name_lossy(),
            what: "name length",
            value: entry.name.len() as u64 + 1,
        })?;
        self.put_entry(entry, filesize, namesize, &entry.name, data)
    }

    /// Append the trailer and return the sink.
    pub fn finish(mut self) -> Result<W, CpioError> {
        let trailer = Entry {
            nlink: 1,
            ..Entry::default()
        };
        self.put_entry(&trailer, 0, TRAILER.len() as u32 + 1, TRAILER, &[])?;
        self.sink.flush().map_err(CpioError::Write)?;
        Ok(self.sink)
    }

    fn put_entry(
        &mut self,
        e: &Entry,
        filesize: u32,
        namesize: u32,
        name: &[u8],
        data: &[u8],
    ) -> Result<(), CpioError> {
        let head = &mut self.scratch;
        head.clear();
        head.extend_from_slice(MAGIC_NEWC);
        let fields = [
            e.ino,
            e.mode,
            e.uid,
            e.gid,
            e.nlink,
            e.mtime,
            filesize,
            e.dev_major,
            e.dev_minor,
            e.rdev_major,
            e.rdev_minor,
            namesize,
            0,
        ];
        for v in fields {
            push_hex8(head, v);
        }
        head.extend_from_slice(name);
        head.push(0);
        head.resize(pad4(head.len()), 0);
        self.sink.write_all(head).map_err(CpioError::Write)?;
        self.sink.write_all(data).map_err(CpioError::Write)?;
        let pad = pad4(data.len()) - data.len();
        self.sink
            .write_all(&[0u8; 3][..pad])
            .map_err(CpioError::Write)?;
        self.written += (head.len() + data.len() + pad) as u64;
        Ok(())
    }
}

/// `v` as eight upper-case hex digits.
fn push_hex8(out: &mut Vec<u8>, v: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for shift in (0..8).rev() {
        out.push(DIGITS[((v >> (shift * 4)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Blob, read_archive};
    use super::*;

    fn entry(name: &str, mode: u32, data: &[u8]) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            mode,
            nlink: 1,
            data: Blob::from(data),
            ..Entry::default()
        }
    }

    #[test]
    fn round_trip_and_alignment() {
        let mut w = ArchiveWriter::new();
        let entries = vec![
            entry(".", 0o40755, b""),
            entry("a", 0o100644, b"x"),
            entry("bb", 0o100755, b"hello"),
            entry("l", 0o120777, b"bb"),
        ];
        for e in &entries {
            w.add(e).unwrap();
        }
        let bytes = Blob::new(w.finish().unwrap());
        assert_eq!(bytes.len() % 4, 0);
        let archive = read_archive(&bytes, 0).unwrap();
        assert_eq!(archive.entries, entries);
        assert_eq!(archive.end, bytes.len());
    }

    #[test]
    fn hostile_headers_are_errors() {
        let mut w = ArchiveWriter::new();
        w.add(&entry("file", 0o100644, b"data")).unwrap();
        let good = w.finish().unwrap();
        // name size past the end
        let mut bad = good.clone();
        bad[94..102].copy_from_slice(b"FFFFFFFF");
        assert!(matches!(
            read_archive(&Blob::new(bad), 0),
            Err(CpioError::Truncated { what: "name", .. })
        ));
        // file size past the end
        let mut bad = good.clone();
        bad[54..62].copy_from_slice(b"7FFFFFFF");
        assert!(matches!(
            read_archive(&Blob::new(bad), 0),
            Err(CpioError::Truncated {
                what: "file data",
                ..
            })
        ));
        // not hex
        let mut bad = good.clone();
        bad[14] = b'z';
        assert!(matches!(
            read_archive(&Blob::new(bad), 0),
            Err(CpioError::BadNumber { field: "mode", .. })
        ));
        // bad magic, cut anywhere
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            read_archive(&Blob::new(bad), 0),
            Err(CpioError::BadMagic { .. })
        ));
        for cut in 0..good.len() {
            assert!(read_archive(&Blob::new(good[..cut].to_vec()), 0).is_err());
        }
    }

    #[test]
    fn crc_format_checksums_are_verified() {
        let mut w = ArchiveWriter::new();
        w.add(&entry("f", 0o100644, b"abc")).unwrap();
        let mut bytes = w.finish().unwrap();
        bytes[..6].copy_from_slice(b"070702");
        bytes[102..110].copy_from_slice(format!("{:08X}", 0x61 + 0x62 + 0x63).as_bytes());
        assert!(read_archive(&Blob::new(bytes.clone()), 0).is_ok());
        bytes[102..110].copy_from_slice(b"00000001");
        assert!(matches!(
            read_archive(&Blob::new(bytes), 0),
            Err(CpioError::Checksum { .. })
        ));
    }
}

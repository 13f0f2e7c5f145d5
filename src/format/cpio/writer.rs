//! Writing newc archives ("070701", no checksum) into memory.

use std::io::Write;

use super::{CpioError, Entry, MAGIC_NEWC, TRAILER, pad4};

/// Builds one complete archive. Entries are written exactly as given; `finish`
/// appends the trailer.
#[derive(Debug, Default)]
pub struct ArchiveWriter {
    out: Vec<u8>,
}

impl ArchiveWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Append `entry`. Fails (writing nothing) if its name is empty or holds a NUL,
    /// or if its data does not fit newc's 32-bit size field.
    pub fn add(&mut self, entry: &Entry) -> Result<(), CpioError> {
        if entry.name.is_empty() || entry.name.contains(&0) {
            return Err(CpioError::NameNotStorable {
                name: entry.name_lossy(),
            });
        }
        let filesize = u32::try_from(entry.data.len()).map_err(|_| CpioError::TooLarge {
            name: entry.name_lossy(),
            what: "size",
            value: entry.data.len() as u64,
        })?;
        let namesize = u32::try_from(entry.name.len() + 1).map_err(|_| CpioError::TooLarge {
            name: entry.name_lossy(),
            what: "name length",
            value: entry.name.len() as u64 + 1,
        })?;
        self.header(entry, filesize, namesize);
        self.out.extend_from_slice(&entry.name);
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(&entry.data);
        self.pad();
        Ok(())
    }

    /// Append the trailer and return the archive.
    pub fn finish(mut self) -> Vec<u8> {
        let trailer = Entry {
            name: TRAILER.to_vec(),
            nlink: 1,
            ..Entry::default()
        };
        self.header(&trailer, 0, TRAILER.len() as u32 + 1);
        self.out.extend_from_slice(TRAILER);
        self.out.push(0);
        self.pad();
        self.out
    }

    fn header(&mut self, e: &Entry, filesize: u32, namesize: u32) {
        self.out.extend_from_slice(MAGIC_NEWC);
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
            // Writing to a Vec cannot fail.
            let _ = write!(self.out, "{v:08X}");
        }
    }

    fn pad(&mut self) {
        let padded = pad4(self.out.len());
        self.out.resize(padded, 0);
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
        let bytes = Blob::new(w.finish());
        assert_eq!(bytes.len() % 4, 0);
        let archive = read_archive(&bytes, 0).unwrap();
        assert_eq!(archive.entries, entries);
        assert_eq!(archive.end, bytes.len());
    }

    #[test]
    fn hostile_headers_are_errors() {
        let mut w = ArchiveWriter::new();
        w.add(&entry("file", 0o100644, b"data")).unwrap();
        let good = w.finish();
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
        let mut bytes = w.finish();
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

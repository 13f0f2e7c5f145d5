//! Pieces shared by the package readers (`rpm`, `deb`): the compressions a package
//! payload may use, a bounded decoder chain, and the entry type both readers produce.
//!
//! Data flows one way: raw member bytes -> `decoder` (sniffed or declared
//! compression) -> `Limited` (refuses more than a fixed number of bytes) -> archive
//! parser (cpio or tar) -> `ArchiveEntry` list.

use std::fmt;
use std::io::{self, Read};

/// The default bound on a decompressed package payload.
pub const MAX_PAYLOAD_BYTES: u64 = 4 << 30;

/// Longest path or link target accepted in a package archive (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// The stream compressions that RPM payloads and deb members use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    /// The legacy `.lzma` ("lzma_alone") container.
    Lzma,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Zstd => "zstd",
        }
    }

    /// Recognize a compression by its magic bytes. The lzma_alone format has no
    /// magic; its usual first bytes (properties 0x5d, then a little-endian
    /// dictionary size whose low bytes are zero) are accepted as a hint.
    pub fn sniff(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Compression::Xz)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if head.starts_with(b"BZh") {
            Some(Compression::Bzip2)
        } else if head.starts_with(&[0x5d, 0x00, 0x00]) {
            Some(Compression::Lzma)
        } else {
            None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A reader that replays peeked bytes before the rest of the stream.
pub type Replay<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Read the first bytes of `r` (up to `N`, fewer at end of stream) without losing
/// them: returns the bytes and a reader that yields them again, then the rest.
pub fn peek<R: Read, const N: usize>(mut r: R) -> io::Result<(Vec<u8>, Replay<R>)> {
    let mut head = [0u8; N];
    let mut got = 0;
    while got < N {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = head[..got].to_vec();
    Ok((head.clone(), io::Cursor::new(head).chain(r)))
}

/// A decoder for `compression` over `r`, bounded to `limit` output bytes.
pub fn decoder<'a, R: Read + 'a>(
    compression: Compression,
    r: R,
    limit: u64,
) -> io::Result<Limited<Box<dyn Read + 'a>>> {
    let inner: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                u64::MAX,
                liblzma::stream::CONCATENATED,
            )
            .map_err(io::Error::other)?;
            Box::new(liblzma::read::XzDecoder::new_stream(r, stream))
        }
        Compression::Lzma => {
            let stream =
                liblzma::stream::Stream::new_lzma_decoder(u64::MAX).map_err(io::Error::other)?;
            Box::new(liblzma::read::XzDecoder::new_stream(r, stream))
        }
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    };
    Ok(Limited::new(inner, limit))
}

/// A reader that fails once more than `limit` bytes would be produced, and counts
/// what it produced (the offset in the decompressed stream, for error messages).
pub struct Limited<R> {
    inner: R,
    limit: u64,
    pos: u64,
}

impl<R: Read> Limited<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Limited {
            inner,
            limit,
            pos: 0,
        }
    }

    /// Bytes produced so far.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.limit {
            // Allow reading exactly `limit` bytes; refuse only if more exist.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(format!(
                    "decompressed payload is larger than the limit of {} bytes",
                    self.limit
                ))),
            };
        }
        let room = usize::try_from(self.limit - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        let n = self.inner.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// One member of a package's file archive, with hardlinks already resolved to
/// copies of their content. `path` is as stored in the archive (e.g. "./lib/x").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (low 12 bits of st_mode).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    /// A device node, fifo or socket: recorded so callers can refuse it by name.
    Special(&'static str),
}

/// The name of a non-regular, non-directory, non-symlink file type from st_mode.
pub fn special_type_name(mode: u32) -> &'static str {
    match mode & 0o170000 {
        0o020000 => "character device",
        0o060000 => "block device",
        0o010000 => "fifo",
        0o140000 => "socket",
        _ => "unknown file type",
    }
}

/// Read all of `r` into memory, growing as data arrives (never from a declared size).
pub fn read_all<R: Read>(r: &mut R, declared: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(declared.min(1 << 20)).unwrap_or(0));
    r.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sniffs_magic() {
        assert_eq!(
            Compression::sniff(&[0x1f, 0x8b, 8]),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::sniff(b"\xfd7zXZ\0rest"), Some(Compression::Xz));
        assert_eq!(Compression::sniff(b"BZh9"), Some(Compression::Bzip2));
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::sniff(b"070701"), None);
        assert_eq!(Compression::sniff(b""), None);
    }

    #[test]
    fn limit_is_enforced() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[7u8; 10_000]).unwrap();
        let data = gz.finish().unwrap();
        let mut out = Vec::new();
        let err = decoder(Compression::Gzip, &data[..], 9_999)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        let mut out = Vec::new();
        decoder(Compression::Gzip, &data[..], 10_000)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 10_000);
    }

    #[test]
    fn peek_keeps_bytes() {
        let (head, mut r) = peek::<_, 4>(&b"abcdefg"[..]).unwrap();
        assert_eq!(head, b"abcd");
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcdefg");
        let (head, _) = peek::<_, 4>(&b"ab"[..]).unwrap();
        assert_eq!(head, b"ab");
    }
}

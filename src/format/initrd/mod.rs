//! Linux initramfs images as the kernel reads them: a sequence of segments, each
//! either a plain newc cpio archive (typically the early CPU microcode archive) or
//! a compressed stream holding one or more cpio archives, with zero padding
//! allowed between segments.
//!
//! [`Initrd::parse`] keeps the whole image in memory, finds where each compressed
//! stream ends (bytes the decompressor consumed) so the following segment is found,
//! and keeps every segment's raw bytes so an untouched segment can be written back
//! byte-identical. [`SegmentEncoder`] streams a segment out as gzip (one member whose
//! deflate chunks are compressed in parallel), zstd (multi-threaded), xz
//! (multi-threaded) or plain.

mod compress;
mod decompress;

use std::fmt;

use super::cpio::{self, Blob, CpioError, Entry};

pub use compress::{GZIP_LEVEL, SegmentEncoder, XZ_PRESET, ZSTD_LEVEL, compress};

/// How a segment is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain cpio archive.
    None,
    Gzip,
    Zstd,
    Xz,
    /// The lz4 "legacy" frame (magic 0x184C2102) the kernel's lz4 support reads.
    Lz4,
    Bzip2,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
            Compression::Bzip2 => "bzip2",
        }
    }

    /// Whether kiln can write this compression.
    pub fn writable(self) -> bool {
        matches!(
            self,
            Compression::None | Compression::Gzip | Compression::Zstd | Compression::Xz
        )
    }

    /// Recognize a segment by its first bytes.
    fn detect(bytes: &[u8]) -> Option<Compression> {
        const MAGICS: [(&[u8], Compression); 7] = [
            (cpio::MAGIC_NEWC, Compression::None),
            (cpio::MAGIC_CRC, Compression::None),
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
            (b"BZh", Compression::Bzip2),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| bytes.starts_with(magic))
            .map(|(_, c)| *c)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = InitrdFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "none" => Compression::None,
            "gzip" | "gz" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            "xz" => Compression::Xz,
            "lz4" => Compression::Lz4,
            "bzip2" | "bz2" => Compression::Bzip2,
            other => return Err(InitrdFormatError::UnknownCompression(other.to_string())),
        })
    }
}

/// One segment of an initramfs.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Where the segment starts in the file (after any zero padding).
    pub offset: u64,
    /// Bytes of the file it occupies: the compressed stream, or the plain archive
    /// through its trailer.
    pub len: u64,
    pub compression: Compression,
    /// Size of the decompressed cpio data.
    pub expanded_len: u64,
    /// The entries of every cpio archive in the segment, in archive order, trailers
    /// excluded.
    pub entries: Vec<Entry>,
    /// Index in `entries` where each cpio archive of the segment starts (the kernel
    /// forgets hardlink identities at each trailer, so they are per archive).
    pub archive_starts: Vec<usize>,
    /// The segment's bytes as stored in the file.
    pub raw: Blob,
}

/// A parsed initramfs.
#[derive(Debug, Clone)]
pub struct Initrd {
    pub segments: Vec<Segment>,
    /// The whole file.
    pub bytes: Blob,
}

/// Default bound on the decompressed size of all segments together (a decompression
/// bomb fails with an error instead of exhausting memory).
pub const DEFAULT_MAX_EXPANDED: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum InitrdFormatError {
    #[error("the initramfs is empty (no cpio archive found)")]
    Empty,
    #[error(
        "offset {offset}: unrecognized data {found} (expected a cpio archive or a gzip, zstd, xz, lz4 or bzip2 stream)"
    )]
    UnknownData { offset: u64, found: String },
    #[error(
        "offset {offset}: {what} compressed segments are not supported (the kernel's {what} is rare; repack with gzip, zstd or xz)"
    )]
    Unsupported { offset: u64, what: &'static str },
    #[error("offset {offset}: {compression} stream is truncated or corrupt: {message}")]
    Decompress {
        offset: u64,
        compression: Compression,
        message: String,
    },
    #[error("offset {offset}: {compression} segment expands past the limit of {limit} bytes")]
    TooLarge {
        offset: u64,
        compression: Compression,
        limit: u64,
    },
    #[error("in the {compression} segment at file offset {offset}{}: {source}",
        if *compression == Compression::None { "" } else { " (offsets below are in its decompressed data)" })]
    Cpio {
        offset: u64,
        compression: Compression,
        source: CpioError,
    },
    #[error("unknown compression {0:?} (expected gzip, zstd, xz or none)")]
    UnknownCompression(String),
    #[error("kiln cannot write {0} compression (use gzip, zstd, xz or none)")]
    NotWritable(Compression),
    #[error("compressing with {compression}: {message}")]
    Compress {
        compression: Compression,
        message: String,
    },
    #[error(transparent)]
    Interrupted(#[from] crate::util::interrupt::Interrupted),
}

impl Initrd {
    /// Parse an initramfs held in memory, with the default expansion bound.
    pub fn parse(bytes: Vec<u8>) -> Result<Initrd, InitrdFormatError> {
        Self::parse_with_limit(bytes, DEFAULT_MAX_EXPANDED)
    }

    /// Parse an initramfs; decompressed data of all segments together may not exceed
    /// `max_expanded` bytes.
    pub fn parse_with_limit(
        bytes: Vec<u8>,
        max_expanded: u64,
    ) -> Result<Initrd, InitrdFormatError> {
        let blob = Blob::new(bytes);
        let data: &[u8] = &blob;
        let mut segments = Vec::new();
        let mut budget = max_expanded;
        let mut pos = 0usize;
        // Zero padding between segments is skipped, as the kernel does.
        while let Some(skip) = data[pos..].iter().position(|&b| b != 0) {
            pos += skip;
            let offset = pos as u64;
            let rest = &data[pos..];
            let Some(compression) = Compression::detect(rest) else {
                return Err(unknown_data(rest, offset));
            };
            let segment = if compression == Compression::None {
                let archive =
                    cpio::read_archive(&blob, pos).map_err(|source| InitrdFormatError::Cpio {
                        offset,
                        compression,
                        source,
                    })?;
                let len = archive.end - pos;
                Segment {
                    offset,
                    len: len as u64,
                    compression,
                    expanded_len: len as u64,
                    entries: archive.entries,
                    archive_starts: vec![0],
                    raw: blob.slice(pos..archive.end),
                }
            } else {
                let (expanded, consumed) = decompress::decompress(compression, rest, budget)
                    .map_err(|e| match e {
                        decompress::Error::TooLarge => InitrdFormatError::TooLarge {
                            offset,
                            compression,
                            limit: max_expanded,
                        },
                        decompress::Error::Corrupt(message) => InitrdFormatError::Decompress {
                            offset,
                            compression,
                            message,
                        },
                    })?;
                budget -= expanded.len() as u64;
                let expanded = Blob::new(expanded);
                let (entries, archive_starts) =
                    read_archives(&expanded).map_err(|source| InitrdFormatError::Cpio {
                        offset,
                        compression,
                        source,
                    })?;
                Segment {
                    offset,
                    len: consumed as u64,
                    compression,
                    expanded_len: expanded.len() as u64,
                    entries,
                    archive_starts,
                    raw: blob.slice(pos..pos + consumed),
                }
            };
            pos += segment.len as usize;
            segments.push(segment);
        }
        if segments.is_empty() {
            return Err(InitrdFormatError::Empty);
        }
        Ok(Initrd {
            segments,
            bytes: blob,
        })
    }

    /// Total size of the file.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn unknown_data(rest: &[u8], offset: u64) -> InitrdFormatError {
    if rest.starts_with(&[0x5d, 0x00, 0x00]) {
        return InitrdFormatError::Unsupported {
            offset,
            what: "lzma (legacy .lzma)",
        };
    }
    if rest.starts_with(&[0x89, b'L', b'Z', b'O']) {
        return InitrdFormatError::Unsupported {
            offset,
            what: "lzo",
        };
    }
    if rest.starts_with(b"070707") {
        return InitrdFormatError::Cpio {
            offset,
            compression: Compression::None,
            source: CpioError::UnsupportedFormat {
                offset: offset as usize,
                found: "070707".into(),
            },
        };
    }
    let found = rest
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    InitrdFormatError::UnknownData { offset, found }
}

/// The cpio archives of a decompressed stream: archive, zero padding, archive, ...
fn read_archives(data: &Blob) -> Result<(Vec<Entry>, Vec<usize>), CpioError> {
    let mut entries = Vec::new();
    let mut starts = Vec::new();
    let mut pos = 0;
    while let Some(skip) = data[pos..].iter().position(|&b| b != 0) {
        pos += skip;
        starts.push(entries.len());
        let archive = cpio::read_archive(data, pos)?;
        entries.extend(archive.entries);
        // A trailer always advances `pos` (header is 110 bytes).
        pos = archive.end;
    }
    Ok((entries, starts))
}

#[cfg(test)]
mod tests;

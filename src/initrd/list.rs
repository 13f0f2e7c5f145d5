//! `kiln initrd ls`: the segments of an initramfs and the entries of each.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{InitrdError, io_err};
use crate::format::cpio::{Entry, FileType, mode_string};
use crate::format::initrd::{Compression, Initrd};

/// Read and parse an initramfs file (kept whole in memory).
pub fn read_initrd(path: &Path) -> Result<Initrd, InitrdError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let mut bytes = crate::util::bigbuf::with_capacity(size as usize);
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io_err(path))?;
    Initrd::parse(bytes).map_err(|source| InitrdError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// Size of the file in bytes.
    pub size: u64,
    pub segments: Vec<SegmentListing>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentListing {
    pub offset: u64,
    /// Bytes the segment occupies in the file.
    pub length: u64,
    pub compression: Compression,
    /// Bytes of cpio data once decompressed.
    pub uncompressed_length: u64,
    pub entries: Vec<EntryListing>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryListing {
    /// The name exactly as stored (invalid UTF-8 replaced).
    pub path: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    /// Permission bits and type, as st_mode.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: u32,
    pub nlink: u32,
    pub ino: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// "major:minor" of a device node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rdev: Option<String>,
}

impl EntryListing {
    fn new(e: &Entry) -> Self {
        let kind = e.file_type();
        EntryListing {
            path: e.name_lossy(),
            file_type: kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size: e.data.len() as u64,
            mtime: e.mtime,
            nlink: e.nlink,
            ino: e.ino,
            target: (kind == FileType::Symlink)
                .then(|| String::from_utf8_lossy(&e.data).into_owned()),
            rdev: matches!(kind, FileType::Char | FileType::Block)
                .then(|| format!("{}:{}", e.rdev_major, e.rdev_minor)),
        }
    }
}

/// Describe every segment and entry.
pub fn list(initrd: &Initrd) -> Listing {
    Listing {
        size: initrd.len(),
        segments: initrd
            .segments
            .iter()
            .map(|s| SegmentListing {
                offset: s.offset,
                length: s.len,
                compression: s.compression,
                uncompressed_length: s.expanded_len,
                entries: s.entries.iter().map(EntryListing::new).collect(),
            })
            .collect(),
    }
}

/// The text form: a line per segment, then `ls -l`-like lines per entry.
pub fn render_text(listing: &Listing) -> String {
    let mut out = String::new();
    for (i, s) in listing.segments.iter().enumerate() {
        let _ = writeln!(
            out,
            "segment {i}: offset {}, {} bytes, {}, {} bytes uncompressed, {} entries",
            s.offset,
            s.length,
            s.compression,
            s.uncompressed_length,
            s.entries.len()
        );
        for e in &s.entries {
            let size = match &e.rdev {
                Some(r) => r.replace(':', ", "),
                None => e.size.to_string(),
            };
            let _ = write!(
                out,
                "{} {:>5} {:>5} {:>10} {}",
                mode_string(e.mode),
                e.uid,
                e.gid,
                size,
                e.path
            );
            if let Some(t) = &e.target {
                let _ = write!(out, " -> {t}");
            }
            out.push('\n');
        }
    }
    out
}

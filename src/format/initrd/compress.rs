//! Compressing cpio archives into an initramfs segment, using every core while the
//! output stays independent of the number of threads:
//!
//! * gzip: each archive part becomes its own gzip member, compressed in parallel
//!   and concatenated (the kernel reads member after member);
//! * zstd: one frame from zstd's worker threads (its output does not depend on the
//!   worker count once there is at least one worker);
//! * xz: one stream of fixed-size blocks from liblzma's multi-threaded encoder
//!   (CRC32 check, which every kernel's xz decoder supports).

use std::io::Write;

use rayon::prelude::*;

use super::{Compression, InitrdFormatError};
use crate::util::interrupt;

pub const GZIP_LEVEL: u32 = 9;
pub const ZSTD_LEVEL: i32 = 12;
pub const XZ_PRESET: u32 = 6;
/// xz block size; fixed so the output does not depend on the thread count.
const XZ_BLOCK: u64 = 8 << 20;
/// Progress and interruption are checked after each chunk of this size.
const CHUNK: usize = 1 << 20;

/// Compress `parts` (each a complete cpio archive) into one segment. With gzip each
/// part becomes a separate member; the other compressions treat the parts as one
/// byte stream. `progress` is told how many uncompressed bytes were consumed.
pub fn compress(
    parts: &[Vec<u8>],
    compression: Compression,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<u8>, InitrdFormatError> {
    let err = |e: std::io::Error| InitrdFormatError::Compress {
        compression,
        message: e.to_string(),
    };
    let total: usize = parts.iter().map(Vec::len).sum();
    match compression {
        Compression::None => {
            let mut out = Vec::with_capacity(total);
            for p in parts {
                out.extend_from_slice(p);
                progress(p.len() as u64);
            }
            Ok(out)
        }
        Compression::Gzip => {
            let members = parts
                .par_iter()
                .map(|part| {
                    let mut enc = flate2::GzBuilder::new().mtime(0).write(
                        Vec::with_capacity(part.len() / 3),
                        flate2::Compression::new(GZIP_LEVEL),
                    );
                    feed(&mut enc, part, progress).map_err(|e| wrap(e, compression))?;
                    enc.finish().map_err(err)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(members.concat())
        }
        Compression::Zstd => {
            let workers = rayon::current_num_threads().clamp(1, 64) as u32;
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(err)?;
            enc.multithread(workers).map_err(err)?;
            enc.include_checksum(true).map_err(err)?;
            enc.set_pledged_src_size(Some(total as u64)).map_err(err)?;
            for part in parts {
                feed(&mut enc, part, progress).map_err(|e| wrap(e, compression))?;
            }
            enc.finish().map_err(err)
        }
        Compression::Xz => {
            let threads = rayon::current_num_threads().clamp(1, 64) as u32;
            let stream = liblzma::stream::MtStreamBuilder::new()
                .threads(threads)
                .block_size(XZ_BLOCK)
                .preset(XZ_PRESET)
                .check(liblzma::stream::Check::Crc32)
                .encoder()
                .map_err(|e| InitrdFormatError::Compress {
                    compression,
                    message: e.to_string(),
                })?;
            let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
            for part in parts {
                feed(&mut enc, part, progress).map_err(|e| wrap(e, compression))?;
            }
            enc.finish().map_err(err)
        }
        Compression::Lz4 | Compression::Bzip2 => Err(InitrdFormatError::NotWritable(compression)),
    }
}

enum FeedError {
    Io(std::io::Error),
    Interrupted(interrupt::Interrupted),
}

fn wrap(e: FeedError, compression: Compression) -> InitrdFormatError {
    match e {
        FeedError::Io(e) => InitrdFormatError::Compress {
            compression,
            message: e.to_string(),
        },
        FeedError::Interrupted(i) => InitrdFormatError::Interrupted(i),
    }
}

fn feed(w: &mut impl Write, data: &[u8], progress: &(dyn Fn(u64) + Sync)) -> Result<(), FeedError> {
    for chunk in data.chunks(CHUNK) {
        interrupt::check().map_err(FeedError::Interrupted)?;
        w.write_all(chunk).map_err(FeedError::Io)?;
        progress(chunk.len() as u64);
    }
    Ok(())
}

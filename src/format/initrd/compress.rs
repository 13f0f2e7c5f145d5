//! Compressing cpio archives into an initramfs segment, using every core while the
//! output stays independent of the number of threads:
//!
//! * gzip: one member whose deflate stream is cut into fixed 1 MiB chunks that are
//!   compressed in parallel, each primed with the 32 KiB before it and ended on a
//!   byte boundary with a sync flush (as pigz does), so GNU cpio, zcat and the
//!   kernel all see a single ordinary gzip file;
//! * zstd: one frame from zstd's worker threads (its output does not depend on the
//!   worker count once there is at least one worker);
//! * xz: one stream of fixed-size blocks from liblzma's multi-threaded encoder
//!   (CRC32 check, which every kernel's xz decoder supports).

use std::io::Write;

use rayon::prelude::*;

use super::{Compression, InitrdFormatError};
use crate::util::interrupt;

/// gzip's own default level: what `find | cpio | gzip` users get today.
pub const GZIP_LEVEL: u32 = 6;
/// Uncompressed bytes per parallel deflate chunk; fixed so the output does not
/// depend on the thread count.
const GZIP_CHUNK: usize = 1 << 20;
/// Deflate's window: how much of the previous chunk primes the next one.
const DEFLATE_WINDOW: usize = 32 << 10;
/// zstd's own default level, as `zstd -T0` uses.
pub const ZSTD_LEVEL: i32 = 3;
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
            let data = parts.concat();
            gzip_parallel(&data, progress).map_err(|e| wrap(e, compression))
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

/// One gzip member of `data`, its deflate chunks compressed in parallel.
fn gzip_parallel(data: &[u8], progress: &(dyn Fn(u64) + Sync)) -> Result<Vec<u8>, FeedError> {
    let chunks: Vec<(usize, &[u8])> = data.chunks(GZIP_CHUNK).enumerate().collect();
    let last = chunks.len().saturating_sub(1);
    let deflated = chunks
        .par_iter()
        .map(|&(i, chunk)| {
            interrupt::check().map_err(FeedError::Interrupted)?;
            let start = i * GZIP_CHUNK;
            let dictionary = &data[start.saturating_sub(DEFLATE_WINDOW)..start];
            let out = deflate_chunk(chunk, dictionary, i == last).map_err(FeedError::Io)?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(chunk);
            progress(chunk.len() as u64);
            Ok((out, crc))
        })
        .collect::<Result<Vec<_>, FeedError>>()?;
    // Header: deflate, no name, mtime 0 (reproducible), Unix.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let mut crc = crc32fast::Hasher::new();
    if deflated.is_empty() {
        out.extend(deflate_chunk(&[], &[], true).map_err(FeedError::Io)?);
    }
    for (bytes, chunk_crc) in deflated {
        out.extend_from_slice(&bytes);
        crc.combine(&chunk_crc);
    }
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(out)
}

/// Raw deflate of one chunk, primed with `dictionary`; a sync flush ends every
/// chunk but the last on a byte boundary so the pieces concatenate.
fn deflate_chunk(chunk: &[u8], dictionary: &[u8], last: bool) -> std::io::Result<Vec<u8>> {
    use flate2::{Compress, FlushCompress, Status};
    let io = |e: flate2::CompressError| std::io::Error::other(e.to_string());
    let mut c = Compress::new(flate2::Compression::new(GZIP_LEVEL), false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary).map_err(io)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(chunk.len() / 2 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let status = c
            .compress_vec(&chunk[consumed..], &mut out, flush)
            .map_err(io)?;
        let done_input = c.total_in() as usize == chunk.len();
        let room_left = out.len() < out.capacity();
        match status {
            Status::StreamEnd => break,
            _ if !last && done_input && room_left => break,
            _ => {}
        }
    }
    Ok(out)
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

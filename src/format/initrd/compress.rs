//! Compressing cpio archives into an initramfs segment as a stream, using every
//! core while the output stays independent of the number of threads:
//!
//! * gzip: one member whose deflate stream is cut into fixed 1 MiB chunks that are
//!   compressed in parallel, each primed with the 32 KiB before it and ended on a
//!   byte boundary with a sync flush (as pigz does), so GNU cpio, zcat and the
//!   kernel all see a single ordinary gzip file;
//! * zstd: one frame from zstd's worker threads (its output does not depend on the
//!   worker count once there is at least one worker);
//! * xz: one stream of fixed-size blocks from liblzma's multi-threaded encoder
//!   (CRC32 check, which every kernel's xz decoder supports).
//!
//! [`SegmentEncoder`] is a `Write` adaptor: callers stream the archive into it and
//! the compressed bytes go on to the sink, so neither the archive nor the segment
//! is ever held in memory whole.

use std::io::{self, Write};

use rayon::prelude::*;

use super::{Compression, InitrdFormatError};

/// gzip's own default level: what `find | cpio | gzip` users get today.
pub const GZIP_LEVEL: u32 = 6;
/// Uncompressed bytes per parallel deflate chunk; fixed so the output does not
/// depend on the thread count.
const GZIP_CHUNK: usize = 1 << 20;
/// Chunks compressed together; bounds memory (and is not visible in the output).
const GZIP_BATCH: usize = 16;
/// Deflate's window: how much of the previous chunk primes the next one.
const DEFLATE_WINDOW: usize = 32 << 10;
/// zstd's own default level, as `zstd -T0` uses.
pub const ZSTD_LEVEL: i32 = 3;
/// Overlap between zstd's parallel jobs, as a fraction of the window (zstd's
/// overlapLog: 1 = none ... 9 = the whole window). A quarter window keeps the
/// ratio of a single-threaded stream on initramfs content while each job hashes
/// far less of its predecessor than zstd's default for level 3 does.
const ZSTD_OVERLAP_LOG: u32 = 5;
/// Match-finder tables below level 3's (hash 17, chain 16): on initramfs content
/// (kernel modules, binaries) the output stays a little smaller than `zstd -3`'s
/// (its multi-threaded jobs lose more at their edges) while compression takes
/// about a seventh less CPU.
const ZSTD_HASH_LOG: u32 = 16;
const ZSTD_CHAIN_LOG: u32 = 14;
pub const XZ_PRESET: u32 = 6;
/// xz block size; fixed so the output does not depend on the thread count.
const XZ_BLOCK: u64 = 8 << 20;

/// Streams uncompressed cpio bytes in, compressed segment bytes out to `W`.
pub struct SegmentEncoder<W: Write> {
    compression: Compression,
    inner: Inner<W>,
}

enum Inner<W: Write> {
    Plain(W),
    Gzip(Box<ParallelGzip<W>>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(liblzma::write::XzEncoder<W>),
}

impl<W: Write> SegmentEncoder<W> {
    /// `size`, when known, is the exact number of bytes that will be written; zstd
    /// records it in the frame header and sizes its tables from it.
    pub fn new(
        compression: Compression,
        sink: W,
        size: Option<u64>,
    ) -> Result<Self, InitrdFormatError> {
        let err = |e: io::Error| InitrdFormatError::Compress {
            compression,
            message: e.to_string(),
        };
        let threads = rayon::current_num_threads().clamp(1, 64) as u32;
        let inner = match compression {
            Compression::None => Inner::Plain(sink),
            Compression::Gzip => Inner::Gzip(Box::new(ParallelGzip::new(sink))),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL).map_err(err)?;
                enc.multithread(threads).map_err(err)?;
                enc.set_parameter(zstd::stream::raw::CParameter::OverlapSizeLog(
                    ZSTD_OVERLAP_LOG,
                ))
                .map_err(err)?;
                enc.include_checksum(true).map_err(err)?;
                enc.set_parameter(zstd::stream::raw::CParameter::HashLog(ZSTD_HASH_LOG))
                    .map_err(err)?;
                enc.set_parameter(zstd::stream::raw::CParameter::ChainLog(ZSTD_CHAIN_LOG))
                    .map_err(err)?;
                enc.set_pledged_src_size(size).map_err(err)?;
                Inner::Zstd(enc)
            }
            Compression::Xz => {
                let stream = liblzma::stream::MtStreamBuilder::new()
                    .threads(threads)
                    .block_size(XZ_BLOCK)
                    .preset(XZ_PRESET)
                    .check(liblzma::stream::Check::Crc32)
                    .encoder()
                    .map_err(|e| err(io::Error::other(e)))?;
                Inner::Xz(liblzma::write::XzEncoder::new_stream(sink, stream))
            }
            Compression::Lz4 | Compression::Bzip2 => {
                return Err(InitrdFormatError::NotWritable(compression));
            }
        };
        Ok(SegmentEncoder { compression, inner })
    }

    /// End the compressed stream and return the sink.
    pub fn finish(self) -> Result<W, InitrdFormatError> {
        let compression = self.compression;
        let err = |e: io::Error| InitrdFormatError::Compress {
            compression,
            message: e.to_string(),
        };
        match self.inner {
            Inner::Plain(mut w) => {
                w.flush().map_err(err)?;
                Ok(w)
            }
            Inner::Gzip(g) => g.finish().map_err(err),
            Inner::Zstd(z) => z.finish().map_err(err),
            Inner::Xz(x) => x.finish().map_err(err),
        }
    }
}

impl<W: Write> Write for SegmentEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(w) => w.write(buf),
            Inner::Gzip(g) => g.write(buf),
            Inner::Zstd(z) => z.write(buf),
            Inner::Xz(x) => x.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.inner {
            Inner::Plain(w) => w.write_all(buf),
            Inner::Gzip(g) => g.write_all(buf),
            Inner::Zstd(z) => z.write_all(buf),
            Inner::Xz(x) => x.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compress `data` into one segment in memory.
pub fn compress(data: &[u8], compression: Compression) -> Result<Vec<u8>, InitrdFormatError> {
    let mut enc = SegmentEncoder::new(compression, Vec::new(), Some(data.len() as u64))?;
    enc.write_all(data)
        .map_err(|e| InitrdFormatError::Compress {
            compression,
            message: e.to_string(),
        })?;
    enc.finish()
}

/// One gzip member, its deflate chunks compressed in parallel batches.
struct ParallelGzip<W: Write> {
    sink: W,
    /// Full chunks waiting for the next batch, and the chunk being filled (last).
    chunks: Vec<Vec<u8>>,
    /// The last 32 KiB before `chunks[0]`.
    dictionary: Vec<u8>,
    crc: crc32fast::Hasher,
    total: u64,
    /// Chunk buffers to reuse (their pages are already mapped).
    spare: Vec<Vec<u8>>,
    header_written: bool,
}

/// gzip header: deflate, no name, mtime 0 (reproducible), Unix.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

impl<W: Write> ParallelGzip<W> {
    fn new(sink: W) -> Self {
        ParallelGzip {
            sink,
            header_written: false,
            chunks: vec![Vec::with_capacity(GZIP_CHUNK)],
            dictionary: Vec::new(),
            crc: crc32fast::Hasher::new(),
            total: 0,
            spare: Vec::new(),
        }
    }

    /// Compress every full chunk but the last one (which may be the end of the
    /// stream and then needs the final block).
    fn drain(&mut self, last: bool) -> io::Result<()> {
        self.write_header_once()?;
        let count = if last {
            self.chunks.len()
        } else {
            self.chunks.len() - 1
        };
        let ready: Vec<Vec<u8>> = self.chunks.drain(..count).collect();
        let dictionary = std::mem::take(&mut self.dictionary);
        let outputs = ready
            .par_iter()
            .enumerate()
            .map(|(i, chunk)| {
                let dict: &[u8] = if i == 0 {
                    &dictionary
                } else {
                    let prev = &ready[i - 1];
                    &prev[prev.len() - DEFLATE_WINDOW.min(prev.len())..]
                };
                let end = last && i + 1 == ready.len();
                let mut crc = crc32fast::Hasher::new();
                crc.update(chunk);
                deflate_chunk(chunk, dict, end).map(|bytes| (bytes, crc))
            })
            .collect::<io::Result<Vec<_>>>()?;
        for (bytes, crc) in outputs {
            self.sink.write_all(&bytes)?;
            self.crc.combine(&crc);
        }
        if let Some(prev) = ready.last() {
            self.dictionary = prev[prev.len() - DEFLATE_WINDOW.min(prev.len())..].to_vec();
        }
        for mut buf in ready {
            buf.clear();
            self.spare.push(buf);
        }
        Ok(())
    }

    fn write_header_once(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.header_written = true;
            self.sink.write_all(&GZIP_HEADER)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        // An empty stream still gets the header and one final (empty) block.
        self.drain(true)?;
        self.sink
            .write_all(&self.crc.clone().finalize().to_le_bytes())?;
        // ISIZE is the length modulo 2^32 (RFC 1952).
        self.sink.write_all(&(self.total as u32).to_le_bytes())?;
        self.sink.flush()?;
        Ok(self.sink)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            let current = self.chunks.last_mut().expect("one chunk is always open");
            let take = (GZIP_CHUNK - current.len()).min(buf.len());
            current.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            self.total += take as u64;
            if current.len() == GZIP_CHUNK {
                if self.chunks.len() > GZIP_BATCH {
                    self.drain(false)?;
                }
                let next = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(GZIP_CHUNK));
                self.chunks.push(next);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raw deflate of one chunk, primed with `dictionary`; a sync flush ends every
/// chunk but the last on a byte boundary so the pieces concatenate.
fn deflate_chunk(chunk: &[u8], dictionary: &[u8], last: bool) -> io::Result<Vec<u8>> {
    use flate2::{Compress, FlushCompress, Status};
    let to_io = |e: flate2::CompressError| io::Error::other(e.to_string());
    let mut c = Compress::new(flate2::Compression::new(GZIP_LEVEL), false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary).map_err(to_io)?;
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
            .map_err(to_io)?;
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

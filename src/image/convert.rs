//! `kiln image convert`: any readable image to raw or qcow2.
//!
//! The guest disk is cut into units (at least 1 MiB and a whole number of source and
//! output clusters). Units are read, zero-checked and compressed in parallel; raw
//! output is written by the workers themselves with positional writes, qcow2 output
//! goes in guest order through a writer thread, so the bytes do not depend on the
//! number of threads.

use std::fs::File;
use std::io::BufWriter;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};

use rayon::prelude::*;

use crate::format::qcow2::compress::compress_cluster;
use crate::format::qcow2::{ClusterData, CompressionType, Qcow2Error, Qcow2Writer, WriterOptions};
use crate::format::source::is_zero;
use crate::format::{BlockSource, ExtentKind, FormatError, ImageFormat, open_image};
use crate::util::atomic_file::AtomicFile;
use crate::util::{interrupt, progress};

const MIN_UNIT: u64 = 1 << 20;
/// Bytes of guest data in flight per batch (qcow2 output).
const BATCH_BYTES: u64 = 16 << 20;
/// Holes in raw output are made at this granularity, like `qemu-img convert -S 4k`.
const RAW_SPARSE_BLOCK: usize = 4096;

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// None: probe the source.
    pub source_format: Option<ImageFormat>,
    pub output_format: ImageFormat,
    /// Some: compress qcow2 clusters with this algorithm.
    pub compression: Option<CompressionType>,
    /// qcow2 cluster size in bytes (default 64 KiB).
    pub cluster_size: Option<u64>,
    /// Worker threads (default: one per core).
    pub threads: Option<usize>,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            source_format: None,
            output_format: ImageFormat::Raw,
            compression: None,
            cluster_size: None,
            threads: None,
            progress: false,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertSummary {
    pub source_format: ImageFormat,
    pub virtual_size: u64,
    /// Guest bytes that held data and were written.
    pub data_bytes: u64,
    pub output_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Open(#[from] FormatError),
    #[error("{0}")]
    Options(String),
    #[error("reading guest offset {offset} of {path}: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Qcow2 { path: PathBuf, source: Qcow2Error },
    #[error("compressing guest offset {offset}: {message}")]
    Compress { offset: u64, message: String },
    #[error(transparent)]
    Interrupted(#[from] interrupt::Interrupted),
}

/// Convert `src` into a new image at `dst`; `dst` appears only when complete.
pub fn convert(
    src: &Path,
    dst: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertSummary, ConvertError> {
    if opts.compression.is_some() && opts.output_format != ImageFormat::Qcow2 {
        return Err(ConvertError::Options(
            "compression (-c) needs qcow2 output (-O qcow2)".into(),
        ));
    }
    if opts.cluster_size.is_some() && opts.output_format != ImageFormat::Qcow2 {
        return Err(ConvertError::Options(
            "--cluster-size applies to qcow2 output only".into(),
        ));
    }
    let cluster_bits = match opts.cluster_size {
        Some(size) => WriterOptions::cluster_bits_for(size)
            .map_err(|e| ConvertError::Options(e.to_string()))?,
        None => WriterOptions::default().cluster_bits,
    };
    let (source_format, source) = open_image(src, opts.source_format)?;
    let job = Job {
        source: source.as_ref(),
        src,
        dst,
        opts,
        cluster_bits,
    };
    let run = || -> Result<(u64, AtomicFile), ConvertError> {
        match opts.output_format {
            ImageFormat::Raw => job.to_raw(),
            ImageFormat::Qcow2 => job.to_qcow2(),
        }
    };
    let (data_bytes, out) = match opts.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| ConvertError::Options(format!("cannot start {n} threads: {e}")))?
            .install(run)?,
        None => run()?,
    };
    let output_size = out
        .file()
        .metadata()
        .map_err(|source| job.write_error(source))?
        .len();
    out.commit().map_err(|source| job.write_error(source))?;
    Ok(ConvertSummary {
        source_format,
        virtual_size: source.virtual_size(),
        data_bytes,
        output_size,
    })
}

struct Job<'a> {
    source: &'a dyn BlockSource,
    src: &'a Path,
    dst: &'a Path,
    opts: &'a ConvertOptions,
    cluster_bits: u32,
}

/// One unit of guest data, read and ready to be written.
struct Unit {
    offset: u64,
    bytes: Vec<u8>,
    /// Per output cluster: None = all zero, Some(None) = raw, Some(Some(c)) = compressed.
    clusters: Vec<Option<Option<Vec<u8>>>>,
}

impl Job<'_> {
    fn write_error(&self, source: std::io::Error) -> ConvertError {
        ConvertError::Write {
            path: self.dst.to_path_buf(),
            source,
        }
    }

    fn unit_size(&self, out_granule: u64) -> u64 {
        MIN_UNIT
            .max(out_granule)
            .max(self.source.io_granularity().min(8 << 20))
    }

    /// Read `buf.len()` guest bytes at `offset`, touching only data extents; bytes
    /// past the end of the source read as zero. Returns false if all was zero.
    fn read_unit(&self, offset: u64, buf: &mut [u8]) -> Result<bool, ConvertError> {
        let read_err = |offset, source| ConvertError::Read {
            path: self.src.to_path_buf(),
            offset,
            source,
        };
        let size = self.source.virtual_size();
        let end = (offset + buf.len() as u64).min(size);
        let mut any = false;
        let mut pos = offset;
        while pos < end {
            let ext = self
                .source
                .extent_at(pos, end - pos)
                .map_err(|e| read_err(pos, e))?;
            let len = ext.len.clamp(1, end - pos);
            let piece = &mut buf[(pos - offset) as usize..(pos - offset + len) as usize];
            match ext.kind {
                ExtentKind::Zero => piece.fill(0),
                ExtentKind::Data => {
                    self.source
                        .read_exact_at(piece, pos)
                        .map_err(|e| read_err(pos, e))?;
                    any = true;
                }
            }
            pos += len;
        }
        buf[(end.max(offset) - offset) as usize..].fill(0);
        Ok(any)
    }

    fn to_raw(&self) -> Result<(u64, AtomicFile), ConvertError> {
        let size = self.source.virtual_size();
        let out = AtomicFile::create(self.dst).map_err(|e| self.write_error(e))?;
        out.file().set_len(size).map_err(|e| self.write_error(e))?;
        let unit = self.unit_size(RAW_SPARSE_BLOCK as u64);
        let bar = progress::bytes_bar(size, self.opts.progress);
        let units = size.div_ceil(unit);
        let written: u64 = (0..units as usize)
            .into_par_iter()
            .with_max_len(4)
            .map_init(
                || vec![0u8; unit as usize],
                |buf, i| -> Result<u64, ConvertError> {
                    interrupt::check()?;
                    let offset = i as u64 * unit;
                    let len = unit.min(size - offset) as usize;
                    let buf = &mut buf[..len];
                    let mut written = 0;
                    if self.read_unit(offset, buf)? {
                        written = write_nonzero_runs(out.file(), offset, buf)
                            .map_err(|e| self.write_error(e))?;
                    }
                    bar.inc(len as u64);
                    Ok(written)
                },
            )
            .try_reduce(|| 0, |a, b| Ok(a + b))?;
        bar.finish_and_clear();
        Ok((written, out))
    }

    fn to_qcow2(&self) -> Result<(u64, AtomicFile), ConvertError> {
        let out = AtomicFile::create(self.dst).map_err(|e| self.write_error(e))?;
        let opts = WriterOptions {
            cluster_bits: self.cluster_bits,
            compression: self.opts.compression,
        };
        let qcow2_err = |source| ConvertError::Qcow2 {
            path: self.dst.to_path_buf(),
            source,
        };
        // Small buffer: it only gathers compressed clusters and tables; runs of
        // raw clusters are larger and go straight to the file.
        let sink = BufWriter::with_capacity(256 << 10, out.file());
        let mut writer =
            Qcow2Writer::new(sink, self.source.virtual_size(), opts).map_err(qcow2_err)?;
        let size = writer.virtual_size();
        let cs = writer.cluster_size();
        let unit = self.unit_size(cs);
        let units = size.div_ceil(unit);
        let per_batch = (BATCH_BYTES / unit).max(2 * rayon::current_num_threads() as u64);
        let bar = progress::bytes_bar(size, self.opts.progress);

        let (tx, rx) = mpsc::sync_channel::<Vec<Unit>>(1);
        // Unit buffers go back to the producers once written: no fresh pages to fault in.
        let pool = Mutex::new(Vec::<Vec<u8>>::new());
        let data_bytes = std::thread::scope(|scope| -> Result<u64, ConvertError> {
            let pool = &pool;
            let sink_thread = scope.spawn(move || -> Result<u64, Qcow2Error> {
                let mut data = 0u64;
                for batch in rx {
                    for unit in batch {
                        data += append_unit(&mut writer, &unit, cs)?;
                        if let Ok(mut free) = pool.lock() {
                            free.push(unit.bytes);
                        }
                    }
                }
                writer.finish()?.into_inner().map_err(|e| e.into_error())?;
                Ok(data)
            });
            let produced = (|| -> Result<(), ConvertError> {
                for first in (0..units).step_by(per_batch as usize) {
                    interrupt::check()?;
                    let last = (first + per_batch).min(units);
                    let batch = (first..last)
                        .into_par_iter()
                        .map(|i| {
                            let offset = i * unit;
                            let len = unit.min(size - offset);
                            let buf = pool.lock().ok().and_then(|mut free| free.pop());
                            let u = self.prepare_unit(offset, len as usize, cs, buf);
                            bar.inc(len);
                            u
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if tx.send(batch).is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Ok(())
            })();
            drop(tx);
            let written = sink_thread
                .join()
                .map_err(|_| ConvertError::Options("qcow2 writer thread panicked".into()))?;
            produced?;
            written.map_err(qcow2_err)
        })?;
        bar.finish_and_clear();
        Ok((data_bytes, out))
    }

    /// Read and compress one unit into `buf` (a recycled buffer, if any). Every
    /// byte is overwritten, so a recycled buffer needs no clearing.
    fn prepare_unit(
        &self,
        offset: u64,
        len: usize,
        cs: u64,
        buf: Option<Vec<u8>>,
    ) -> Result<Unit, ConvertError> {
        let mut bytes = buf.unwrap_or_default();
        bytes.resize(len, 0);
        let mut clusters = Vec::new();
        if self.read_unit(offset, &mut bytes)? {
            for (k, chunk) in bytes.chunks(cs as usize).enumerate() {
                if is_zero(chunk) {
                    clusters.push(None);
                    continue;
                }
                let packed = match self.opts.compression {
                    None => None,
                    Some(kind) => {
                        let mut full;
                        let cluster = if chunk.len() as u64 == cs {
                            chunk
                        } else {
                            full = chunk.to_vec();
                            full.resize(cs as usize, 0);
                            &full[..]
                        };
                        let mut packed = Vec::with_capacity(cs as usize);
                        let smaller =
                            compress_cluster(kind, cluster, &mut packed).map_err(|e| {
                                ConvertError::Compress {
                                    offset: offset + k as u64 * cs,
                                    message: e.to_string(),
                                }
                            })?;
                        smaller.then_some(packed)
                    }
                };
                clusters.push(Some(packed));
            }
        }
        Ok(Unit {
            offset,
            bytes,
            clusters,
        })
    }
}

/// Hand one prepared unit to the qcow2 writer; returns the guest bytes stored.
/// Runs of uncompressed clusters go out in one write each.
fn append_unit<W: std::io::Write + std::io::Seek>(
    writer: &mut Qcow2Writer<W>,
    unit: &Unit,
    cs: u64,
) -> Result<u64, Qcow2Error> {
    let first = unit.offset / cs;
    let cs = cs as usize;
    let mut stored = 0;
    let mut run_start: Option<usize> = None;
    for k in 0..=unit.clusters.len() {
        let raw = matches!(unit.clusters.get(k), Some(Some(None)));
        if let (false, Some(start)) = (raw, run_start) {
            let end = (k * cs).min(unit.bytes.len());
            writer.write_raw_run(first + start as u64, &unit.bytes[start * cs..end])?;
            stored += (end - start * cs) as u64;
            run_start = None;
        }
        match unit.clusters.get(k) {
            Some(Some(None)) if run_start.is_none() => run_start = Some(k),
            Some(Some(Some(packed))) => {
                writer.write_cluster(first + k as u64, ClusterData::Compressed(packed))?;
                stored += cs as u64;
            }
            _ => {}
        }
    }
    Ok(stored)
}

/// Write the non-zero 4 KiB blocks of `buf` (merged into runs) at `offset`.
fn write_nonzero_runs(file: &File, offset: u64, buf: &[u8]) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut run_start: Option<usize> = None;
    let blocks = buf.len().div_ceil(RAW_SPARSE_BLOCK);
    for b in 0..=blocks {
        let start = b * RAW_SPARSE_BLOCK;
        let nonzero =
            b < blocks && !is_zero(&buf[start..(start + RAW_SPARSE_BLOCK).min(buf.len())]);
        match (nonzero, run_start) {
            (true, None) => run_start = Some(start),
            (false, Some(s)) => {
                let end = start.min(buf.len());
                file.write_all_at(&buf[s..end], offset + s as u64)?;
                written += (end - s) as u64;
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

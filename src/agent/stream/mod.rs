//! The agent's image writer: an image streamed over HTTP straight onto a disk, with
//! no temporary copy and bounded memory.
//!
//! The chain: HTTP body (resuming with Range requests) -> hash (every byte of the
//! file) -> layout (which file bytes are which guest bytes) -> decompress -> target
//! (first MiB held back until the checksum matched). Network reading, hashing and
//! parsing the stream each run on their own thread; decompression and writes on
//! the rayon pool.

pub mod checksum;
pub mod http;
pub mod layout;
pub mod target;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use rayon::prelude::*;

pub use checksum::Checksum;
pub use http::{HttpImage, ImageUrl};
pub use layout::{Layout, Piece, PieceKind, SourceFormat};
pub use target::Target;

use crate::format::qcow2::Qcow2Error;
use crate::format::qcow2::compress::decompress_cluster;

/// Bytes read from the network at a time.
const CHUNK: usize = 1 << 20;
/// Chunks queued between the network thread and the parser.
const CHUNKS_IN_FLIGHT: usize = 16;
/// File bytes per batch of decompress/write jobs.
const BATCH_BYTES: u64 = 8 << 20;
/// Batches queued between the parser and the workers.
const BATCHES_IN_FLIGHT: usize = 2;
/// The parser's window never grows beyond this (a pathological layout otherwise).
const MAX_WINDOW: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("bad image URL {0}")]
    Url(String),
    #[error("bad checksum {0:?}: expected sha256:HEX (64 digits) or sha512:HEX (128 digits)")]
    BadChecksum(String),
    #[error("{url}: HTTP status {status}, wanted {wanted}")]
    Status {
        url: String,
        status: u16,
        wanted: &'static str,
    },
    #[error("{url} at offset {offset}: {message}")]
    Http {
        url: String,
        offset: u64,
        message: String,
    },
    #[error("{url}: {source}")]
    Qcow2 { url: String, source: Qcow2Error },
    #[error("target {path}: {message}")]
    Target { path: PathBuf, message: String },
    #[error(
        "target {path} is {size} bytes, smaller than the image's virtual size of {needed} bytes"
    )]
    TargetTooSmall {
        path: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error("writing {path} at offset {offset}: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    #[error(
        "checksum mismatch for {url}: expected {expected}, got {actual}; the first MiB of {} was zeroed",
        target.display()
    )]
    ChecksumMismatch {
        url: String,
        target: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{url}: interrupted at offset {offset}")]
    Interrupted { url: String, offset: u64 },
    #[error("{0}")]
    Internal(String),
}

/// Called with (file bytes received, file size) as the download advances.
pub type ProgressFn = dyn Fn(u64, u64) + Send + Sync;

#[derive(Clone, Default)]
pub struct WriteOptions {
    pub progress: Option<Arc<ProgressFn>>,
    /// Decompression/write threads (default: the global rayon pool).
    pub threads: Option<usize>,
    /// How long to keep reconnecting after a failure (default:
    /// `DEFAULT_RESUME_WINDOW`, enough for a conductor restart).
    pub resume_window: Option<std::time::Duration>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteReport {
    pub url: String,
    pub target: PathBuf,
    pub format: SourceFormat,
    pub file_size: u64,
    pub virtual_size: u64,
    /// Guest bytes that came from the image (the rest reads as zeros).
    pub data_bytes: u64,
    /// The verified checksum, as `sha256:HEX` or `sha512:HEX`.
    pub checksum: String,
    /// How many times a dropped connection was resumed.
    pub resumes: u32,
    pub seconds: f64,
}

/// Stream the image at `source` onto `target` and verify it against `expected`.
/// On any failure the first MiB of the target is left zeroed.
pub fn write_image(
    source: &ImageUrl,
    expected: &Checksum,
    target: &Path,
    opts: &WriteOptions,
) -> Result<WriteReport, StreamError> {
    let started = Instant::now();
    let image = HttpImage::open(
        source,
        opts.resume_window.unwrap_or(http::DEFAULT_RESUME_WINDOW),
    )?;
    let layout = layout::plan(&image)?;
    let disk = Target::open(target, layout.virtual_size)?;
    let pool = match opts.threads {
        Some(n) => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build()
                .map_err(|e| StreamError::Internal(format!("cannot start {n} threads: {e}")))?,
        ),
        None => None,
    };
    let job = Job {
        image: &image,
        layout: &layout,
        target: &disk,
        expected,
        opts,
        pool: pool.as_ref(),
    };
    let outcome = job.run();
    let finished = outcome.and_then(|(actual, resumes)| {
        if !expected.matches(&actual) {
            return Err(StreamError::ChecksumMismatch {
                url: source.to_string(),
                target: target.to_path_buf(),
                expected: expected.to_string(),
                actual: format!("{}:{actual}", expected.algorithm()),
            });
        }
        disk.commit()?;
        Ok((actual, resumes))
    });
    let (actual, resumes) = match finished {
        Ok(v) => v,
        Err(e) => {
            // The error that stopped us matters more than a failure to zero.
            let _ = disk.poison();
            return Err(e);
        }
    };
    Ok(WriteReport {
        url: source.to_string(),
        target: target.to_path_buf(),
        format: layout.format,
        file_size: image.size,
        virtual_size: layout.virtual_size,
        data_bytes: layout.pieces.iter().map(guest_len).sum(),
        checksum: format!("{}:{actual}", expected.algorithm()),
        resumes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn guest_len(p: &Piece) -> u64 {
    match p.kind {
        PieceKind::Raw => p.len,
        PieceKind::Compressed { guest_len } => guest_len,
    }
}

struct Job<'a> {
    image: &'a HttpImage,
    layout: &'a Layout,
    target: &'a Target,
    expected: &'a Checksum,
    opts: &'a WriteOptions,
    /// The pool for decompression and writes (None: rayon's global pool).
    pool: Option<&'a rayon::ThreadPool>,
}

/// One unit of work for the pool: pieces of file bytes that become one
/// contiguous run of guest bytes at `guest`, written with one call.
struct Work {
    guest: u64,
    guest_len: u64,
    parts: Vec<(Vec<u8>, PieceKind)>,
}

/// Guest bytes gathered into one write at most (what convert writes at a time).
const WRITE_RUN: u64 = 1 << 20;

thread_local! {
    static CLUSTER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static RUN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Job<'_> {
    /// Zero the holes, stream the file through the layout; returns the file's
    /// checksum (hex) and the number of resumed connections.
    fn run(&self) -> Result<(String, u32), StreamError> {
        for &(start, len) in &self.layout.holes {
            self.target.zero_range(start, len)?;
        }
        let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Arc<Vec<u8>>>(CHUNKS_IN_FLIGHT);
        let (batch_tx, batch_rx) = mpsc::sync_channel::<Vec<Work>>(BATCHES_IN_FLIGHT);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || self.download(chunk_tx));
            let workers = scope.spawn(move || -> Result<(), StreamError> {
                let apply_all =
                    |batch: Vec<Work>| batch.into_par_iter().try_for_each(|w| self.apply(w));
                for batch in batch_rx {
                    match self.pool {
                        Some(pool) => pool.install(|| apply_all(batch))?,
                        None => apply_all(batch)?,
                    }
                }
                Ok(())
            });
            let parsed = self.parse(chunk_rx, batch_tx);
            let written = workers
                .join()
                .map_err(|_| StreamError::Internal("write thread panicked".into()))?;
            let downloaded = reader
                .join()
                .map_err(|_| StreamError::Internal("download thread panicked".into()))?;
            // The first real failure wins: a download error explains a short parse.
            let sums = downloaded?;
            written?;
            parsed?;
            Ok(sums)
        })
    }

    /// Network thread: read the body in order and pass every chunk to the hash
    /// thread (every byte of the file is hashed) and to the parser.
    fn download(&self, tx: mpsc::SyncSender<Arc<Vec<u8>>>) -> Result<(String, u32), StreamError> {
        let mut body = self.image.stream()?;
        let total = self.image.size;
        let (hash_tx, hash_rx) = mpsc::sync_channel::<Arc<Vec<u8>>>(CHUNKS_IN_FLIGHT);
        let mut hasher = self.expected.hasher();
        std::thread::scope(|scope| {
            let hashing = scope.spawn(move || {
                for chunk in hash_rx {
                    hasher.update(&chunk);
                }
                hasher.finish()
            });
            let received = (|| -> Result<(), StreamError> {
                loop {
                    let mut chunk = vec![0u8; CHUNK];
                    let n =
                        crate::deploy::images::read_full(&mut body, &mut chunk).map_err(|e| {
                            StreamError::Http {
                                url: self.image.url().to_string(),
                                offset: body.position(),
                                message: e.to_string(),
                            }
                        })?;
                    if n == 0 {
                        return Ok(());
                    }
                    if crate::util::interrupt::check().is_err() {
                        return Err(StreamError::Interrupted {
                            url: self.image.url().to_string(),
                            offset: body.position(),
                        });
                    }
                    chunk.truncate(n);
                    let chunk = Arc::new(chunk);
                    if let Some(progress) = &self.opts.progress {
                        progress(body.position(), total);
                    }
                    // A closed channel: the parser stopped, and its error is the
                    // one to report.
                    if hash_tx.send(chunk.clone()).is_err() || tx.send(chunk).is_err() {
                        return Ok(());
                    }
                }
            })();
            drop(hash_tx);
            let digest = hashing
                .join()
                .map_err(|_| StreamError::Internal("hash thread panicked".into()))?;
            received?;
            Ok((digest, body.resumes))
        })
    }

    /// Parser thread: follow the layout through the stream, cutting pieces out of
    /// a window of file bytes and batching them for the pool.
    fn parse(
        &self,
        rx: mpsc::Receiver<Arc<Vec<u8>>>,
        tx: mpsc::SyncSender<Vec<Work>>,
    ) -> Result<(), StreamError> {
        let pieces = &self.layout.pieces;
        let mut window: Vec<u8> = Vec::new();
        let mut window_start = 0u64;
        let mut next = 0usize;
        // Bytes of pieces[next] already handed out (raw pieces go out in parts).
        let mut done = 0u64;
        let mut batch: Vec<Work> = Vec::new();
        let mut batch_bytes = 0u64;
        for chunk in rx {
            window.extend_from_slice(&chunk);
            let window_end = window_start + window.len() as u64;
            while let Some(p) = pieces.get(next) {
                let from = p.host + done;
                let to = p.host + p.len;
                let ready_to = match p.kind {
                    PieceKind::Raw => to.min(window_end),
                    PieceKind::Compressed { .. } if window_end >= to => to,
                    PieceKind::Compressed { .. } => break,
                };
                if ready_to <= from {
                    break;
                }
                if from < window_start {
                    // Only possible if the layout's ordering were broken.
                    return Err(StreamError::Internal(format!(
                        "file offset {from} was already passed"
                    )));
                }
                let slice =
                    &window[(from - window_start) as usize..(ready_to - window_start) as usize];
                batch_bytes += slice.len() as u64;
                let guest = p.guest + done;
                let len = match p.kind {
                    PieceKind::Raw => slice.len() as u64,
                    PieceKind::Compressed { guest_len } => guest_len,
                };
                let part = (slice.to_vec(), p.kind);
                match batch.last_mut() {
                    Some(w) if w.guest + w.guest_len == guest && w.guest_len + len <= WRITE_RUN => {
                        w.guest_len += len;
                        w.parts.push(part);
                    }
                    _ => batch.push(Work {
                        guest,
                        guest_len: len,
                        parts: vec![part],
                    }),
                }
                if ready_to == to {
                    next += 1;
                    done = 0;
                } else {
                    done = ready_to - p.host;
                    break;
                }
            }
            if batch_bytes >= BATCH_BYTES {
                if tx.send(std::mem::take(&mut batch)).is_err() {
                    return Ok(()); // the workers failed and report why
                }
                batch_bytes = 0;
            }
            // Keep only what unfinished pieces still need; pieces may overlap
            // (compressed clusters share sectors), so look at the next one too.
            let keep_from = match pieces.get(next) {
                None => window_end,
                Some(p) => {
                    let mut k = p.host + done;
                    if let Some(q) = pieces.get(next + 1) {
                        k = k.min(q.host);
                    }
                    k.clamp(window_start, window_end)
                }
            };
            window.drain(..(keep_from - window_start) as usize);
            window_start = keep_from;
            if window.len() > MAX_WINDOW {
                return Err(StreamError::Internal(format!(
                    "{}: image layout needs more than {} MiB buffered at file offset {window_start}",
                    self.image.url(),
                    MAX_WINDOW >> 20
                )));
            }
        }
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
        if let Some(p) = pieces.get(next) {
            return Err(StreamError::Http {
                url: self.image.url().to_string(),
                offset: p.host + done,
                message: "the download ended before this offset".into(),
            });
        }
        Ok(())
    }

    /// Worker: decompress if needed and write to the target.
    fn apply(&self, work: Work) -> Result<(), StreamError> {
        if let [(bytes, PieceKind::Raw)] = &work.parts[..] {
            return self.target.write_at(work.guest, bytes);
        }
        RUN.with_borrow_mut(|run| {
            run.clear();
            for (bytes, kind) in &work.parts {
                match *kind {
                    PieceKind::Raw => run.extend_from_slice(bytes),
                    PieceKind::Compressed { guest_len } => {
                        let at = work.guest + run.len() as u64;
                        self.decompress(bytes, at, guest_len, run)?;
                    }
                }
            }
            self.target.write_at(work.guest, run)
        })
    }

    /// Decompress one cluster and append its first `guest_len` bytes to `out`.
    fn decompress(
        &self,
        packed: &[u8],
        guest: u64,
        guest_len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        let cs = self.layout.cluster_size as usize;
        let corrupt = |e: crate::format::qcow2::compress::CompressError| StreamError::Qcow2 {
            url: self.image.url().to_string(),
            source: Qcow2Error::Corrupt(format!(
                "compressed cluster for guest offset {guest}: {e}"
            )),
        };
        let kind = self.layout.compression;
        if guest_len as usize == cs {
            let start = out.len();
            out.resize(start + cs, 0);
            return decompress_cluster(kind, packed, &mut out[start..]).map_err(corrupt);
        }
        // The disk's last cluster: decompress whole, keep the part inside the disk.
        CLUSTER.with_borrow_mut(|cluster| {
            cluster.resize(cs, 0);
            decompress_cluster(kind, packed, cluster).map_err(corrupt)?;
            out.extend_from_slice(&cluster[..guest_len as usize]);
            Ok(())
        })
    }
}

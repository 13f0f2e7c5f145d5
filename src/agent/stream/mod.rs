//! The agent's image writer: an image streamed over HTTP straight onto a disk, with
//! no temporary copy and bounded memory.
//!
//! The chain: HTTP body (resuming with Range requests) -> hash (every byte of the
//! file) -> layout (which file bytes are which guest bytes) -> decompress -> target
//! (first MiB held back until the checksum matched). Network reading, hashing and
//! parsing the stream each run on their own thread; a fixed set of workers takes
//! write jobs from a bounded queue as they come (no batch waits for its slowest
//! job), decompresses them and writes them with positional writes. Jobs hold views
//! of the received chunks, not copies.

pub mod checksum;
pub mod http;
pub mod layout;
pub mod target;
pub mod trace;
pub mod window;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use bytes::Bytes;

pub use checksum::Checksum;
pub use http::{HttpImage, ImageUrl};
pub use layout::{Layout, Piece, PieceKind, SourceFormat};
pub use target::Target;
use trace::{Stage, Trace};
use window::Window;

use crate::format::qcow2::Qcow2Error;
use crate::format::qcow2::compress::decompress_cluster;

/// Bytes read from the network at a time.
const CHUNK: usize = 1 << 20;
/// Chunks queued between the network thread and the parser (and the hasher).
const CHUNKS_IN_FLIGHT: usize = 16;
/// Write jobs queued between the parser and the workers. Each holds at most about
/// one MiB of guest data, so with the chunks above memory stays well under 100 MiB.
const JOBS_IN_FLIGHT: usize = 32;
/// The parser's window never grows beyond this (a pathological layout otherwise).
const MAX_WINDOW: u64 = 64 << 20;

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
    /// Decompression/write threads (default: one per core).
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
    let trace = Trace::from_env();
    let image = HttpImage::open(
        source,
        opts.resume_window.unwrap_or(http::DEFAULT_RESUME_WINDOW),
    )?;
    let layout = layout::plan(&image)?;
    let disk = Target::open(target, layout.virtual_size)?;
    let workers = opts.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let job = Job {
        image: &image,
        layout: &layout,
        target: &disk,
        expected,
        opts,
        workers: workers.max(1),
        trace: &trace,
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
        trace.commit(|| disk.commit())?;
        Ok((actual, resumes))
    });
    trace.finish();
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
    /// Decompression/write threads.
    workers: usize,
    trace: &'a Trace,
}

/// One unit of work for a worker: pieces of file bytes that become one contiguous
/// run of guest bytes at `guest`, written with one call (raw pieces with one call
/// per received chunk they came in).
struct Work {
    guest: u64,
    guest_len: u64,
    parts: Vec<(Bytes, PieceKind)>,
}

impl Work {
    fn all_raw(&self) -> bool {
        self.parts.iter().all(|(_, k)| *k == PieceKind::Raw)
    }
}

/// Guest bytes gathered into one write at most (what convert writes at a time).
const WRITE_RUN: u64 = 1 << 20;

thread_local! {
    static CLUSTER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static RUN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The receiving end of the work queue, shared by the workers. A failing worker
/// empties it, which drops the receiver: the parser's next send fails and the
/// whole pipeline winds down instead of feeding workers that already gave up.
type WorkQueue = Mutex<Option<mpsc::Receiver<Work>>>;

impl Job<'_> {
    /// Zero the holes, stream the file through the layout; returns the file's
    /// checksum (hex) and the number of resumed connections.
    fn run(&self) -> Result<(String, u32), StreamError> {
        self.trace.zeroing(|| -> Result<(), StreamError> {
            for &(start, len) in &self.layout.holes {
                self.target.zero_range(start, len)?;
            }
            Ok(())
        })?;
        let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Bytes>(CHUNKS_IN_FLIGHT);
        let (work_tx, work_rx) = mpsc::sync_channel::<Work>(JOBS_IN_FLIGHT);
        let queue: WorkQueue = Mutex::new(Some(work_rx));
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                self.trace
                    .thread(Stage::Receive, || self.download(chunk_tx))
            });
            let workers: Vec<_> = (0..self.workers)
                .map(|_| scope.spawn(|| self.trace.thread(Stage::Work, || self.work(&queue))))
                .collect();
            let parsed = self
                .trace
                .thread(Stage::Parse, || self.parse(chunk_rx, work_tx));
            let mut written = Ok(());
            for worker in workers {
                let result = worker
                    .join()
                    .map_err(|_| StreamError::Internal("write thread panicked".into()))
                    .and_then(|r| r);
                if written.is_ok() {
                    written = result;
                }
            }
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

    /// Worker thread: take jobs until the queue ends; on a failure, close the
    /// queue for everyone.
    fn work(&self, queue: &WorkQueue) -> Result<(), StreamError> {
        loop {
            let next = self.trace.blocked(Stage::Work, || {
                let rx = queue.lock().unwrap_or_else(|p| p.into_inner());
                rx.as_ref().map(|rx| rx.recv())
            });
            let next = match next {
                Some(Ok(work)) => work,
                // The parser is done, or another worker failed.
                _ => return Ok(()),
            };
            if let Err(e) = self.apply(next) {
                queue.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Err(e);
            }
        }
    }

    /// Network thread: read the body in order and pass every chunk to the hash
    /// thread (every byte of the file is hashed) and to the parser.
    fn download(&self, tx: mpsc::SyncSender<Bytes>) -> Result<(String, u32), StreamError> {
        let mut body = self.image.stream()?;
        let total = self.image.size;
        let (hash_tx, hash_rx) = mpsc::sync_channel::<Bytes>(CHUNKS_IN_FLIGHT);
        let mut hasher = self.expected.hasher();
        std::thread::scope(|scope| {
            let hashing = scope.spawn(move || {
                self.trace.thread(Stage::Hash, || {
                    while let Ok(chunk) = self.trace.blocked(Stage::Hash, || hash_rx.recv()) {
                        hasher.update(&chunk);
                    }
                    hasher.finish()
                })
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
                    let chunk = Bytes::from(chunk);
                    if let Some(progress) = &self.opts.progress {
                        progress(body.position(), total);
                    }
                    // A closed channel: the parser stopped, and its error is the
                    // one to report.
                    let closed = self.trace.blocked(Stage::Receive, || {
                        hash_tx.send(chunk.clone()).is_err() || tx.send(chunk).is_err()
                    });
                    if closed {
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
    /// the window of received chunks and queueing write jobs for the workers.
    fn parse(
        &self,
        rx: mpsc::Receiver<Bytes>,
        tx: mpsc::SyncSender<Work>,
    ) -> Result<(), StreamError> {
        let pieces = &self.layout.pieces;
        let mut window = Window::new();
        let mut next = 0usize;
        // Bytes of pieces[next] already handed out (raw pieces go out in parts).
        let mut done = 0u64;
        let mut jobs = JobBuilder {
            tx,
            open: None,
            trace: self.trace,
        };
        while let Ok(chunk) = self.trace.blocked(Stage::Parse, || rx.recv()) {
            window.push(chunk);
            let window_end = window.end();
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
                if from < window.start() {
                    // Only possible if the layout's ordering were broken.
                    return Err(StreamError::Internal(format!(
                        "file offset {from} was already passed"
                    )));
                }
                let guest = p.guest + done;
                let sent = match p.kind {
                    PieceKind::Raw => {
                        let mut at = guest;
                        window.views(from, ready_to).into_iter().all(|view| {
                            let len = view.len() as u64;
                            at += len;
                            jobs.add(at - len, len, view, PieceKind::Raw)
                        })
                    }
                    PieceKind::Compressed { guest_len } => {
                        let packed = window.contiguous(from, to).ok_or_else(|| {
                            StreamError::Internal(format!(
                                "file bytes {from}..{to} are not in the window"
                            ))
                        })?;
                        jobs.add(guest, guest_len, packed, p.kind)
                    }
                };
                if !sent {
                    return Ok(()); // the workers failed and report why
                }
                if ready_to == to {
                    next += 1;
                    done = 0;
                } else {
                    done = ready_to - p.host;
                    break;
                }
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
                    k.clamp(window.start(), window_end)
                }
            };
            window.release_before(keep_from);
            if window.len() > MAX_WINDOW {
                return Err(StreamError::Internal(format!(
                    "{}: image layout needs more than {} MiB buffered at file offset {}",
                    self.image.url(),
                    MAX_WINDOW >> 20,
                    window.start()
                )));
            }
        }
        jobs.flush();
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
        if work.all_raw() {
            let mut at = work.guest;
            for (bytes, _) in &work.parts {
                self.target.write_at(at, bytes)?;
                at += bytes.len() as u64;
            }
            return Ok(());
        }
        RUN.with_borrow_mut(|run| {
            let need = work.guest_len as usize;
            if run.len() < need {
                // Grown once per thread and then reused: no per-job clearing.
                run.resize(need, 0);
            }
            let mut len = 0usize;
            for (bytes, kind) in &work.parts {
                let part_len = match *kind {
                    PieceKind::Raw => bytes.len(),
                    PieceKind::Compressed { guest_len } => guest_len as usize,
                };
                let out = run.get_mut(len..len + part_len).ok_or_else(|| {
                    StreamError::Internal(format!(
                        "write job at guest offset {} is longer than its {need} bytes",
                        work.guest
                    ))
                })?;
                match *kind {
                    PieceKind::Raw => out.copy_from_slice(bytes),
                    PieceKind::Compressed { .. } => {
                        self.decompress(bytes, work.guest + len as u64, out)?
                    }
                }
                len += part_len;
            }
            self.target.write_at(work.guest, &run[..len])
        })
    }

    /// Decompress one cluster into `out` (its first `out.len()` guest bytes).
    fn decompress(&self, packed: &[u8], guest: u64, out: &mut [u8]) -> Result<(), StreamError> {
        let cs = self.layout.cluster_size as usize;
        let corrupt = |e: crate::format::qcow2::compress::CompressError| StreamError::Qcow2 {
            url: self.image.url().to_string(),
            source: Qcow2Error::Corrupt(format!(
                "compressed cluster for guest offset {guest}: {e}"
            )),
        };
        let kind = self.layout.compression;
        if out.len() == cs {
            return decompress_cluster(kind, packed, out).map_err(corrupt);
        }
        // The disk's last cluster: decompress whole, keep the part inside the disk.
        CLUSTER.with_borrow_mut(|cluster| {
            cluster.resize(cs, 0);
            decompress_cluster(kind, packed, cluster).map_err(corrupt)?;
            let n = out.len();
            out.copy_from_slice(cluster.get(..n).ok_or_else(|| {
                StreamError::Internal(format!(
                    "piece at guest offset {guest} is longer than a cluster"
                ))
            })?);
            Ok(())
        })
    }
}

/// Gathers guest-contiguous parts into write jobs of at most `WRITE_RUN` bytes and
/// queues each job as soon as it is closed.
struct JobBuilder<'a> {
    tx: mpsc::SyncSender<Work>,
    open: Option<Work>,
    trace: &'a Trace,
}

impl JobBuilder<'_> {
    /// Add `bytes` that become `guest_len` guest bytes at `guest`; false once the
    /// workers are gone.
    fn add(&mut self, guest: u64, guest_len: u64, bytes: Bytes, kind: PieceKind) -> bool {
        if let Some(w) = &mut self.open
            && w.guest + w.guest_len == guest
            && w.guest_len + guest_len <= WRITE_RUN
        {
            w.guest_len += guest_len;
            w.parts.push((bytes, kind));
            return true;
        }
        let closed = self.open.replace(Work {
            guest,
            guest_len,
            parts: vec![(bytes, kind)],
        });
        match closed {
            Some(w) => self.trace.blocked(Stage::Parse, || self.tx.send(w)).is_ok(),
            None => true,
        }
    }

    /// Queue the last job.
    fn flush(&mut self) {
        if let Some(w) = self.open.take() {
            let _ = self.tx.send(w);
        }
    }
}

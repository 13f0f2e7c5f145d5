//! The iSCSI target of the deploy agent: a TCP listener with a thread per
//! connection, CHAP-protected login, SendTargets discovery and one LUN
//! backed by a file or block device.
//!
//! ```text
//! mod.rs         TargetConfig / RunningTarget: listen, accept, stop
//! login.rs       security (CHAP) and operational stages
//! connection.rs  full feature phase: commands, data, R2T, NOP, logout
//! ```

mod connection;
mod login;

use std::collections::HashMap;
use std::io::BufReader;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use thiserror::Error;

use crate::deploy::protocol::ChapSecret;
use crate::iscsi::chap::ChapError;
use crate::iscsi::scsi::{BackendError, Lun};

/// What this target can receive in one data segment.
pub const MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 256 * 1024;

pub struct TargetConfig {
    pub listen: SocketAddr,
    pub target_iqn: String,
    pub chap: ChapSecret,
    pub mutual_chap: Option<ChapSecret>,
    pub disk: PathBuf,
}

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("exported disk: {0}")]
    Disk(#[from] BackendError),
    #[error("CHAP configuration: {0}")]
    Chap(#[from] ChapError),
    #[error("target name {0:?} is not an iqn./eui./naa. name")]
    BadName(String),
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the accept thread panicked")]
    Panicked,
}

/// Counters over the target's lifetime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetStats {
    pub connections: u64,
    pub sessions: u64,
    pub failed_logins: u64,
    pub commands: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    sessions: AtomicU64,
    failed_logins: AtomicU64,
    commands: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// What every connection thread shares.
pub struct TargetShared {
    target_iqn: String,
    chap: ChapSecret,
    mutual_chap: Option<ChapSecret>,
    lun: Lun,
    stats: Counters,
    stopping: AtomicBool,
    next_tsih: AtomicU16,
    /// Open connections, so stop() can shut them down.
    streams: Mutex<HashMap<u64, TcpStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// A listening target; serves until [`RunningTarget::stop`].
pub struct RunningTarget {
    shared: Arc<TargetShared>,
    local_addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl RunningTarget {
    pub fn start(config: TargetConfig) -> Result<RunningTarget, TargetError> {
        let name = &config.target_iqn;
        if !(name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa."))
            || name.len() > 223
        {
            return Err(TargetError::BadName(name.clone()));
        }
        login::check_secrets(&config.chap, config.mutual_chap.as_ref())?;
        let lun = Lun::open(&config.disk, name)?;
        let listener = TcpListener::bind(config.listen).map_err(|source| TargetError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| TargetError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(TargetShared {
            target_iqn: config.target_iqn,
            chap: config.chap,
            mutual_chap: config.mutual_chap,
            lun,
            stats: Counters::default(),
            stopping: AtomicBool::new(false),
            next_tsih: AtomicU16::new(1),
            streams: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
        });
        let acceptor_shared = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("iscsi-accept".into())
            .spawn(move || accept_loop(listener, acceptor_shared))
            .map_err(|source| TargetError::Thread {
                what: "accept",
                source,
            })?;
        Ok(RunningTarget {
            shared,
            local_addr,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Current counters.
    pub fn stats(&self) -> TargetStats {
        self.shared.snapshot()
    }

    /// Closes the listener and every connection, joins all threads, flushes
    /// the disk and returns the counters.
    pub fn stop(mut self) -> Result<TargetStats, TargetError> {
        self.shutdown()?;
        Ok(self.shared.snapshot())
    }

    fn shutdown(&mut self) -> Result<(), TargetError> {
        let Some(acceptor) = self.acceptor.take() else {
            return Ok(());
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a connection of our own.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect(wake);
        let accept_result = acceptor.join();
        for stream in lock(&self.shared.streams).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
        let _ = self.shared.lun.backend().flush();
        accept_result.map_err(|_| TargetError::Panicked)
    }
}

impl Drop for RunningTarget {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TargetShared {
    fn snapshot(&self) -> TargetStats {
        let s = &self.stats;
        TargetStats {
            connections: s.connections.load(Ordering::Relaxed),
            sessions: s.sessions.load(Ordering::Relaxed),
            failed_logins: s.failed_logins.load(Ordering::Relaxed),
            commands: s.commands.load(Ordering::Relaxed),
            bytes_read: s.bytes_read.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<TargetShared>) {
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        next_id += 1;
        let id = next_id;
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.streams).insert(id, clone);
        }
        let worker_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("iscsi-conn-{id}"))
            .spawn(move || {
                serve_connection(stream, &worker_shared);
                lock(&worker_shared.streams).remove(&id);
            });
        match spawned {
            Ok(handle) => {
                let mut workers = lock(&shared.workers);
                // Reap finished threads so the list does not grow forever.
                workers.retain(|h| !h.is_finished());
                workers.push(handle);
            }
            Err(_) => {
                lock(&shared.streams).remove(&id);
            }
        }
    }
}

/// One connection: login, then the full feature phase.
fn serve_connection(stream: TcpStream, shared: &TargetShared) {
    let _ = stream.set_nodelay(true);
    let (Ok(portal), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
        return;
    };
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut duplex = Duplex {
        reader: BufReader::with_capacity(256 * 1024, stream),
        writer: write_half,
    };
    let tsih = shared.next_tsih.fetch_add(1, Ordering::Relaxed).max(1);
    let logged_in = match login::login(&mut duplex, shared, tsih) {
        Ok(logged_in) => logged_in,
        Err(err) => {
            eprintln!("iscsi target: login from {peer} failed: {err}");
            shared.stats.failed_logins.fetch_add(1, Ordering::Relaxed);
            let _ = duplex.writer.shutdown(Shutdown::Both);
            return;
        }
    };
    shared.stats.sessions.fetch_add(1, Ordering::Relaxed);
    let mut connection =
        connection::Connection::new(&mut duplex, shared, &shared.lun, portal, logged_in);
    if let connection::End::Error(err) = connection.serve() {
        eprintln!("iscsi target: connection from {peer} ended: {err}");
    }
    let _ = duplex.writer.shutdown(Shutdown::Both);
}

/// A buffered reading half and a direct writing half of one socket.
struct Duplex {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl std::io::Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

impl std::io::Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

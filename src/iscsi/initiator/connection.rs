//! The full feature phase on one TCP connection.
//!
//! Any number of threads issue commands at once. Each command's thread sends
//! its own PDUs (the socket's write half is shared under a lock, taken in
//! CmdSN order) and then waits on its own channel; one reader thread reads
//! every PDU the target sends and routes it by Initiator Task Tag. A pinger
//! thread answers the target's NOP-Ins and sends a NOP-Out when the line has
//! been idle, so a long pause in the image stream does not look like a dead
//! initiator.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::iscsi::pdu::{
    DataOut, Digests, Header, LogoutRequest, NopOut, Pdu, RESERVED_TAG, ScsiCommand, TaskAttribute,
    TextRequest, serial_gt, serial_le,
};
use crate::iscsi::text::Negotiated;

use super::InitiatorError;
use super::scsi::{self, Sense};

const KEEPALIVE: Duration = Duration::from_secs(5);

/// CmdSN bookkeeping and the tasks in flight.
struct Window {
    cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    tasks: HashMap<u32, Sender<Pdu>>,
    /// Why the connection is unusable, once it is.
    closed: Option<String>,
}

pub(crate) struct Connection {
    pub peer: SocketAddr,
    pub target: String,
    pub params: Negotiated,
    digests: Digests,
    writer: Mutex<BufWriter<TcpStream>>,
    window: Mutex<Window>,
    window_moved: Condvar,
    next_itt: AtomicU32,
    socket: TcpStream,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pinger: Mutex<Option<Sender<u32>>>,
}

/// What a finished command returned.
pub(crate) struct Completion {
    pub status: u8,
    pub response: u8,
    pub sense: Option<Sense>,
    pub data: Vec<u8>,
}

/// The data a command sends.
#[derive(Clone, Copy)]
pub(crate) enum Outgoing<'a> {
    None,
    Data(&'a [u8]),
}

impl Connection {
    pub fn start(
        stream: TcpStream,
        peer: SocketAddr,
        target: String,
        params: Negotiated,
        cmd_sn: u32,
        max_cmd_sn: u32,
        exp_stat_sn: u32,
    ) -> Result<Arc<Connection>, InitiatorError> {
        let io = |source| InitiatorError::Io { peer, source };
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(None).map_err(io)?;
        let reader = stream.try_clone().map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let digests = params.digests();
        let conn = Arc::new(Connection {
            peer,
            target,
            params,
            digests,
            writer: Mutex::new(BufWriter::with_capacity(64 << 10, writer)),
            window: Mutex::new(Window {
                cmd_sn,
                max_cmd_sn,
                exp_stat_sn,
                tasks: HashMap::new(),
                closed: None,
            }),
            window_moved: Condvar::new(),
            next_itt: AtomicU32::new(1),
            socket: stream,
            threads: Mutex::new(Vec::new()),
            pinger: Mutex::new(None),
        });
        let (ping_tx, ping_rx) = mpsc::channel();
        *lock(&conn.pinger) = Some(ping_tx.clone());
        let reading = Arc::clone(&conn);
        let reader_thread = std::thread::Builder::new()
            .name("iscsi-reader".into())
            .spawn(move || reading.read_loop(reader, ping_tx))
            .map_err(io)?;
        let pinging = Arc::clone(&conn);
        let pinger_thread = std::thread::Builder::new()
            .name("iscsi-keepalive".into())
            .spawn(move || pinging.ping_loop(ping_rx))
            .map_err(io)?;
        lock(&conn.threads).extend([reader_thread, pinger_thread]);
        Ok(conn)
    }

    fn lost(&self, detail: impl Into<String>) -> InitiatorError {
        InitiatorError::ConnectionLost {
            peer: self.peer,
            detail: detail.into(),
        }
    }

    /// Mark the connection dead and wake everyone waiting on it.
    fn close(&self, why: String) {
        let mut w = lock(&self.window);
        w.closed.get_or_insert(why);
        // Dropping the senders ends every waiting command with an error.
        w.tasks.clear();
        drop(w);
        self.window_moved.notify_all();
        lock(&self.pinger).take();
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    fn read_loop(&self, mut stream: TcpStream, pinger: Sender<u32>) {
        let limit = self.params.local_max_recv_data_segment_length;
        loop {
            let pdu = match Pdu::read_from(&mut stream, &self.digests, limit) {
                Ok(pdu) => pdu,
                Err(e) => {
                    self.close(format!("reading from the target: {e}"));
                    return;
                }
            };
            let (itt, stat_sn, max_cmd_sn) = match &pdu.header {
                Header::ScsiResponse(r) => (r.itt, Some(r.stat_sn), Some(r.max_cmd_sn)),
                Header::DataIn(d) => (d.itt, d.has_status.then_some(d.stat_sn), Some(d.max_cmd_sn)),
                Header::ReadyToTransfer(r) => (r.itt, None, Some(r.max_cmd_sn)),
                Header::NopIn(n) => (n.itt, Some(n.stat_sn), Some(n.max_cmd_sn)),
                Header::TextResponse(t) => (t.itt, Some(t.stat_sn), Some(t.max_cmd_sn)),
                Header::LogoutResponse(l) => (l.itt, Some(l.stat_sn), Some(l.max_cmd_sn)),
                Header::TaskMgmtResponse(t) => (t.itt, Some(t.stat_sn), Some(t.max_cmd_sn)),
                Header::Reject(r) => {
                    self.close(format!(
                        "the target rejected a PDU (reason {:#04x})",
                        r.reason
                    ));
                    return;
                }
                other => {
                    self.close(format!(
                        "unexpected {:?} PDU from the target",
                        other.opcode()
                    ));
                    return;
                }
            };
            let mut w = lock(&self.window);
            if let Some(stat_sn) = stat_sn
                && serial_le(w.exp_stat_sn, stat_sn)
            {
                w.exp_stat_sn = stat_sn.wrapping_add(1);
            }
            if let Some(max) = max_cmd_sn
                && serial_gt(max, w.max_cmd_sn)
            {
                w.max_cmd_sn = max;
                self.window_moved.notify_all();
            }
            if let Header::NopIn(nop) = &pdu.header
                && nop.itt == RESERVED_TAG
            {
                // The target pings us: answer with its Target Transfer Tag.
                if nop.ttt != RESERVED_TAG {
                    let _ = pinger.send(nop.ttt);
                }
                continue;
            }
            if let Some(task) = w.tasks.get(&itt) {
                let _ = task.send(pdu);
            }
        }
    }

    fn ping_loop(&self, requests: Receiver<u32>) {
        loop {
            let ttt = match requests.recv_timeout(KEEPALIVE) {
                Ok(ttt) => ttt,
                Err(RecvTimeoutError::Timeout) => RESERVED_TAG,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // A ping of our own carries a task tag; its NOP-In answer finds no
            // waiting task and is dropped. An answer to the target's ping does not.
            let itt = if ttt == RESERVED_TAG {
                self.new_itt()
            } else {
                RESERVED_TAG
            };
            let (cmd_sn, exp_stat_sn) = {
                let w = lock(&self.window);
                if w.closed.is_some() {
                    return;
                }
                (w.cmd_sn, w.exp_stat_sn)
            };
            let nop = Header::NopOut(NopOut {
                immediate: true,
                lun: 0,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
            });
            if self.send(&[Pdu::new(nop, Vec::new())]).is_err() {
                return;
            }
        }
    }

    fn new_itt(&self) -> u32 {
        loop {
            let itt = self.next_itt.fetch_add(1, Ordering::Relaxed);
            if itt != RESERVED_TAG {
                return itt;
            }
        }
    }

    fn send(&self, pdus: &[Pdu]) -> Result<(), InitiatorError> {
        let mut w = lock(&self.writer);
        let result = pdus
            .iter()
            .try_for_each(|p| p.write_to(&mut *w, &self.digests))
            .and_then(|()| w.flush());
        result.map_err(|source| {
            self.close(format!("writing to the target: {source}"));
            InitiatorError::Io {
                peer: self.peer,
                source,
            }
        })
    }

    /// Register a task, wait for room in the CmdSN window and send `first`
    /// (built from the CmdSN and ExpStatSN) plus `more`, under one hold of the
    /// socket so commands leave in CmdSN order.
    fn issue(
        &self,
        itt: u32,
        immediate: bool,
        build: impl Fn(u32, u32) -> Pdu,
        more: Vec<Pdu>,
    ) -> Result<Receiver<Pdu>, InitiatorError> {
        let (tx, rx) = mpsc::channel();
        loop {
            let mut writer = lock(&self.writer);
            let mut w = lock(&self.window);
            if let Some(why) = &w.closed {
                return Err(self.lost(why.clone()));
            }
            if !immediate && !serial_le(w.cmd_sn, w.max_cmd_sn) {
                drop(writer);
                // The reader moves the window; wait without holding the socket.
                let _unused = self
                    .window_moved
                    .wait_timeout(w, Duration::from_secs(1))
                    .map(|(g, _)| g);
                continue;
            }
            let cmd_sn = w.cmd_sn;
            if !immediate {
                w.cmd_sn = w.cmd_sn.wrapping_add(1);
            }
            w.tasks.insert(itt, tx);
            let first = build(cmd_sn, w.exp_stat_sn);
            drop(w);
            let result = std::iter::once(&first)
                .chain(&more)
                .try_for_each(|p| p.write_to(&mut *writer, &self.digests))
                .and_then(|()| writer.flush());
            drop(writer);
            return match result {
                Ok(()) => Ok(rx),
                Err(source) => {
                    self.close(format!("writing to the target: {source}"));
                    Err(InitiatorError::Io {
                        peer: self.peer,
                        source,
                    })
                }
            };
        }
    }

    fn forget(&self, itt: u32) {
        lock(&self.window).tasks.remove(&itt);
    }

    fn wait(&self, rx: &Receiver<Pdu>) -> Result<Pdu, InitiatorError> {
        rx.recv().map_err(|_| {
            let why = lock(&self.window)
                .closed
                .clone()
                .unwrap_or_else(|| "the connection closed".into());
            self.lost(why)
        })
    }

    fn exp_stat_sn(&self) -> u32 {
        lock(&self.window).exp_stat_sn
    }

    /// Data-Out PDUs carrying `data[offset..offset+len]` for transfer tag `ttt`.
    fn data_out(
        &self,
        lun: u64,
        itt: u32,
        ttt: u32,
        data: &[u8],
        offset: usize,
        len: usize,
    ) -> Vec<Pdu> {
        let segment = self.params.peer_max_recv_data_segment_length.max(512) as usize;
        let exp_stat_sn = self.exp_stat_sn();
        let end = offset + len;
        let mut pdus = Vec::new();
        let mut pos = offset;
        let mut data_sn = 0;
        while pos < end {
            let n = segment.min(end - pos);
            let header = Header::DataOut(DataOut {
                final_: pos + n == end,
                lun,
                itt,
                ttt,
                exp_stat_sn,
                data_sn,
                buffer_offset: pos as u32,
            });
            pdus.push(Pdu::new(header, data[pos..pos + n].to_vec()));
            data_sn += 1;
            pos += n;
        }
        pdus
    }

    /// Run one SCSI command to completion: immediate and unsolicited data up to
    /// FirstBurstLength, Data-Out for each R2T, Data-In gathered into a buffer.
    pub fn command(
        &self,
        lun: u64,
        cdb: [u8; 16],
        outgoing: Outgoing,
        read_len: u32,
    ) -> Result<Completion, InitiatorError> {
        let itt = self.new_itt();
        let data = match outgoing {
            Outgoing::Data(d) => d,
            Outgoing::None => &[],
        };
        let p = &self.params;
        let segment = p.peer_max_recv_data_segment_length as usize;
        let first_burst = p.first_burst_length as usize;
        let immediate_len = if p.immediate_data {
            data.len().min(first_burst).min(segment)
        } else {
            0
        };
        // Unsolicited Data-Out follows the command when InitialR2T=No.
        let unsolicited = if !p.initial_r2t && data.len() > immediate_len {
            let len = data.len().min(first_burst) - immediate_len;
            self.data_out(lun, itt, RESERVED_TAG, data, immediate_len, len)
        } else {
            Vec::new()
        };
        let immediate_data = data[..immediate_len].to_vec();
        let final_ = unsolicited.is_empty();
        let build = |cmd_sn, exp_stat_sn| {
            let header = Header::ScsiCommand(ScsiCommand {
                immediate: false,
                final_,
                read: read_len > 0,
                write: !data.is_empty(),
                attribute: TaskAttribute::Simple,
                lun,
                itt,
                expected_data_length: if data.is_empty() {
                    read_len
                } else {
                    data.len() as u32
                },
                cmd_sn,
                exp_stat_sn,
                cdb,
            });
            Pdu::new(header, immediate_data.clone())
        };
        let rx = self.issue(itt, false, build, unsolicited)?;
        let result = self.finish(lun, itt, &cdb, data, read_len, &rx);
        self.forget(itt);
        result
    }

    fn finish(
        &self,
        lun: u64,
        itt: u32,
        cdb: &[u8; 16],
        data: &[u8],
        read_len: u32,
        rx: &Receiver<Pdu>,
    ) -> Result<Completion, InitiatorError> {
        let mut incoming = vec![0u8; read_len as usize];
        let mut received = 0usize;
        loop {
            let pdu = self.wait(rx)?;
            match pdu.header {
                Header::ReadyToTransfer(r2t) => {
                    let offset = r2t.buffer_offset as usize;
                    let len = r2t.desired_length as usize;
                    if offset.checked_add(len).is_none_or(|end| end > data.len()) {
                        return Err(InitiatorError::Protocol {
                            peer: self.peer,
                            detail: format!(
                                "R2T for {len} bytes at {offset} of a {}-byte {}",
                                data.len(),
                                scsi::command_name(cdb[0])
                            ),
                        });
                    }
                    let pdus = self.data_out(lun, itt, r2t.ttt, data, offset, len);
                    self.send(&pdus)?;
                }
                Header::DataIn(d) => {
                    let offset = d.buffer_offset as usize;
                    let Some(dest) = offset
                        .checked_add(pdu.data.len())
                        .and_then(|end| incoming.get_mut(offset..end))
                    else {
                        return Err(InitiatorError::Protocol {
                            peer: self.peer,
                            detail: format!(
                                "Data-In of {} bytes at {offset} past the {read_len} bytes asked for",
                                pdu.data.len()
                            ),
                        });
                    };
                    dest.copy_from_slice(&pdu.data);
                    received = received.max(offset + pdu.data.len());
                    if d.has_status {
                        incoming.truncate(received);
                        return Ok(Completion {
                            status: d.status,
                            response: 0,
                            sense: None,
                            data: incoming,
                        });
                    }
                }
                Header::ScsiResponse(r) => {
                    incoming.truncate(received);
                    return Ok(Completion {
                        status: r.status,
                        response: r.response,
                        sense: Sense::from_response_data(&pdu.data),
                        data: incoming,
                    });
                }
                other => {
                    return Err(InitiatorError::Protocol {
                        peer: self.peer,
                        detail: format!("unexpected {:?} for a SCSI command", other.opcode()),
                    });
                }
            }
        }
    }

    /// A Text request/response exchange (SendTargets), following continuations.
    pub fn text(&self, keys: &[(String, String)]) -> Result<Vec<u8>, InitiatorError> {
        let mut body = crate::iscsi::text::encode(keys);
        let mut ttt = RESERVED_TAG;
        let mut gathered = Vec::new();
        loop {
            let itt = self.new_itt();
            let payload = std::mem::take(&mut body);
            let build = |cmd_sn, exp_stat_sn| {
                let header = Header::TextRequest(TextRequest {
                    immediate: true,
                    final_: true,
                    continue_: false,
                    lun: 0,
                    itt,
                    ttt,
                    cmd_sn,
                    exp_stat_sn,
                });
                Pdu::new(header, payload.clone())
            };
            let rx = self.issue(itt, true, build, Vec::new())?;
            let pdu = self.wait(&rx);
            self.forget(itt);
            let pdu = pdu?;
            let Header::TextResponse(resp) = pdu.header else {
                return Err(InitiatorError::Protocol {
                    peer: self.peer,
                    detail: "expected a Text Response".into(),
                });
            };
            gathered.extend_from_slice(&pdu.data);
            if !resp.continue_ {
                return Ok(gathered);
            }
            ttt = resp.ttt;
        }
    }

    /// Close the session politely, then stop the threads.
    pub fn logout(&self) -> Result<(), InitiatorError> {
        let itt = self.new_itt();
        let build = |cmd_sn, exp_stat_sn| {
            let header = Header::LogoutRequest(LogoutRequest {
                immediate: true,
                reason: 0,
                itt,
                cid: 0,
                cmd_sn,
                exp_stat_sn,
            });
            Pdu::new(header, Vec::new())
        };
        let result = self.issue(itt, true, build, Vec::new()).and_then(|rx| {
            let pdu = self.wait(&rx)?;
            match pdu.header {
                Header::LogoutResponse(r) if r.response == 0 => Ok(()),
                Header::LogoutResponse(r) => Err(InitiatorError::Protocol {
                    peer: self.peer,
                    detail: format!("logout refused with response {:#04x}", r.response),
                }),
                other => Err(InitiatorError::Protocol {
                    peer: self.peer,
                    detail: format!("expected a Logout Response, got {:?}", other.opcode()),
                }),
            }
        });
        self.shutdown();
        result
    }

    /// Stop the threads (idempotent).
    pub fn shutdown(&self) {
        self.close("the session was closed".into());
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

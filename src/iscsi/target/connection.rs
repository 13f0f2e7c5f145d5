//! The full feature phase of one connection: SCSI commands with immediate,
//! unsolicited and R2T-solicited data, Data-In, NOP, SendTargets, task
//! management and logout.
//!
//! A write is applied only once all of its data has arrived: a connection
//! that drops mid-transfer leaves the disk exactly as it was before that
//! command (earlier, completed commands stay written).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::iscsi::pdu::{
    self, DataIn, Digests, Header, LogoutResponse, NopIn, Pdu, PduError, RESERVED_TAG,
    ReadyToTransfer, Reject, ScsiCommand, ScsiResponse, TaskMgmtResponse, TextResponse,
};
use crate::iscsi::scsi::{self, Lun, Outcome, Sense};
use crate::iscsi::text::{self, Negotiated, SessionType};

use super::TargetShared;
use super::login::{COMMAND_WINDOW, LoggedIn};

/// A write waiting for its data.
struct PendingWrite {
    command: ScsiCommand,
    buffer: Vec<u8>,
    received: u64,
    /// Offset up to which data is unsolicited (immediate + first burst).
    unsolicited_end: u64,
    /// Next offset to request with an R2T.
    next_r2t_offset: u64,
    outstanding_r2ts: u32,
    r2t_sn: u32,
    /// Next DataSN expected per sequence (keyed by Target Transfer Tag;
    /// unsolicited data uses the reserved tag).
    next_data_sn: HashMap<u32, u32>,
}

pub struct Connection<'a, S> {
    stream: S,
    shared: &'a TargetShared,
    lun: Option<&'a Lun>,
    portal: SocketAddr,
    negotiated: Negotiated,
    digests: Digests,
    stat_sn: u32,
    exp_cmd_sn: u32,
    next_ttt: u32,
    writes: HashMap<u32, PendingWrite>,
}

/// Why the connection ended.
#[derive(Debug)]
pub enum End {
    LoggedOut,
    Closed,
    Error(String),
}

impl<'a, S: Read + Write> Connection<'a, S> {
    pub fn new(
        stream: S,
        shared: &'a TargetShared,
        lun: &'a Lun,
        portal: SocketAddr,
        login: LoggedIn,
    ) -> Self {
        let digests = login.negotiated.digests();
        let lun = (login.negotiated.session_type == SessionType::Normal).then_some(lun);
        Connection {
            stream,
            shared,
            lun,
            portal,
            negotiated: login.negotiated,
            digests,
            stat_sn: login.stat_sn,
            exp_cmd_sn: login.exp_cmd_sn,
            next_ttt: 1,
            writes: HashMap::new(),
        }
    }

    /// Serves PDUs until logout, close or a fatal protocol error.
    pub fn serve(&mut self) -> End {
        loop {
            let limit = self.negotiated.local_max_recv_data_segment_length;
            let pdu = match Pdu::read_from(&mut self.stream, &self.digests, limit) {
                Ok(pdu) => pdu,
                Err(PduError::Closed) => return End::Closed,
                Err(err) => {
                    if let Some((reason, bhs)) = err.reject() {
                        let bhs = bhs.to_vec();
                        if self.send_reject(reason as u8, bhs).is_err() {
                            return End::Error(err.to_string());
                        }
                    }
                    if err.stream_in_step() {
                        continue;
                    }
                    return End::Error(err.to_string());
                }
            };
            match self.handle(pdu) {
                Ok(true) => {}
                Ok(false) => return End::LoggedOut,
                Err(err) => return End::Error(err.to_string()),
            }
        }
    }

    /// Handles one PDU; false after a logout.
    fn handle(&mut self, pdu: Pdu) -> io::Result<bool> {
        match pdu.header {
            Header::ScsiCommand(command) => {
                if self.accept_cmd_sn(command.immediate, command.cmd_sn) {
                    self.scsi_command(command, pdu.data)?;
                }
            }
            Header::DataOut(data_out) => self.data_out(data_out, pdu.data)?,
            Header::NopOut(nop) => {
                if !self.accept_cmd_sn(nop.immediate, nop.cmd_sn) {
                    return Ok(true);
                }
                // A NOP-Out with the reserved tag answers our ping: no reply.
                if nop.itt != RESERVED_TAG {
                    let header = Header::NopIn(NopIn {
                        lun: nop.lun,
                        itt: nop.itt,
                        ttt: RESERVED_TAG,
                        stat_sn: self.take_stat_sn(),
                        exp_cmd_sn: self.exp_cmd_sn,
                        max_cmd_sn: self.max_cmd_sn(),
                    });
                    self.send(Pdu::new(header, pdu.data))?;
                }
            }
            Header::TextRequest(request) => {
                if !self.accept_cmd_sn(request.immediate, request.cmd_sn) {
                    return Ok(true);
                }
                let data = self.text_response(&pdu.data);
                let header = Header::TextResponse(TextResponse {
                    final_: true,
                    continue_: false,
                    lun: 0,
                    itt: request.itt,
                    ttt: RESERVED_TAG,
                    stat_sn: self.take_stat_sn(),
                    exp_cmd_sn: self.exp_cmd_sn,
                    max_cmd_sn: self.max_cmd_sn(),
                });
                self.send(Pdu::new(header, data))?;
            }
            Header::TaskMgmtRequest(request) => {
                if !self.accept_cmd_sn(request.immediate, request.cmd_sn) {
                    return Ok(true);
                }
                // Commands run to completion as they arrive; only writes
                // waiting for data can still be aborted.
                let response = match request.function {
                    1 => {
                        self.writes.remove(&request.referenced_task_tag);
                        0
                    }
                    2 | 3 | 5..=7 => {
                        self.writes.clear();
                        0
                    }
                    _ => 5, // function not supported
                };
                let header = Header::TaskMgmtResponse(TaskMgmtResponse {
                    response,
                    itt: request.itt,
                    stat_sn: self.take_stat_sn(),
                    exp_cmd_sn: self.exp_cmd_sn,
                    max_cmd_sn: self.max_cmd_sn(),
                });
                self.send(Pdu::new(header, Vec::new()))?;
            }
            Header::LogoutRequest(request) => {
                if !self.accept_cmd_sn(request.immediate, request.cmd_sn) {
                    return Ok(true);
                }
                let header = Header::LogoutResponse(LogoutResponse {
                    response: 0,
                    itt: request.itt,
                    stat_sn: self.take_stat_sn(),
                    exp_cmd_sn: self.exp_cmd_sn,
                    max_cmd_sn: self.max_cmd_sn(),
                    time2wait: 0,
                    time2retain: 0,
                });
                self.send(Pdu::new(header, Vec::new()))?;
                return Ok(false);
            }
            other => {
                // Target-to-initiator PDUs and logins have no place here.
                let bhs = other.encode().to_vec();
                self.send_reject(pdu::RejectReason::ProtocolError as u8, bhs)?;
            }
        }
        Ok(true)
    }

    /// Checks a command's CmdSN against the window: commands outside
    /// [ExpCmdSN, MaxCmdSN] are dropped silently (RFC 7143 §3.2.2.1).
    fn accept_cmd_sn(&mut self, immediate: bool, cmd_sn: u32) -> bool {
        if immediate {
            return true;
        }
        if pdu::serial_lt(cmd_sn, self.exp_cmd_sn) || pdu::serial_gt(cmd_sn, self.max_cmd_sn()) {
            return false;
        }
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        }
        true
    }

    fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.wrapping_add(COMMAND_WINDOW - 1)
    }

    fn take_stat_sn(&mut self) -> u32 {
        let sn = self.stat_sn;
        self.stat_sn = sn.wrapping_add(1);
        sn
    }

    fn send(&mut self, pdu: Pdu) -> io::Result<()> {
        pdu.write_to(&mut self.stream, &self.digests)
    }

    fn send_reject(&mut self, reason: u8, rejected_bhs: Vec<u8>) -> io::Result<()> {
        let header = Header::Reject(Reject {
            reason,
            stat_sn: self.take_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
            data_sn: 0,
        });
        self.send(Pdu::new(header, rejected_bhs))?;
        self.stream.flush()
    }

    /// SendTargets: this target and its portal; other keys NotUnderstood.
    fn text_response(&self, data: &[u8]) -> Vec<u8> {
        let Ok(keys) = text::decode(data) else {
            return Vec::new();
        };
        let mut answers = Vec::new();
        for (key, value) in keys {
            if key == "SendTargets" {
                let wanted = value == "All"
                    || value == self.shared.target_iqn
                    || (value.is_empty() && self.negotiated.session_type == SessionType::Normal);
                if wanted {
                    answers.push(("TargetName".to_string(), self.shared.target_iqn.clone()));
                    let address = match self.portal {
                        SocketAddr::V4(v4) => format!("{}:{},1", v4.ip(), v4.port()),
                        SocketAddr::V6(v6) => format!("[{}]:{},1", v6.ip(), v6.port()),
                    };
                    answers.push(("TargetAddress".to_string(), address));
                }
            } else {
                answers.push((key, "NotUnderstood".to_string()));
            }
        }
        text::encode(&answers)
    }

    fn scsi_command(&mut self, command: ScsiCommand, immediate_data: Vec<u8>) -> io::Result<()> {
        self.shared.stats.commands.fetch_add(1, Ordering::Relaxed);
        let Some(lun) = self.lun else {
            // A discovery session carries no SCSI commands.
            let bhs = Header::ScsiCommand(command).encode().to_vec();
            return self.send_reject(pdu::RejectReason::ProtocolError as u8, bhs);
        };
        if !command.write || command.expected_data_length == 0 {
            let outcome = lun.execute(command.lun, &command.cdb, &immediate_data);
            return self.complete(&command, outcome, 0);
        }
        let expected = u64::from(command.expected_data_length);
        if expected > scsi::MAX_DATA_OUT {
            // Later Data-Out PDUs for this tag find no pending write and are dropped.
            return self.complete(&command, Outcome::check(Sense::INVALID_FIELD_IN_CDB), 0);
        }
        let first_burst = u64::from(self.negotiated.first_burst_length);
        let immediate_len = (immediate_data.len() as u64).min(expected);
        let unsolicited_end = if command.final_ {
            immediate_len
        } else {
            first_burst.min(expected).max(immediate_len)
        };
        let mut buffer = vec![0u8; expected as usize];
        buffer[..immediate_len as usize].copy_from_slice(&immediate_data[..immediate_len as usize]);
        let write = PendingWrite {
            command,
            buffer,
            received: immediate_len,
            unsolicited_end,
            next_r2t_offset: unsolicited_end,
            outstanding_r2ts: 0,
            r2t_sn: 0,
            next_data_sn: HashMap::new(),
        };
        let itt = write.command.itt;
        self.writes.insert(itt, write);
        self.progress_write(itt)
    }

    fn data_out(&mut self, header: pdu::DataOut, data: Vec<u8>) -> io::Result<()> {
        let Some(write) = self.writes.get_mut(&header.itt) else {
            // Data of a refused or aborted command: dropped.
            return Ok(());
        };
        let offset = u64::from(header.buffer_offset);
        let end = offset + data.len() as u64;
        let solicited = header.ttt != RESERVED_TAG;
        let in_bounds =
            end <= write.buffer.len() as u64 && (solicited || end <= write.unsolicited_end);
        if !in_bounds {
            self.writes.remove(&header.itt);
            let bhs = Header::DataOut(header).encode().to_vec();
            return self.send_reject(pdu::RejectReason::ProtocolError as u8, bhs);
        }
        let expected_sn = write.next_data_sn.entry(header.ttt).or_insert(0);
        if header.data_sn != *expected_sn {
            // A lost or reordered Data-Out: with ErrorRecoveryLevel 0 the
            // command fails and nothing of it is written.
            let (command, r2t_sn) = (write.command.clone(), write.r2t_sn);
            self.writes.remove(&header.itt);
            return self.complete(&command, Outcome::check(Sense::DATA_PHASE_ERROR), r2t_sn);
        }
        *expected_sn += 1;
        write.buffer[offset as usize..end as usize].copy_from_slice(&data);
        write.received += data.len() as u64;
        if solicited && header.final_ {
            write.outstanding_r2ts = write.outstanding_r2ts.saturating_sub(1);
        }
        self.progress_write(header.itt)
    }

    /// Runs a write whose data is complete, or asks for more with R2Ts.
    fn progress_write(&mut self, itt: u32) -> io::Result<()> {
        let complete = self
            .writes
            .get(&itt)
            .is_some_and(|write| write.received >= write.buffer.len() as u64);
        if complete && let Some(write) = self.writes.remove(&itt) {
            let outcome = match self.lun {
                Some(lun) => lun.execute(write.command.lun, &write.command.cdb, &write.buffer),
                None => Outcome::check(Sense::LUN_NOT_SUPPORTED),
            };
            if outcome.status == scsi::status::GOOD {
                self.shared
                    .stats
                    .bytes_written
                    .fetch_add(Lun::data_out_length(&write.command.cdb), Ordering::Relaxed);
            }
            return self.complete(&write.command, outcome, write.r2t_sn);
        }
        let Some(write) = self.writes.get_mut(&itt) else {
            return Ok(());
        };
        let total = write.buffer.len() as u64;
        let burst = u64::from(self.negotiated.max_burst_length);
        let max_outstanding = self.negotiated.max_outstanding_r2t;
        let mut r2ts = Vec::new();
        while write.next_r2t_offset < total && write.outstanding_r2ts < max_outstanding {
            let length = burst.min(total - write.next_r2t_offset);
            let ttt = self.next_ttt;
            self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
            r2ts.push(ReadyToTransfer {
                lun: write.command.lun,
                itt,
                ttt: if ttt == RESERVED_TAG { 1 } else { ttt },
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.exp_cmd_sn.wrapping_add(COMMAND_WINDOW - 1),
                r2t_sn: write.r2t_sn,
                buffer_offset: write.next_r2t_offset as u32,
                desired_length: length as u32,
            });
            write.r2t_sn += 1;
            write.outstanding_r2ts += 1;
            write.next_r2t_offset += length;
        }
        for r2t in r2ts {
            self.send(Pdu::new(Header::ReadyToTransfer(r2t), Vec::new()))?;
        }
        self.stream.flush()
    }

    /// Sends Data-In (split by the initiator's MaxRecvDataSegmentLength) and
    /// the status, folded into the last Data-In when there is no sense.
    fn complete(
        &mut self,
        command: &ScsiCommand,
        outcome: Outcome,
        data_sn_start: u32,
    ) -> io::Result<()> {
        let expected = command.expected_data_length as usize;
        let mut data = outcome.data;
        let (mut overflow, mut underflow, mut residual) = (false, false, 0u32);
        if command.read || !data.is_empty() {
            if data.len() > expected {
                overflow = true;
                residual = (data.len() - expected) as u32;
                data.truncate(expected);
            } else if data.len() < expected {
                underflow = true;
                residual = (expected - data.len()) as u32;
            }
        } else if command.write {
            let needed = Lun::data_out_length(&command.cdb);
            if needed > expected as u64 {
                overflow = true;
                residual = (needed - expected as u64).min(u64::from(u32::MAX)) as u32;
            } else if needed < expected as u64 {
                underflow = true;
                residual = (expected as u64 - needed) as u32;
            }
        }
        if !data.is_empty() {
            self.shared
                .stats
                .bytes_read
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let status_in_data = outcome.sense.is_none() && !data.is_empty();
        let segment = self.negotiated.peer_max_recv_data_segment_length.max(512) as usize;
        let burst = self.negotiated.max_burst_length.max(512) as usize;
        let mut data_sn = data_sn_start;
        let mut offset = 0usize;
        while offset < data.len() {
            // A PDU never crosses a burst boundary; F ends each burst.
            let burst_end = (offset / burst + 1) * burst;
            let end = (offset + segment).min(data.len()).min(burst_end);
            let last = end == data.len();
            let header = DataIn {
                final_: last || end == burst_end,
                acknowledge: false,
                overflow: last && status_in_data && overflow,
                underflow: last && status_in_data && underflow,
                has_status: last && status_in_data,
                status: outcome.status,
                lun: command.lun,
                itt: command.itt,
                ttt: RESERVED_TAG,
                stat_sn: if last && status_in_data {
                    self.take_stat_sn()
                } else {
                    0
                },
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn(),
                data_sn,
                buffer_offset: offset as u32,
                residual: if last && status_in_data { residual } else { 0 },
            };
            self.send(Pdu::new(Header::DataIn(header), data[offset..end].to_vec()))?;
            data_sn += 1;
            offset = end;
        }
        if !status_in_data {
            let sense_data = match outcome.sense {
                Some(sense) => {
                    let fixed = sense.fixed();
                    let mut segment = (fixed.len() as u16).to_be_bytes().to_vec();
                    segment.extend_from_slice(&fixed);
                    segment
                }
                None => Vec::new(),
            };
            let header = Header::ScsiResponse(ScsiResponse {
                bidi_overflow: false,
                bidi_underflow: false,
                overflow,
                underflow,
                response: 0,
                status: outcome.status,
                itt: command.itt,
                snack_tag: 0,
                stat_sn: self.take_stat_sn(),
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn(),
                exp_data_sn: data_sn,
                bidi_residual: 0,
                residual,
            });
            self.send(Pdu::new(header, sense_data))?;
        }
        self.stream.flush()
    }
}

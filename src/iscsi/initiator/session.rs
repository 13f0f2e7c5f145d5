//! A logged-in session to one target, bound to one disk LUN.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::deploy::protocol::ChapSecret;

use super::connection::{Completion, Connection, Outgoing};
use super::login::{LoginPlan, login};
use super::scsi::{self, BlockLimits, Capacity};
use super::writer::check_range;
use super::{BlockWriter, InitiatorError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest READ/WRITE issued as one command.
const MAX_TRANSFER: u64 = 1 << 20;
/// Largest WRITE SAME issued as one command when the target names no limit.
const DEFAULT_WRITE_SAME: u64 = 256 << 20;

/// How to log in.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    pub initiator_iqn: String,
    pub target_iqn: String,
    pub chap: ChapSecret,
    /// Some: the target must prove this secret too (mutual CHAP).
    pub mutual_chap: Option<ChapSecret>,
    /// Ask for CRC32C header and data digests.
    pub digests: bool,
}

pub(crate) fn connect(portal: SocketAddr) -> Result<TcpStream, InitiatorError> {
    let stream = TcpStream::connect_timeout(&portal, CONNECT_TIMEOUT)
        .map_err(|source| InitiatorError::Connect { portal, source })?;
    // Login answers come quickly; a silent target must not hang the conductor.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|source| InitiatorError::Io {
            peer: portal,
            source,
        })?;
    Ok(stream)
}

/// A session to one target's disk. Send + Sync: several threads may read and
/// write at once, which keeps several commands in flight.
pub struct Session {
    conn: Arc<Connection>,
    lun: u64,
    capacity: Capacity,
    limits: BlockLimits,
    /// UNMAP is supported and unmapped blocks read as zeros.
    unmap_zeroes: bool,
    write_same: AtomicBool,
}

impl Session {
    /// Log in and pick the first disk LUN the target reports (tgt puts its
    /// controller at LUN 0 and the disk at LUN 1; kiln's target has the disk at 0).
    pub fn login(portal: SocketAddr, options: &LoginOptions) -> Result<Session, InitiatorError> {
        Self::login_to_lun(portal, options, None)
    }

    /// Log in to a given LUN number, or (None) the first disk LUN.
    pub fn login_to_lun(
        portal: SocketAddr,
        options: &LoginOptions,
        lun: Option<u16>,
    ) -> Result<Session, InitiatorError> {
        let conn = open(
            portal,
            &LoginPlan {
                initiator_iqn: &options.initiator_iqn,
                target_iqn: Some(&options.target_iqn),
                chap: &options.chap,
                mutual_chap: options.mutual_chap.as_ref(),
                digests: options.digests,
            },
        )?;
        // From here on a failure must stop the connection's threads.
        let guard = ShutdownOnDrop(Some(Arc::clone(&conn)));
        let lun = match lun {
            Some(n) => scsi::encode_lun(n),
            None => first_disk_lun(&conn)?,
        };
        let data = expect_good(
            &conn,
            lun,
            scsi::read_capacity16(),
            Outgoing::None,
            scsi::READ_CAPACITY_16_LEN,
        )?;
        let capacity = scsi::parse_capacity16(&data).ok_or_else(|| InitiatorError::Protocol {
            peer: portal,
            detail: format!("READ CAPACITY(16) answered {} unusable bytes", data.len()),
        })?;
        let vpd = |page| {
            expect_good(
                &conn,
                lun,
                scsi::inquiry(Some(page), 64),
                Outgoing::None,
                64,
            )
        };
        let limits = vpd(0xb0)
            .map(|p| scsi::parse_block_limits(&p))
            .unwrap_or_default();
        let (unmap, _) = vpd(0xb2)
            .map(|p| scsi::parse_provisioning(&p))
            .unwrap_or((false, false));
        let mut guard = guard;
        guard.0 = None;
        Ok(Session {
            conn,
            lun,
            capacity,
            limits,
            unmap_zeroes: unmap && capacity.thin && capacity.unmapped_reads_zero,
            write_same: AtomicBool::new(true),
        })
    }

    /// (block size, number of blocks) of the LUN.
    pub fn capacity(&self) -> (u32, u64) {
        (self.capacity.block_size, self.capacity.blocks)
    }

    fn size_bytes(&self) -> u64 {
        self.capacity.blocks * u64::from(self.capacity.block_size)
    }

    fn bs(&self) -> u64 {
        u64::from(self.capacity.block_size)
    }

    fn run(&self, cdb: [u8; 16], out: Outgoing, read_len: u32) -> Result<Vec<u8>, InitiatorError> {
        expect_good(&self.conn, self.lun, cdb, out, read_len)
    }

    /// Read `len` bytes at `offset` (both multiples of the block size).
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, InitiatorError> {
        check_range(
            "read",
            offset,
            len as u64,
            self.capacity.block_size,
            self.size_bytes(),
        )?;
        let mut out = Vec::with_capacity(len);
        let mut pos = offset;
        while pos < offset + len as u64 {
            let n = MAX_TRANSFER.min(offset + len as u64 - pos);
            let blocks = (n / self.bs()) as u32;
            let data = self.run(
                scsi::read16(pos / self.bs(), blocks),
                Outgoing::None,
                n as u32,
            )?;
            if data.len() as u64 != n {
                return Err(InitiatorError::Protocol {
                    peer: self.conn.peer,
                    detail: format!(
                        "READ(16) at offset {pos} returned {} of {n} bytes",
                        data.len()
                    ),
                });
            }
            out.extend_from_slice(&data);
            pos += n;
        }
        Ok(out)
    }

    /// Write `data` at `offset` (both multiples of the block size).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), InitiatorError> {
        check_range(
            "write",
            offset,
            data.len() as u64,
            self.capacity.block_size,
            self.size_bytes(),
        )?;
        for (i, chunk) in data.chunks(MAX_TRANSFER as usize).enumerate() {
            let pos = offset + i as u64 * MAX_TRANSFER;
            let blocks = (chunk.len() as u64 / self.bs()) as u32;
            self.run(
                scsi::write16(pos / self.bs(), blocks),
                Outgoing::Data(chunk),
                0,
            )?;
        }
        Ok(())
    }

    /// Make `len` bytes at `offset` read as zero: UNMAP where unmapped blocks
    /// read as zeros, else WRITE SAME(16), else plain writes of zeros.
    pub fn zero(&self, offset: u64, len: u64) -> Result<(), InitiatorError> {
        check_range(
            "zeroing",
            offset,
            len,
            self.capacity.block_size,
            self.size_bytes(),
        )?;
        let bs = self.bs();
        if self.unmap_zeroes {
            let per = match self.limits.max_unmap_blocks {
                0 => u64::from(u32::MAX),
                n => u64::from(n),
            } * bs;
            let mut pos = offset;
            while pos < offset + len {
                let n = per.min(offset + len - pos);
                let list = scsi::unmap_parameters(pos / bs, (n / bs) as u32);
                self.run(scsi::unmap(list.len() as u16), Outgoing::Data(&list), 0)?;
                pos += n;
            }
            return Ok(());
        }
        if self.write_same.load(Ordering::Relaxed) {
            match self.zero_by_write_same(offset, len) {
                Ok(()) => return Ok(()),
                Err(InitiatorError::CheckCondition { sense_key, asc, .. })
                    if (scsi::Sense {
                        key: sense_key,
                        asc,
                        ascq: 0,
                    })
                    .is_unsupported_command() =>
                {
                    // The target does not do WRITE SAME: zeros by WRITE from now on.
                    self.write_same.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let zeros = vec![0u8; MAX_TRANSFER.min(len) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = MAX_TRANSFER.min(offset + len - pos) as usize;
            self.write_at(pos, &zeros[..n])?;
            pos += n as u64;
        }
        Ok(())
    }

    fn zero_by_write_same(&self, offset: u64, len: u64) -> Result<(), InitiatorError> {
        let bs = self.bs();
        let per = match self.limits.max_write_same_blocks {
            0 => DEFAULT_WRITE_SAME / bs,
            n => n.min(u64::from(u32::MAX)),
        } * bs;
        let block = vec![0u8; bs as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = per.min(offset + len - pos);
            self.run(
                scsi::write_same16(pos / bs, (n / bs) as u32),
                Outgoing::Data(&block),
                0,
            )?;
            pos += n;
        }
        Ok(())
    }

    pub fn synchronize_cache(&self) -> Result<(), InitiatorError> {
        self.run(scsi::synchronize_cache16(), Outgoing::None, 0)
            .map(drop)
    }

    /// Log out and close the connection.
    pub fn logout(self) -> Result<(), InitiatorError> {
        self.conn.logout()
    }

    /// Drops the connection at once: commands in flight and later ones fail
    /// (an aborted deploy stops writing instead of running to the end).
    pub fn abort(&self) {
        self.conn.shutdown();
    }

    /// The target's name, as logged in to.
    pub fn target(&self) -> &str {
        &self.conn.target
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.shutdown();
    }
}

impl BlockWriter for Session {
    fn block_size(&self) -> u32 {
        self.capacity.block_size
    }
    fn size(&self) -> u64 {
        self.size_bytes()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), InitiatorError> {
        Session::write_at(self, offset, data)
    }
    fn zero(&self, offset: u64, len: u64) -> Result<(), InitiatorError> {
        Session::zero(self, offset, len)
    }
    fn flush(&self) -> Result<(), InitiatorError> {
        self.synchronize_cache()
    }
}

struct ShutdownOnDrop(Option<Arc<Connection>>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.shutdown();
        }
    }
}

/// Connect, log in and start the full feature phase.
pub(crate) fn open(
    portal: SocketAddr,
    plan: &LoginPlan,
) -> Result<Arc<Connection>, InitiatorError> {
    let mut stream = connect(portal)?;
    let done = login(&mut stream, portal, plan)?;
    Connection::start(
        stream,
        portal,
        plan.target_iqn.unwrap_or("discovery").to_string(),
        done.negotiated,
        done.cmd_sn,
        done.max_cmd_sn,
        done.exp_stat_sn,
    )
}

/// Run a command and insist on GOOD status; anything else is an error that
/// names the command, the LBA and the sense.
fn expect_good(
    conn: &Connection,
    lun: u64,
    cdb: [u8; 16],
    out: Outgoing,
    read_len: u32,
) -> Result<Vec<u8>, InitiatorError> {
    // A UNIT ATTENTION (power on, capacity changed...) reports an event, not a
    // failure of this command: the next try runs it. Commands here are idempotent.
    let mut tries = 0;
    let done: Completion = loop {
        let done = conn.command(lun, cdb, out, read_len)?;
        tries += 1;
        match done.sense {
            Some(sense)
                if done.status == 0x02 && sense.key == scsi::UNIT_ATTENTION && tries < 4 => {}
            _ => break done,
        }
    };
    let command = scsi::command_name(cdb[0]);
    if done.response != 0 {
        return Err(InitiatorError::TargetFailure {
            target: conn.target.clone(),
            command,
            response: done.response,
        });
    }
    match (done.status, done.sense) {
        (0x00, _) => Ok(done.data),
        (0x02, Some(sense)) => Err(InitiatorError::CheckCondition {
            target: conn.target.clone(),
            command,
            lba: scsi::command_lba(&cdb),
            sense_key: sense.key,
            key_name: scsi::sense_key_name(sense.key),
            asc: sense.asc,
            ascq: sense.ascq,
        }),
        (status, _) => Err(InitiatorError::ScsiStatus {
            target: conn.target.clone(),
            command,
            lba: scsi::command_lba(&cdb),
            status,
        }),
    }
}

/// The first LUN whose standard INQUIRY says "direct-access block device".
fn first_disk_lun(conn: &Connection) -> Result<u64, InitiatorError> {
    let report = expect_good(conn, 0, scsi::report_luns(4096), Outgoing::None, 4096)?;
    let mut luns = scsi::parse_report_luns(&report);
    if luns.is_empty() {
        luns.push(0);
    }
    for lun in luns {
        let inquiry = expect_good(conn, lun, scsi::inquiry(None, 96), Outgoing::None, 96)?;
        // Qualifier 0 (connected) and type 0 (disk).
        if inquiry.first() == Some(&0) && scsi::peripheral_type(&inquiry) == Some(0) {
            return Ok(lun);
        }
    }
    Err(InitiatorError::Protocol {
        peer: conn.peer,
        detail: format!("target {} reports no disk LUN", conn.target),
    })
}

//! iSCSI PDUs (RFC 7143 §11): a 48-byte Basic Header Segment, optional
//! Additional Header Segments, an optional CRC32C header digest, a data
//! segment padded to 4 bytes and an optional CRC32C data digest.
//!
//! [`Pdu::read_from`] never panics on wire data: every failure is a
//! [`PduError`] that says whether the stream is still in step (so the caller
//! can answer with a Reject and go on) and which Reject reason fits.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::digest;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Largest data segment the 24-bit DataSegmentLength field can describe.
pub const MAX_DATA_SEGMENT_LEN: u32 = (1 << 24) - 1;
/// The Initiator Task Tag of PDUs that do not belong to a task.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Which CRC32C digests are in effect on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl Digests {
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };
}

/// iSCSI opcodes (the low six bits of BHS byte 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    ReadyToTransfer = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_byte(byte: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match byte & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => SnackRequest,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => ReadyToTransfer,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }
}

/// Reject reasons (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandReject = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    LongOperationReject = 0x0a,
    WaitingForLogout = 0x0c,
}

/// What went wrong reading a PDU.
#[derive(Debug, Error)]
pub enum PduError {
    /// The peer closed the connection between PDUs.
    #[error("connection closed by the peer")]
    Closed,
    #[error("reading a PDU: {0}")]
    Io(#[from] io::Error),
    /// The header cannot be trusted, so neither can the stream position.
    #[error("header digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    HeaderDigest { received: u32, computed: u32 },
    #[error(
        "opcode {opcode:#04x} PDU carries a {length}-byte data segment, more than the {limit} bytes negotiated (MaxRecvDataSegmentLength)"
    )]
    DataTooLong {
        opcode: u8,
        length: u32,
        limit: u32,
        bhs: Box<[u8; BHS_LEN]>,
    },
    /// The whole PDU was read, only its data is damaged.
    #[error(
        "data digest mismatch on an opcode {opcode:#04x} PDU: received {received:#010x}, computed {computed:#010x}"
    )]
    DataDigest {
        opcode: u8,
        received: u32,
        computed: u32,
        bhs: Box<[u8; BHS_LEN]>,
    },
    #[error("unknown opcode {opcode:#04x}")]
    UnknownOpcode { opcode: u8, bhs: Box<[u8; BHS_LEN]> },
    #[error("opcode {opcode:#04x} ({name}) is not supported here")]
    Unsupported {
        opcode: u8,
        name: &'static str,
        bhs: Box<[u8; BHS_LEN]>,
    },
    #[error("opcode {opcode:#04x} PDU has an invalid {field}")]
    InvalidField {
        opcode: u8,
        field: &'static str,
        bhs: Box<[u8; BHS_LEN]>,
    },
}

impl PduError {
    /// The Reject reason to answer with and the header of the offending PDU,
    /// when the error is one the peer should hear about.
    pub fn reject(&self) -> Option<(RejectReason, &[u8; BHS_LEN])> {
        match self {
            PduError::DataTooLong { bhs, .. } => Some((RejectReason::ProtocolError, bhs)),
            PduError::DataDigest { bhs, .. } => Some((RejectReason::DataDigestError, bhs)),
            PduError::UnknownOpcode { bhs, .. } => Some((RejectReason::ProtocolError, bhs)),
            PduError::Unsupported { bhs, .. } => Some((RejectReason::CommandNotSupported, bhs)),
            PduError::InvalidField { bhs, .. } => Some((RejectReason::InvalidPduField, bhs)),
            PduError::Closed | PduError::Io(_) | PduError::HeaderDigest { .. } => None,
        }
    }

    /// True when the whole PDU was consumed, so the next read starts at the
    /// next PDU and the connection can go on after a Reject.
    pub fn stream_in_step(&self) -> bool {
        matches!(
            self,
            PduError::DataDigest { .. }
                | PduError::UnknownOpcode { .. }
                | PduError::Unsupported { .. }
                | PduError::InvalidField { .. }
        )
    }
}

// ---- serial number arithmetic (RFC 1982 with SERIAL_BITS = 32) ----

/// `a < b` in serial number arithmetic (pairs exactly 2^31 apart are neither).
pub fn serial_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// `a > b` in serial number arithmetic.
pub fn serial_gt(a: u32, b: u32) -> bool {
    serial_lt(b, a)
}

/// `a <= b` in serial number arithmetic.
pub fn serial_le(a: u32, b: u32) -> bool {
    a == b || serial_lt(a, b)
}

/// `a >= b` in serial number arithmetic.
pub fn serial_ge(a: u32, b: u32) -> bool {
    a == b || serial_gt(a, b)
}

// ---- typed headers ----

/// Login stages (CSG / NSG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginStage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl LoginStage {
    fn from_bits(bits: u8) -> Option<LoginStage> {
        match bits & 3 {
            0 => Some(LoginStage::Security),
            1 => Some(LoginStage::Operational),
            3 => Some(LoginStage::FullFeature),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub continue_: bool,
    pub current_stage: LoginStage,
    pub next_stage: LoginStage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_: bool,
    pub current_stage: LoginStage,
    pub next_stage: LoginStage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

/// Login status (class, detail) pairs (RFC 7143 §11.13.5).
pub mod login_status {
    pub const SUCCESS: (u8, u8) = (0x00, 0x00);
    pub const INITIATOR_ERROR: (u8, u8) = (0x02, 0x00);
    pub const AUTHENTICATION_FAILURE: (u8, u8) = (0x02, 0x01);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (0x02, 0x02);
    pub const NOT_FOUND: (u8, u8) = (0x02, 0x03);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (0x02, 0x05);
    pub const MISSING_PARAMETER: (u8, u8) = (0x02, 0x07);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (0x02, 0x0a);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (0x02, 0x0b);
    pub const TARGET_ERROR: (u8, u8) = (0x03, 0x00);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub continue_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextResponse {
    pub final_: bool,
    pub continue_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Task attribute of a SCSI command (SAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttribute {
    Untagged = 0,
    Simple = 1,
    Ordered = 2,
    HeadOfQueue = 3,
    Aca = 4,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attribute: TaskAttribute,
    pub lun: u64,
    pub itt: u32,
    pub expected_data_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResponse {
    /// Bidirectional read residual overflow / underflow (o, u).
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    /// Residual overflow / underflow (O, U).
    pub overflow: bool,
    pub underflow: bool,
    /// 0x00 command completed at target, 0x01 target failure.
    pub response: u8,
    /// SCSI status (0x00 GOOD, 0x02 CHECK CONDITION, ...).
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    pub final_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIn {
    pub final_: bool,
    pub acknowledge: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// S bit: this PDU carries the command's status.
    pub has_status: bool,
    pub status: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyToTransfer {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_length: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    /// 0 close the session, 1 close the connection, 2 remove for recovery.
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Reject: the data segment carries the rejected PDU's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// A decoded Basic Header Segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    ReadyToTransfer(ReadyToTransfer),
    Reject(Reject),
}

/// One PDU: header, raw AHS bytes (a multiple of 4) and the unpadded data segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub header: Header,
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

// ---- field access on a BHS (all offsets are constants below 48) ----

fn be16(bhs: &[u8; BHS_LEN], at: usize) -> u16 {
    u16::from_be_bytes([bhs[at], bhs[at + 1]])
}

fn be32(bhs: &[u8; BHS_LEN], at: usize) -> u32 {
    u32::from_be_bytes([bhs[at], bhs[at + 1], bhs[at + 2], bhs[at + 3]])
}

fn be64(bhs: &[u8; BHS_LEN], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&bhs[at..at + 8]);
    u64::from_be_bytes(bytes)
}

fn put16(bhs: &mut [u8; BHS_LEN], at: usize, value: u16) {
    bhs[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn put32(bhs: &mut [u8; BHS_LEN], at: usize, value: u32) {
    bhs[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

fn put64(bhs: &mut [u8; BHS_LEN], at: usize, value: u64) {
    bhs[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

fn bit(byte: u8, mask: u8) -> bool {
    byte & mask != 0
}

fn flag(set: bool, mask: u8) -> u8 {
    if set { mask } else { 0 }
}

/// The DataSegmentLength field of a raw BHS.
pub fn data_segment_length(bhs: &[u8; BHS_LEN]) -> u32 {
    u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]])
}

/// The Initiator Task Tag of a raw BHS.
pub fn initiator_task_tag(bhs: &[u8; BHS_LEN]) -> u32 {
    be32(bhs, 16)
}

impl Header {
    pub fn opcode(&self) -> Opcode {
        match self {
            Header::NopOut(_) => Opcode::NopOut,
            Header::ScsiCommand(_) => Opcode::ScsiCommand,
            Header::TaskMgmtRequest(_) => Opcode::TaskMgmtRequest,
            Header::LoginRequest(_) => Opcode::LoginRequest,
            Header::TextRequest(_) => Opcode::TextRequest,
            Header::DataOut(_) => Opcode::DataOut,
            Header::LogoutRequest(_) => Opcode::LogoutRequest,
            Header::NopIn(_) => Opcode::NopIn,
            Header::ScsiResponse(_) => Opcode::ScsiResponse,
            Header::TaskMgmtResponse(_) => Opcode::TaskMgmtResponse,
            Header::LoginResponse(_) => Opcode::LoginResponse,
            Header::TextResponse(_) => Opcode::TextResponse,
            Header::DataIn(_) => Opcode::DataIn,
            Header::LogoutResponse(_) => Opcode::LogoutResponse,
            Header::ReadyToTransfer(_) => Opcode::ReadyToTransfer,
            Header::Reject(_) => Opcode::Reject,
        }
    }

    /// Decodes a BHS (the length fields are the reader's business).
    pub fn parse(bhs: &[u8; BHS_LEN]) -> Result<Header, PduError> {
        let raw_opcode = bhs[0] & 0x3f;
        let immediate = bit(bhs[0], 0x40);
        let flags = bhs[1];
        let final_ = bit(flags, 0x80);
        let lun = be64(bhs, 8);
        let itt = be32(bhs, 16);
        let invalid = |field: &'static str| PduError::InvalidField {
            opcode: raw_opcode,
            field,
            bhs: Box::new(*bhs),
        };
        let unsupported = |name: &'static str| PduError::Unsupported {
            opcode: raw_opcode,
            name,
            bhs: Box::new(*bhs),
        };
        let Some(opcode) = Opcode::from_byte(raw_opcode) else {
            return Err(PduError::UnknownOpcode {
                opcode: raw_opcode,
                bhs: Box::new(*bhs),
            });
        };
        Ok(match opcode {
            Opcode::NopOut => Header::NopOut(NopOut {
                immediate,
                lun,
                itt,
                ttt: be32(bhs, 20),
                cmd_sn: be32(bhs, 24),
                exp_stat_sn: be32(bhs, 28),
            }),
            Opcode::ScsiCommand => {
                let attribute = match flags & 7 {
                    0 => TaskAttribute::Untagged,
                    1 => TaskAttribute::Simple,
                    2 => TaskAttribute::Ordered,
                    3 => TaskAttribute::HeadOfQueue,
                    4 => TaskAttribute::Aca,
                    _ => return Err(invalid("task attribute")),
                };
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&bhs[32..48]);
                Header::ScsiCommand(ScsiCommand {
                    immediate,
                    final_,
                    read: bit(flags, 0x40),
                    write: bit(flags, 0x20),
                    attribute,
                    lun,
                    itt,
                    expected_data_length: be32(bhs, 20),
                    cmd_sn: be32(bhs, 24),
                    exp_stat_sn: be32(bhs, 28),
                    cdb,
                })
            }
            Opcode::TaskMgmtRequest => Header::TaskMgmtRequest(TaskMgmtRequest {
                immediate,
                function: flags & 0x7f,
                lun,
                itt,
                referenced_task_tag: be32(bhs, 20),
                cmd_sn: be32(bhs, 24),
                exp_stat_sn: be32(bhs, 28),
                ref_cmd_sn: be32(bhs, 32),
                exp_data_sn: be32(bhs, 36),
            }),
            Opcode::LoginRequest | Opcode::LoginResponse => {
                let current_stage =
                    LoginStage::from_bits(flags >> 2).ok_or_else(|| invalid("current stage"))?;
                let next_stage =
                    LoginStage::from_bits(flags).ok_or_else(|| invalid("next stage"))?;
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&bhs[8..14]);
                let transit = final_;
                let continue_ = bit(flags, 0x40);
                if opcode == Opcode::LoginRequest {
                    Header::LoginRequest(LoginRequest {
                        transit,
                        continue_,
                        current_stage,
                        next_stage,
                        version_max: bhs[2],
                        version_min: bhs[3],
                        isid,
                        tsih: be16(bhs, 14),
                        itt,
                        cid: be16(bhs, 20),
                        cmd_sn: be32(bhs, 24),
                        exp_stat_sn: be32(bhs, 28),
                    })
                } else {
                    Header::LoginResponse(LoginResponse {
                        transit,
                        continue_,
                        current_stage,
                        next_stage,
                        version_max: bhs[2],
                        version_active: bhs[3],
                        isid,
                        tsih: be16(bhs, 14),
                        itt,
                        stat_sn: be32(bhs, 24),
                        exp_cmd_sn: be32(bhs, 28),
                        max_cmd_sn: be32(bhs, 32),
                        status_class: bhs[36],
                        status_detail: bhs[37],
                    })
                }
            }
            Opcode::TextRequest => Header::TextRequest(TextRequest {
                immediate,
                final_,
                continue_: bit(flags, 0x40),
                lun,
                itt,
                ttt: be32(bhs, 20),
                cmd_sn: be32(bhs, 24),
                exp_stat_sn: be32(bhs, 28),
            }),
            Opcode::DataOut => Header::DataOut(DataOut {
                final_,
                lun,
                itt,
                ttt: be32(bhs, 20),
                exp_stat_sn: be32(bhs, 28),
                data_sn: be32(bhs, 36),
                buffer_offset: be32(bhs, 40),
            }),
            Opcode::LogoutRequest => Header::LogoutRequest(LogoutRequest {
                immediate,
                reason: flags & 0x7f,
                itt,
                cid: be16(bhs, 20),
                cmd_sn: be32(bhs, 24),
                exp_stat_sn: be32(bhs, 28),
            }),
            Opcode::NopIn => Header::NopIn(NopIn {
                lun,
                itt,
                ttt: be32(bhs, 20),
                stat_sn: be32(bhs, 24),
                exp_cmd_sn: be32(bhs, 28),
                max_cmd_sn: be32(bhs, 32),
            }),
            Opcode::ScsiResponse => Header::ScsiResponse(ScsiResponse {
                bidi_overflow: bit(flags, 0x10),
                bidi_underflow: bit(flags, 0x08),
                overflow: bit(flags, 0x04),
                underflow: bit(flags, 0x02),
                response: bhs[2],
                status: bhs[3],
                itt,
                snack_tag: be32(bhs, 20),
                stat_sn: be32(bhs, 24),
                exp_cmd_sn: be32(bhs, 28),
                max_cmd_sn: be32(bhs, 32),
                exp_data_sn: be32(bhs, 36),
                bidi_residual: be32(bhs, 40),
                residual: be32(bhs, 44),
            }),
            Opcode::TaskMgmtResponse => Header::TaskMgmtResponse(TaskMgmtResponse {
                response: bhs[2],
                itt,
                stat_sn: be32(bhs, 24),
                exp_cmd_sn: be32(bhs, 28),
                max_cmd_sn: be32(bhs, 32),
            }),
            Opcode::TextResponse => Header::TextResponse(TextResponse {
                final_,
                continue_: bit(flags, 0x40),
                lun,
                itt,
                ttt: be32(bhs, 20),
                stat_sn: be32(bhs, 24),
                exp_cmd_sn: be32(bhs, 28),
                max_cmd_sn: be32(bhs, 32),
            }),
            Opcode::DataIn => Header::DataIn(DataIn {
                final_,
                acknowledge: bit(flags, 0x40),
                overflow: bit(flags, 0x04),
                underflow: bit(flags, 0x02),
                has_status: bit(flags, 0x01),
                status: bhs[3],
                lun,
                itt,
                ttt: be32(bhs, 20),
                stat_sn: be32(bhs, 24),
                exp_cmd_sn: be32(bhs, 28),
                max_cmd_sn: be32(bhs, 32),
                data_sn: be32(bhs, 36),
                buffer_offset: be32(bhs, 40),
                residual: be32(bhs, 44),
            }),
            Opcode::LogoutResponse => Header::LogoutResponse(LogoutResponse {
                response: bhs[2],
                itt,
                stat_sn: be32(bhs, 24),
                exp_cmd_sn: be32(bhs, 28),
                max_cmd_sn: be32(bhs, 32),
                time2wait: be16(bhs, 40),
                time2retain: be16(bhs, 42),
            }),
            Opcode::ReadyToTransfer => Header::ReadyToTransfer(ReadyToTransfer {
                lun,
                itt,
                ttt: be32(bhs, 20),
                stat_sn: be32(bhs, 24),
                exp_cmd_sn: be32(bhs, 28),
                max_cmd_sn: be32(bhs, 32),
                r2t_sn: be32(bhs, 36),
                buffer_offset: be32(bhs, 40),
                desired_length: be32(bhs, 44),
            }),
            Opcode::Reject => Header::Reject(Reject {
                reason: bhs[2],
                stat_sn: be32(bhs, 24),
                exp_cmd_sn: be32(bhs, 28),
                max_cmd_sn: be32(bhs, 32),
                data_sn: be32(bhs, 36),
            }),
            Opcode::SnackRequest => return Err(unsupported("SNACK")),
            Opcode::AsyncMessage => return Err(unsupported("Asynchronous Message")),
        })
    }

    /// Encodes the header into a BHS; TotalAHSLength and DataSegmentLength
    /// are left zero for [`Pdu::write_to`] to fill in.
    pub fn encode(&self) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        match self {
            Header::NopOut(h) => {
                b[0] = Opcode::NopOut as u8 | flag(h.immediate, 0x40);
                b[1] = 0x80;
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::ScsiCommand(h) => {
                b[0] = Opcode::ScsiCommand as u8 | flag(h.immediate, 0x40);
                b[1] = flag(h.final_, 0x80)
                    | flag(h.read, 0x40)
                    | flag(h.write, 0x20)
                    | h.attribute as u8;
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.expected_data_length);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
                b[32..48].copy_from_slice(&h.cdb);
            }
            Header::TaskMgmtRequest(h) => {
                b[0] = Opcode::TaskMgmtRequest as u8 | flag(h.immediate, 0x40);
                b[1] = 0x80 | (h.function & 0x7f);
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.referenced_task_tag);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
                put32(&mut b, 32, h.ref_cmd_sn);
                put32(&mut b, 36, h.exp_data_sn);
            }
            Header::LoginRequest(h) => {
                // Login requests are always immediate.
                b[0] = Opcode::LoginRequest as u8 | 0x40;
                b[1] = flag(h.transit, 0x80)
                    | flag(h.continue_, 0x40)
                    | (h.current_stage as u8) << 2
                    | h.next_stage as u8;
                b[2] = h.version_max;
                b[3] = h.version_min;
                b[8..14].copy_from_slice(&h.isid);
                put16(&mut b, 14, h.tsih);
                put32(&mut b, 16, h.itt);
                put16(&mut b, 20, h.cid);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::LoginResponse(h) => {
                b[0] = Opcode::LoginResponse as u8;
                b[1] = flag(h.transit, 0x80)
                    | flag(h.continue_, 0x40)
                    | (h.current_stage as u8) << 2
                    | h.next_stage as u8;
                b[2] = h.version_max;
                b[3] = h.version_active;
                b[8..14].copy_from_slice(&h.isid);
                put16(&mut b, 14, h.tsih);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                b[36] = h.status_class;
                b[37] = h.status_detail;
            }
            Header::TextRequest(h) => {
                b[0] = Opcode::TextRequest as u8 | flag(h.immediate, 0x40);
                b[1] = flag(h.final_, 0x80) | flag(h.continue_, 0x40);
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::TextResponse(h) => {
                b[0] = Opcode::TextResponse as u8;
                b[1] = flag(h.final_, 0x80) | flag(h.continue_, 0x40);
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
            }
            Header::DataOut(h) => {
                b[0] = Opcode::DataOut as u8;
                b[1] = flag(h.final_, 0x80);
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 28, h.exp_stat_sn);
                put32(&mut b, 36, h.data_sn);
                put32(&mut b, 40, h.buffer_offset);
            }
            Header::LogoutRequest(h) => {
                b[0] = Opcode::LogoutRequest as u8 | flag(h.immediate, 0x40);
                b[1] = 0x80 | (h.reason & 0x7f);
                put32(&mut b, 16, h.itt);
                put16(&mut b, 20, h.cid);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::NopIn(h) => {
                b[0] = Opcode::NopIn as u8;
                b[1] = 0x80;
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
            }
            Header::ScsiResponse(h) => {
                b[0] = Opcode::ScsiResponse as u8;
                b[1] = 0x80
                    | flag(h.bidi_overflow, 0x10)
                    | flag(h.bidi_underflow, 0x08)
                    | flag(h.overflow, 0x04)
                    | flag(h.underflow, 0x02);
                b[2] = h.response;
                b[3] = h.status;
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.snack_tag);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.exp_data_sn);
                put32(&mut b, 40, h.bidi_residual);
                put32(&mut b, 44, h.residual);
            }
            Header::TaskMgmtResponse(h) => {
                b[0] = Opcode::TaskMgmtResponse as u8;
                b[1] = 0x80;
                b[2] = h.response;
                put32(&mut b, 16, h.itt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
            }
            Header::DataIn(h) => {
                b[0] = Opcode::DataIn as u8;
                b[1] = flag(h.final_, 0x80)
                    | flag(h.acknowledge, 0x40)
                    | flag(h.overflow, 0x04)
                    | flag(h.underflow, 0x02)
                    | flag(h.has_status, 0x01);
                if h.has_status {
                    b[3] = h.status;
                }
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.data_sn);
                put32(&mut b, 40, h.buffer_offset);
                put32(&mut b, 44, h.residual);
            }
            Header::LogoutResponse(h) => {
                b[0] = Opcode::LogoutResponse as u8;
                b[1] = 0x80;
                b[2] = h.response;
                put32(&mut b, 16, h.itt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put16(&mut b, 40, h.time2wait);
                put16(&mut b, 42, h.time2retain);
            }
            Header::ReadyToTransfer(h) => {
                b[0] = Opcode::ReadyToTransfer as u8;
                b[1] = 0x80;
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.r2t_sn);
                put32(&mut b, 40, h.buffer_offset);
                put32(&mut b, 44, h.desired_length);
            }
            Header::Reject(h) => {
                b[0] = Opcode::Reject as u8;
                b[1] = 0x80;
                b[2] = h.reason;
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.data_sn);
            }
        }
        b
    }
}

/// Number of zero bytes that pad `len` to a multiple of 4.
pub fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` when the stream ended
/// before the first byte.
fn read_exact_or_eof<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {filled} bytes of a PDU header"),
                ));
            }
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

impl Pdu {
    pub fn new(header: Header, data: Vec<u8>) -> Pdu {
        Pdu {
            header,
            ahs: Vec::new(),
            data,
        }
    }

    /// Reads one PDU. `max_data_len` is this side's MaxRecvDataSegmentLength:
    /// longer data segments are refused before they are read.
    pub fn read_from<R: Read + ?Sized>(
        reader: &mut R,
        digests: &Digests,
        max_data_len: u32,
    ) -> Result<Pdu, PduError> {
        let mut bhs = [0u8; BHS_LEN];
        if !read_exact_or_eof(reader, &mut bhs)? {
            return Err(PduError::Closed);
        }
        let mut ahs = vec![0u8; usize::from(bhs[4]) * 4];
        reader.read_exact(&mut ahs)?;
        if digests.header {
            let mut wire = [0u8; 4];
            reader.read_exact(&mut wire)?;
            let received = digest::from_wire(wire);
            let computed = digest::crc32c_append(digest::crc32c(&bhs), &ahs);
            if received != computed {
                return Err(PduError::HeaderDigest { received, computed });
            }
        }
        let length = data_segment_length(&bhs);
        if length > max_data_len {
            return Err(PduError::DataTooLong {
                opcode: bhs[0] & 0x3f,
                length,
                limit: max_data_len,
                bhs: Box::new(bhs),
            });
        }
        // length < 2^24 fits every usize this builds for.
        let length = length as usize;
        let mut data = vec![0u8; length + padding(length)];
        reader.read_exact(&mut data)?;
        if digests.data && length > 0 {
            let mut wire = [0u8; 4];
            reader.read_exact(&mut wire)?;
            let received = digest::from_wire(wire);
            // The data digest covers the padding too.
            let computed = digest::crc32c(&data);
            if received != computed {
                return Err(PduError::DataDigest {
                    opcode: bhs[0] & 0x3f,
                    received,
                    computed,
                    bhs: Box::new(bhs),
                });
            }
        }
        data.truncate(length);
        let header = Header::parse(&bhs)?;
        Ok(Pdu { header, ahs, data })
    }

    /// Writes the PDU with the digests in effect. The AHS must be a multiple
    /// of 4 bytes and the data shorter than 2^24 bytes.
    pub fn write_to<W: Write + ?Sized>(&self, writer: &mut W, digests: &Digests) -> io::Result<()> {
        let mut bhs = self.header.encode();
        let ahs_words = self.ahs.len() / 4;
        if !self.ahs.len().is_multiple_of(4) || ahs_words > 255 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "AHS of {} bytes is not a multiple of 4 below 1024",
                    self.ahs.len()
                ),
            ));
        }
        if self.data.len() > MAX_DATA_SEGMENT_LEN as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("data segment of {} bytes exceeds 2^24 - 1", self.data.len()),
            ));
        }
        bhs[4] = ahs_words as u8;
        let length = (self.data.len() as u32).to_be_bytes();
        bhs[5..8].copy_from_slice(&length[1..]);

        let mut head =
            Vec::with_capacity(BHS_LEN + self.ahs.len() + 8 + self.data.len().min(16384));
        head.extend_from_slice(&bhs);
        head.extend_from_slice(&self.ahs);
        if digests.header {
            let crc = digest::crc32c(&head);
            head.extend_from_slice(&digest::to_wire(crc));
        }
        let pad = [0u8; 3];
        let pad = &pad[..padding(self.data.len())];
        if self.data.len() <= 16 * 1024 {
            // Small PDUs go out in one write.
            head.extend_from_slice(&self.data);
            head.extend_from_slice(pad);
        } else {
            writer.write_all(&head)?;
            head.clear();
            writer.write_all(&self.data)?;
            head.extend_from_slice(pad);
        }
        if digests.data && !self.data.is_empty() {
            let crc = digest::crc32c_append(digest::crc32c(&self.data), pad);
            head.extend_from_slice(&digest::to_wire(crc));
        }
        writer.write_all(&head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_headers() -> Vec<Header> {
        vec![
            Header::LoginRequest(LoginRequest {
                transit: true,
                continue_: false,
                current_stage: LoginStage::Security,
                next_stage: LoginStage::Operational,
                version_max: 0,
                version_min: 0,
                isid: [0x80, 1, 2, 3, 4, 5],
                tsih: 0,
                itt: 7,
                cid: 1,
                cmd_sn: 42,
                exp_stat_sn: 0,
            }),
            Header::LoginResponse(LoginResponse {
                transit: true,
                continue_: false,
                current_stage: LoginStage::Operational,
                next_stage: LoginStage::FullFeature,
                version_max: 0,
                version_active: 0,
                isid: [0x80, 1, 2, 3, 4, 5],
                tsih: 9,
                itt: 7,
                stat_sn: 1,
                exp_cmd_sn: 42,
                max_cmd_sn: 73,
                status_class: 2,
                status_detail: 1,
            }),
            Header::ScsiCommand(ScsiCommand {
                immediate: false,
                final_: true,
                read: false,
                write: true,
                attribute: TaskAttribute::Simple,
                lun: 0,
                itt: 0xdead_beef,
                expected_data_length: 4096,
                cmd_sn: 100,
                exp_stat_sn: 5,
                cdb: [0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
            }),
            Header::DataIn(DataIn {
                final_: true,
                acknowledge: false,
                overflow: false,
                underflow: true,
                has_status: true,
                status: 0,
                lun: 0,
                itt: 3,
                ttt: RESERVED_TAG,
                stat_sn: 10,
                exp_cmd_sn: 11,
                max_cmd_sn: 42,
                data_sn: 2,
                buffer_offset: 16384,
                residual: 512,
            }),
            Header::ReadyToTransfer(ReadyToTransfer {
                lun: 0,
                itt: 3,
                ttt: 77,
                stat_sn: 10,
                exp_cmd_sn: 11,
                max_cmd_sn: 42,
                r2t_sn: 1,
                buffer_offset: 65536,
                desired_length: 262144,
            }),
            Header::Reject(Reject {
                reason: RejectReason::ProtocolError as u8,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                data_sn: 0,
            }),
            Header::LogoutResponse(LogoutResponse {
                response: 0,
                itt: 9,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                time2wait: 2,
                time2retain: 20,
            }),
            Header::TextRequest(TextRequest {
                immediate: true,
                final_: true,
                continue_: false,
                lun: 0,
                itt: 4,
                ttt: RESERVED_TAG,
                cmd_sn: 8,
                exp_stat_sn: 2,
            }),
        ]
    }

    #[test]
    fn round_trip_with_and_without_digests() {
        let both = Digests {
            header: true,
            data: true,
        };
        for digests in [Digests::NONE, both] {
            for (i, header) in sample_headers().into_iter().enumerate() {
                let pdu = Pdu::new(header, vec![0xa5; i * 3]);
                let mut wire = Vec::new();
                pdu.write_to(&mut wire, &digests).unwrap();
                assert_eq!(wire.len() % 4, 0);
                let back = Pdu::read_from(&mut wire.as_slice(), &digests, 8192).unwrap();
                assert_eq!(back, pdu);
            }
        }
        // A large data segment takes the separate-write path.
        let pdu = Pdu::new(sample_headers().remove(3), vec![7; 65537]);
        let mut wire = Vec::new();
        pdu.write_to(&mut wire, &both).unwrap();
        let back = Pdu::read_from(&mut wire.as_slice(), &both, 1 << 20).unwrap();
        assert_eq!(back, pdu);
    }

    #[test]
    fn refuses_data_over_the_limit_before_reading_it() {
        let pdu = Pdu::new(
            Header::NopOut(NopOut {
                immediate: true,
                lun: 0,
                itt: 1,
                ttt: RESERVED_TAG,
                cmd_sn: 1,
                exp_stat_sn: 1,
            }),
            vec![0; 9000],
        );
        let mut wire = Vec::new();
        pdu.write_to(&mut wire, &Digests::NONE).unwrap();
        let err = Pdu::read_from(&mut wire.as_slice(), &Digests::NONE, 8192).unwrap_err();
        assert!(matches!(
            err,
            PduError::DataTooLong {
                length: 9000,
                limit: 8192,
                ..
            }
        ));
        assert!(!err.stream_in_step());
        assert_eq!(err.reject().unwrap().0, RejectReason::ProtocolError);
    }

    #[test]
    fn bad_digests_are_reported() {
        let both = Digests {
            header: true,
            data: true,
        };
        let pdu = Pdu::new(sample_headers().remove(2), vec![1, 2, 3, 4, 5]);
        let mut wire = Vec::new();
        pdu.write_to(&mut wire, &both).unwrap();
        let mut bad_data = wire.clone();
        bad_data[BHS_LEN + 4] ^= 1;
        let err = Pdu::read_from(&mut bad_data.as_slice(), &both, 8192).unwrap_err();
        assert!(matches!(err, PduError::DataDigest { .. }), "{err}");
        assert_eq!(err.reject().unwrap().0, RejectReason::DataDigestError);
        let mut bad_header = wire;
        bad_header[20] ^= 1;
        let err = Pdu::read_from(&mut bad_header.as_slice(), &both, 8192).unwrap_err();
        assert!(matches!(err, PduError::HeaderDigest { .. }), "{err}");
    }

    #[test]
    fn unknown_opcode_consumes_the_pdu_and_asks_for_a_reject() {
        let mut wire = vec![0u8; BHS_LEN];
        wire[0] = 0x1e;
        wire[7] = 3; // 3 data bytes + 1 pad
        wire.extend_from_slice(&[9, 9, 9, 0]);
        let mut reader = wire.as_slice();
        let err = Pdu::read_from(&mut reader, &Digests::NONE, 8192).unwrap_err();
        assert!(matches!(err, PduError::UnknownOpcode { opcode: 0x1e, .. }));
        assert!(err.stream_in_step());
        assert!(reader.is_empty());
        assert!(matches!(
            Pdu::read_from(&mut reader, &Digests::NONE, 8192),
            Err(PduError::Closed)
        ));
    }

    #[test]
    fn truncated_pdu_is_an_io_error() {
        let wire = [0u8; 20];
        assert!(matches!(
            Pdu::read_from(&mut &wire[..], &Digests::NONE, 8192),
            Err(PduError::Io(_))
        ));
    }

    #[test]
    fn serial_number_arithmetic_wraps() {
        assert!(serial_lt(1, 2));
        assert!(serial_lt(0xffff_fff0, 5));
        assert!(serial_gt(5, 0xffff_fff0));
        assert!(!serial_lt(5, 5) && serial_le(5, 5) && serial_ge(5, 5));
        // Exactly 2^31 apart is undefined: neither less nor greater.
        assert!(!serial_lt(0, 0x8000_0000) && !serial_gt(0, 0x8000_0000));
    }

    /// Deterministic xorshift so the test is reproducible without a crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics_and_errors_consistently() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let both = Digests {
            header: true,
            data: true,
        };
        let mut valid = Vec::new();
        for (i, header) in sample_headers().into_iter().enumerate() {
            for digests in [Digests::NONE, both] {
                let mut wire = Vec::new();
                Pdu::new(header.clone(), vec![i as u8; i * 5])
                    .write_to(&mut wire, &digests)
                    .unwrap();
                valid.push((wire, digests));
            }
        }
        let mut parsed = 0;
        for round in 0..20_000 {
            let (mut wire, digests) = valid[round % valid.len()].clone();
            if round.is_multiple_of(5) {
                let len = (rng.next() % 200) as usize;
                wire = (0..len).map(|_| rng.next() as u8).collect();
            } else {
                for _ in 0..=(rng.next() % 4) {
                    let at = (rng.next() as usize) % wire.len();
                    wire[at] ^= 1 << (rng.next() % 8);
                }
                if rng.next().is_multiple_of(4) {
                    wire.truncate((rng.next() as usize) % wire.len());
                }
            }
            let mut reader = wire.as_slice();
            match Pdu::read_from(&mut reader, &digests, 4096) {
                Ok(pdu) => {
                    parsed += 1;
                    // Whatever parses must re-encode to a PDU that parses the same.
                    let mut again = Vec::new();
                    pdu.write_to(&mut again, &digests).unwrap();
                    let back = Pdu::read_from(&mut again.as_slice(), &digests, 4096).unwrap();
                    assert_eq!(back.data, pdu.data);
                    assert_eq!(back.header.opcode(), pdu.header.opcode());
                }
                Err(err) => {
                    if err.stream_in_step() {
                        assert!(err.reject().is_some(), "{err}");
                    }
                    assert!(!err.to_string().is_empty());
                }
            }
        }
        assert!(parsed > 0, "no mutated PDU parsed at all");
    }
}

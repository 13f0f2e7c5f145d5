//! iSCSI (RFC 7143) in pure Rust: the protocol core both ends share, the
//! target the deploy agent runs, and (in `initiator/`) the conductor's side.
//!
//! ```text
//! pdu.rs      48-byte BHS + AHS + digests + padded data segment; typed PDUs;
//!             serial-number arithmetic (RFC 1982) for CmdSN/StatSN
//! text.rs     key=value\0 text encoding and operational parameter negotiation
//!             (RFC 7143 §13) into a `Negotiated` both sides use
//! chap.rs     CHAP with MD5 (RFC 1994 as iSCSI uses it), hex/base64 values,
//!             challenges, constant-time verification, mutual CHAP
//! digest.rs   CRC32C header/data digests
//! scsi/       CDB decoding and SCSI responses over a file or block device
//! target/     the threaded TCP target: login, discovery, full feature phase
//! ```

pub mod chap;
pub mod digest;
pub mod initiator;
pub mod pdu;
pub mod scsi;
pub mod target;
pub mod text;

//! What can go wrong between the conductor and a remote disk.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    #[error("connecting to iSCSI portal {portal}: {source}")]
    Connect {
        portal: SocketAddr,
        source: std::io::Error,
    },
    #[error("iSCSI connection to {peer}: {source}")]
    Io {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("iSCSI connection to {peer} lost: {detail}")]
    ConnectionLost { peer: SocketAddr, detail: String },
    #[error("iSCSI target {peer} broke the protocol: {detail}")]
    Protocol { peer: SocketAddr, detail: String },
    #[error("CHAP authentication with {target} at {peer} failed: {detail}")]
    Authentication {
        peer: SocketAddr,
        target: String,
        detail: String,
    },
    #[error(
        "login to {target} at {peer} rejected: status class {class:#04x} detail {detail:#04x} ({meaning})"
    )]
    LoginRejected {
        peer: SocketAddr,
        target: String,
        class: u8,
        detail: u8,
        meaning: &'static str,
    },
    #[error("negotiating with {peer}: {detail}")]
    Negotiation { peer: SocketAddr, detail: String },
    #[error(
        "{command} at LBA {lba} on {target}: CHECK CONDITION, sense key {sense_key:#x} ({key_name}), ASC/ASCQ {asc:#04x}/{ascq:#04x}"
    )]
    CheckCondition {
        target: String,
        command: &'static str,
        lba: u64,
        sense_key: u8,
        key_name: &'static str,
        asc: u8,
        ascq: u8,
    },
    #[error("{command} at LBA {lba} on {target}: SCSI status {status:#04x}")]
    ScsiStatus {
        target: String,
        command: &'static str,
        lba: u64,
        status: u8,
    },
    #[error("{command} on {target}: iSCSI response {response:#04x} (target failure)")]
    TargetFailure {
        target: String,
        command: &'static str,
        response: u8,
    },
    #[error(
        "{what} of {len} bytes at offset {offset} is not aligned to the {block_size}-byte blocks of the disk"
    )]
    Unaligned {
        what: &'static str,
        offset: u64,
        len: u64,
        block_size: u32,
    },
    #[error("{what} of {len} bytes at offset {offset} ends past the {size}-byte disk")]
    OutOfRange {
        what: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("image {path} ({image_size} bytes) does not fit the {disk_size}-byte disk")]
    ImageTooLarge {
        path: PathBuf,
        image_size: u64,
        disk_size: u64,
    },
    #[error(transparent)]
    ImageOpen(#[from] crate::format::FormatError),
    #[error("reading guest offset {offset} of {path}: {source}")]
    ImageRead {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    #[error("{what} on {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the session to {target} is closed: {reason}")]
    SessionClosed { target: String, reason: String },
}

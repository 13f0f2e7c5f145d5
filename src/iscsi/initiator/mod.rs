//! The conductor's side of the iSCSI deploy path: log in to the target the
//! deploy agent exports, write the image onto its LUN, log out.
//!
//! ```text
//! error.rs      InitiatorError
//! writer.rs     BlockWriter: what the image writer targets (a LUN, or a file in tests)
//! image.rs      the image as ordered data / zero pieces, decoded on rayon; write_image_to
//! login.rs      security stage (CHAP, mutual CHAP) and operational negotiation
//! connection.rs full feature phase: commands in flight tracked by ITT, CmdSN window,
//!               R2T / Data-Out, Data-In, NOP keepalive, logout
//! scsi.rs       CDBs and the decoding of capacity, VPD pages and sense data
//! session.rs    Session: the public read / write / zero / sync API on one LUN
//! discovery.rs  SendTargets=All
//! disk.rs       SessionDisk: the config drive writer's DiskIo over a session
//! ```

mod connection;
mod discovery;
mod disk;
mod error;
pub mod image;
mod login;
pub mod scsi;
mod session;
mod writer;

pub use discovery::{DiscoveredTarget, discover};
pub use disk::SessionDisk;
pub use error::InitiatorError;
pub use image::write_image_to;
pub use session::{LoginOptions, Session};
pub use writer::{BlockWriter, FileDisk};

/// What `write_image` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageWriteReport {
    /// Bytes sent as WRITE data.
    pub bytes_written: u64,
    /// Bytes zeroed (UNMAP / WRITE SAME, or written zeros).
    pub bytes_zeroed: u64,
    /// The image's guest size.
    pub virtual_size: u64,
}

/// Write IMAGE (qcow2 decoded on the fly, or raw) onto the session's LUN:
/// allocated data only, zeroing the rest unless `disk_erased`; the first MiB
/// last; then SYNCHRONIZE CACHE. `progress(done, total)` counts the image's data bytes.
pub fn write_image(
    session: &Session,
    image: &std::path::Path,
    disk_erased: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ImageWriteReport, InitiatorError> {
    write_image_to(session, image, disk_erased, progress)
}

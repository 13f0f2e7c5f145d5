//! The conductor's side of the iSCSI deploy path: log in to the target the
//! deploy agent exports, write the image onto its LUN, log out.
//!
//! ```text
//! error.rs      InitiatorError
//! writer.rs     BlockWriter: what the image writer targets (a LUN, or a file in tests)
//! image.rs      the image as ordered data / zero pieces, decoded on rayon; write_image_to
//! ```

mod error;
pub mod image;
mod writer;

pub use error::InitiatorError;
pub use image::write_image_to;
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

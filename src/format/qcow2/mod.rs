//! QEMU's qcow2 format, versions 2 and 3: reader, streaming writer, checker and
//! in-place writer.

mod alloc;
pub mod check;
pub mod compress;
pub mod header;
pub mod l2;
pub mod reader;
mod refcount_update;
pub mod rw;
pub mod writer;

pub use header::{CompressionType, Header, MAGIC};
pub use reader::{Backing, Qcow2Image};
pub use rw::{Qcow2RwError, WritableQcow2};
pub use writer::{ClusterData, Qcow2Writer, WriterOptions};

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("not a qcow2 image (no QFI\\xfb magic)")]
    NotQcow2,
    #[error("unsupported qcow2 image: {0}")]
    Unsupported(String),
    #[error("corrupt qcow2 image: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Backing(String),
    #[error("invalid writer option: {0}")]
    Option(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

//! Small helpers shared by every capability.

pub mod atomic_file;
pub mod bigbuf;
pub mod civil;
pub mod disk_file;
pub mod interrupt;
pub mod progress;

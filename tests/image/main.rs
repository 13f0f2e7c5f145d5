//! Integration tests of `kiln image convert / info / check`, judged against qemu-img.

mod common;
mod corrupt;
mod qcow2_read;
mod qcow2_write;

//! Integration tests of disk image formats and `kiln image convert / info / check`,
//! judged against the reference tools (qemu-img, qemu-io, sgdisk, fsck.fat, mtools).

mod common;
mod corrupt;
mod fat;
mod gpt;
mod interrupt;
mod qcow2_read;
mod qcow2_write;

//! Integration tests of `kiln initrd ls / extract / pack / rm` and `repack`, judged
//! against GNU cpio, the compressor CLIs (gzip, zstd, xz, lz4, bzip2) and Debian's
//! initramfs-tools (lsinitramfs, unmkinitramfs) on the installed kernel's initrd.

mod boot;
mod common;
mod corrupt;
mod debian;
mod determinism;
mod gnu;
mod safety;

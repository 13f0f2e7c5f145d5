//! `kiln initrd`: read, repack and build Linux initramfs images and add drivers,
//! programs and packages to them.

pub mod package;
pub mod staging;

//! `kiln initrd`: read, repack and build Linux initramfs images and add drivers,
//! programs and packages to them.

pub mod package;
pub mod elf;
pub mod elfparse;
pub mod files;
pub mod firmware;
pub mod glob;
pub mod hostpath;
pub mod modinfo;
pub mod modules;
pub mod staging;

//! Disk layouts, filesystems from trees and image outputs, checked with the
//! reference tools (sgdisk, sfdisk, e2fsck, debugfs, fsck.fat, mtools, xfs_repair,
//! blkid, qemu-img, tar, unsquashfs, sha256sum). Needs root (device nodes, owners).

mod assemble;
mod common;
mod layout;
mod outputs;

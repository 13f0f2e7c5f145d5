//! The shipped OS and feature elements, run the way a DIB-style build runs them
//! but without the pipeline: host-phase scripts with bash and the build's
//! variables, chroot-phase scripts with `chroot ROOT` into a busybox-static
//! tree (or a real Debian root made by mmdebstrap), hooks assembled by kiln.
//! Results are judged by what the scripts leave in the tree, compared against
//! the inputs (trees, tarballs, disk images made with GNU tar, sgdisk, mke2fs).

#[path = "elements_shipped/base_image.rs"]
mod base_image;
#[path = "elements_shipped/common.rs"]
mod common;
#[path = "elements_shipped/debian.rs"]
mod debian;
#[path = "elements_shipped/features.rs"]
mod features;
#[path = "elements_shipped/recipes.rs"]
mod recipes;
#[path = "elements_shipped/rootfs_tarball.rs"]
mod rootfs_tarball;

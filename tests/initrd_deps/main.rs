//! `kiln initrd add` dependency resolvers against the real tools: ldd/readelf for
//! programs (and chroot runs of the result), modprobe/modinfo/depmod for kernel
//! modules, and the file system itself for `--file`.

mod util;

mod binary;
mod files;
mod modules;

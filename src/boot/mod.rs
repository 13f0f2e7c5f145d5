//! Boot loaders for disk images, installed without loop devices, mounts or
//! grub-install, in two explicit steps:
//!
//! 1. [`stage_tree`], before the filesystems are made: writes /boot/grub/grub.cfg
//!    and GRUB's module folders, and the ESP's files under the tree's ESP folder
//!    (`boot/efi`: GRUB's or systemd-boot's BOOTX64.EFI, loader entries, and for
//!    systemd-boot a copy of the kernel and initrd). For BIOS it also builds GRUB's
//!    core.img and returns it with boot.img as [`BiosCode`].
//! 2. [`install_bios`], after the disk file is assembled: core.img goes into the
//!    GPT BIOS boot partition or the gap after the MBR, boot.img into the MBR's
//!    code area (partition table and disk signature kept).
//!
//! GRUB images are made by the host's `grub-mkimage` from the image's own GRUB
//! files (`TREE/usr/lib/grub/PLATFORM`) or, when the image has none, the host's.
//! Every module the boot path needs is built into the image, and the whole module
//! folder is also copied to /boot/grub/PLATFORM so `insmod` in a hand-edited
//! grub.cfg works. The built-in early config finds the root filesystem by UUID and
//! sets `prefix=($root)/boot/grub`; GRUB's normal mode then reads grub.cfg there.

mod embed_area;
mod grub;
mod grub_cfg;
mod install;
mod mkimage;
pub mod pc_bios;
mod sources;
mod systemd_boot;
mod tree_files;

use std::path::{Path, PathBuf};

use uuid::Uuid;

pub use embed_area::{AreaKind, EmbedArea};
pub use install::{BiosPlacement, install_bios};
pub use sources::GrubPlatform;

use crate::format::gpt::GptError;
use crate::initrd::hostpath::WalkError;

/// The loader a BIOS runs from the MBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiosLoader {
    /// GRUB i386-pc.
    Grub,
}

/// The loader UEFI firmware runs from the ESP (as EFI/BOOT/BOOTX64.EFI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EfiLoader {
    /// GRUB x86_64-efi.
    Grub,
    /// systemd-boot, with the kernel and initrd copied to the ESP.
    SystemdBoot,
}

/// A serial line the loader's menu also uses (GRUB `serial --unit --speed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialConsole {
    pub unit: u8,
    pub speed: u32,
}

/// What to boot and with which loaders. Paths are inside the tree.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// UUID of the root filesystem (planned; the filesystem is made later with it).
    pub root_uuid: Uuid,
    /// The kernel, e.g. "/boot/vmlinuz"; as GRUB reads it from the root filesystem.
    pub kernel: String,
    pub initrd: Option<String>,
    /// Appended after `root=UUID=... ro` (console=ttyS0 and the like).
    pub cmdline: String,
    /// Menu entry title.
    pub title: String,
    /// Seconds the menu waits; 0 boots at once.
    pub timeout_secs: u32,
    /// GRUB menu also on this serial port; `None`: screen only.
    pub serial: Option<SerialConsole>,
    pub bios: Option<BiosLoader>,
    pub efi: Option<EfiLoader>,
    /// Where the ESP is mounted in the tree; its contents become the ESP.
    pub esp_dir: String,
    /// Copy GRUB's *.mod and *.lst to /boot/grub/PLATFORM (for `insmod`).
    pub copy_grub_modules: bool,
    /// The host system the fallback loader files come from ("/").
    pub host_root: PathBuf,
}

impl BootSpec {
    /// Defaults: no loader yet, no initrd, title "kiln", 1 s timeout, menu on ttyS0
    /// at 115200 baud, ESP at /boot/efi, modules copied, host files from "/".
    pub fn new(root_uuid: Uuid, kernel: &str) -> Self {
        Self {
            root_uuid,
            kernel: kernel.to_string(),
            initrd: None,
            cmdline: String::new(),
            title: "kiln".into(),
            timeout_secs: 1,
            serial: Some(SerialConsole {
                unit: 0,
                speed: 115_200,
            }),
            bios: None,
            efi: None,
            esp_dir: "/boot/efi".into(),
            copy_grub_modules: true,
            host_root: PathBuf::from("/"),
        }
    }
}

/// GRUB's BIOS boot code, kept between [`stage_tree`] and [`install_bios`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BiosCode {
    /// GRUB's 512-byte MBR code.
    pub boot_img: Vec<u8>,
    /// diskboot.img + the kernel with the built-in modules and early config.
    pub core_img: Vec<u8>,
}

/// What [`stage_tree`] did.
#[derive(Debug, Clone)]
pub struct StagedBoot {
    /// Present when a BIOS loader was asked for; pass it to [`install_bios`].
    pub bios_code: Option<BiosCode>,
    /// Host paths of every file written into the tree, in write order.
    pub written: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} in the image tree: {source}")]
    TreePath { path: String, source: WalkError },
    #[error("boot {key} {path}: not a file in the image tree {}", tree.display())]
    MissingInTree {
        key: &'static str,
        path: String,
        tree: PathBuf,
    },
    #[error("boot spec: {key}: {problem}")]
    BadSpec { key: &'static str, problem: String },
    #[error("{loader} not found: looked for {looked_for} (install {package})")]
    LoaderMissing {
        loader: String,
        looked_for: String,
        package: &'static str,
    },
    #[error("cannot run {tool}: {source} (install grub-common)")]
    ToolStart {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} failed {what} ({status}): {stderr}")]
    ToolFailed {
        tool: &'static str,
        what: String,
        status: String,
        stderr: String,
    },
    #[error("{image}: {problem}")]
    BadGrubImage {
        image: &'static str,
        problem: String,
    },
    #[error(
        "core.img is {bytes} bytes ({sectors} sectors) and does not fit {area}, which holds {limit} sectors"
    )]
    CoreTooLarge {
        bytes: u64,
        sectors: u64,
        limit: u64,
        area: String,
    },
    #[error("{area} ends beyond the end of the disk ({disk_size} bytes)")]
    AreaBeyondDisk { area: String, disk_size: u64 },
    #[error(
        "the GPT has no BIOS boot partition (type EF02, 21686148-6449-6E6F-744E-656564454649) to hold GRUB's core.img"
    )]
    NoBiosBootPartition,
    #[error(
        "the disk has no partition table: sector 0 has no 0x55AA signature or lists no partition"
    )]
    NoPartitionTable,
    #[error("sector 0 is a GPT protective MBR but the disk has no GPT header")]
    ProtectiveMbrWithoutGpt,
    #[error("reading the disk's partition table: {0}")]
    Gpt(#[from] GptError),
    #[error("{what}: {source}")]
    DiskIo {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Step one: write the loaders' files into `tree` (the image root, before its
/// filesystems are made). Returns the BIOS boot code for [`install_bios`].
pub fn stage_tree(tree: &Path, spec: &BootSpec) -> Result<StagedBoot, BootError> {
    if spec.bios.is_none() && spec.efi.is_none() {
        return Err(BootError::BadSpec {
            key: "loaders",
            problem: "neither a BIOS nor an EFI loader was asked for".into(),
        });
    }
    host_file(tree, "kernel", &spec.kernel)?;
    if let Some(initrd) = &spec.initrd {
        host_file(tree, "initrd", initrd)?;
    }
    let mut written = Vec::new();
    let grub_bios = spec.bios == Some(BiosLoader::Grub);
    let grub_efi = spec.efi == Some(EfiLoader::Grub);
    let bios_code = if grub_bios || grub_efi {
        grub::stage(tree, spec, grub_bios, grub_efi, &mut written)?
    } else {
        None
    };
    if spec.efi == Some(EfiLoader::SystemdBoot) {
        systemd_boot::stage(tree, spec, &mut written)?;
    }
    Ok(StagedBoot { bios_code, written })
}

/// Host path of the regular file `inner` in the tree (links resolved inside it).
fn host_file(tree: &Path, key: &'static str, inner: &str) -> Result<PathBuf, BootError> {
    match tree_files::resolve(tree, inner)? {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(BootError::MissingInTree {
            key,
            path: inner.to_string(),
            tree: tree.to_path_buf(),
        }),
    }
}

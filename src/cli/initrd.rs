//! `kiln initrd ...`: list, extract, pack and edit Linux initramfs images.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use crate::format::initrd::Compression;
use crate::initrd::{self, PackOptions, RepackOptions};

#[derive(Subcommand)]
pub enum InitrdCommand {
    /// List every segment (offset, length, compression) and its entries
    Ls(LsArgs),
    /// Unpack into a directory (created if missing); as root keeps owners and device nodes
    Extract(ExtractArgs),
    /// Build an initramfs from a directory tree
    Pack(PackArgs),
    /// Remove entries (directories recursively) and write a new initramfs
    Rm(RmArgs),
    /// Add files, programs with their libraries, kernel modules with their
    /// dependencies, firmware and package payloads, and write a new initramfs
    Add(AddArgs),
}

#[derive(Args)]
pub struct AddArgs {
    initrd: PathBuf,
    /// Initramfs to write (appears only when complete)
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// HOST:GUEST, a file or a directory (copied recursively)
    #[arg(long = "file", value_name = "HOST:GUEST")]
    files: Vec<String>,
    /// An ELF program, with its interpreter and the shared libraries it needs
    #[arg(long = "binary", value_name = "PATH")]
    binaries: Vec<PathBuf>,
    /// The payload of a kmod RPM or a .deb
    #[arg(long = "package", value_name = "FILE")]
    packages: Vec<PathBuf>,
    /// A kernel module (name or alias) with its dependencies and soft dependencies
    #[arg(long = "module", value_name = "NAME")]
    modules: Vec<String>,
    /// Where kernel modules are found on the host
    #[arg(long, default_value = "/lib/modules")]
    modules_dir: PathBuf,
    /// Kernel version (default: the one the initrd has modules for, else the running kernel)
    #[arg(long)]
    kernel_version: Option<String>,
    /// Firmware file relative to /lib/firmware
    #[arg(long = "firmware", value_name = "PATH")]
    firmware: Vec<String>,
    /// Look programs and firmware up in this root instead of /
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Output compression (default: the input's)
    #[arg(long, value_enum)]
    compression: Option<CompressionArg>,
    /// No progress bar
    #[arg(short = 'q')]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    Xz,
    None,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::Xz => Compression::Xz,
            CompressionArg::None => Compression::None,
        }
    }
}

#[derive(Args)]
pub struct LsArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
    initrd: PathBuf,
}

#[derive(Args)]
pub struct ExtractArgs {
    initrd: PathBuf,
    /// Destination directory; nothing is ever written outside it
    dir: PathBuf,
}

#[derive(Args)]
pub struct PackArgs {
    /// Directory to pack (symlinks are stored, never followed)
    dir: PathBuf,
    /// Initramfs to write (appears only when complete)
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "zstd")]
    compression: CompressionArg,
    /// Directory packed as an uncompressed first segment (early microcode)
    #[arg(long)]
    early: Option<PathBuf>,
    /// No progress bar
    #[arg(short = 'q')]
    quiet: bool,
}

#[derive(Args)]
pub struct RmArgs {
    initrd: PathBuf,
    /// Initramfs to write (appears only when complete)
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Output compression (default: the input's)
    #[arg(long, value_enum)]
    compression: Option<CompressionArg>,
    /// No progress bar
    #[arg(short = 'q')]
    quiet: bool,
    /// Paths inside the initramfs to remove
    #[arg(required = true)]
    paths: Vec<String>,
}

pub fn run(cmd: InitrdCommand) -> Result<u8> {
    match cmd {
        InitrdCommand::Ls(args) => {
            let initrd = initrd::read_initrd(&args.initrd)?;
            let listing = initrd::list(&initrd);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{}", initrd::list::render_text(&listing));
            }
        }
        InitrdCommand::Extract(args) => {
            let initrd = initrd::read_initrd(&args.initrd)?;
            let report = initrd::extract(&initrd, &args.dir).with_context(|| {
                format!(
                    "extracting {} into {}",
                    args.initrd.display(),
                    args.dir.display()
                )
            })?;
            if !report.skipped_devices.is_empty() {
                eprintln!(
                    "kiln: warning: not root, {} device nodes not created: {}",
                    report.skipped_devices.len(),
                    report.skipped_devices.join(", ")
                );
            }
        }
        InitrdCommand::Pack(args) => {
            let opts = PackOptions {
                compression: args.compression.into(),
                early: args.early,
                mtime_clamp: initrd::source_date_epoch(),
                progress: !args.quiet,
            };
            initrd::pack_dir(&args.dir, &args.output, &opts).with_context(|| {
                format!(
                    "packing {} into {}",
                    args.dir.display(),
                    args.output.display()
                )
            })?;
        }
        InitrdCommand::Rm(args) => {
            let opts = RepackOptions {
                compression: args.compression.map(Into::into),
                mtime_clamp: initrd::source_date_epoch(),
                progress: !args.quiet,
            };
            initrd::rm(&args.initrd, &args.output, &args.paths, &opts).with_context(|| {
                format!(
                    "removing from {} into {}",
                    args.initrd.display(),
                    args.output.display()
                )
            })?;
        }
        InitrdCommand::Add(args) => {
            let opts = RepackOptions {
                compression: args.compression.map(Into::into),
                mtime_clamp: initrd::source_date_epoch(),
                progress: !args.quiet,
            };
            let req = initrd::add::AddRequest {
                files: args.files,
                binaries: args.binaries,
                packages: args.packages,
                modules: args.modules,
                firmware: args.firmware,
                modules_dir: args.modules_dir,
                kernel_version: args.kernel_version,
                sysroot: args.root,
            };
            let report =
                initrd::add::add(&args.initrd, &args.output, &req, &opts).with_context(|| {
                    format!(
                        "adding to {} into {}",
                        args.initrd.display(),
                        args.output.display()
                    )
                })?;
            for w in &report.warnings {
                eprintln!("kiln: warning: {w}");
            }
        }
    }
    Ok(0)
}

//! `kiln image ...`: flag names follow qemu-img.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::format::ImageFormat;
use crate::format::qcow2::CompressionType;
use crate::image::{check, convert, info};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build images from a recipe of elements (diskimage-builder compatible)
    Build(super::build::BuildArgs),
    /// Build an image from elements, with disk-image-create's flags
    Create(super::build::CreateArgs),
    /// Change an image in place, transactionally (virt-customize's operations)
    Customize(super::customize::CustomizeArgs),
    /// Reset an image for cloning (virt-sysprep's operations)
    Sysprep(super::customize::SysprepArgs),
    /// Describe the operating system in an image (like virt-inspector)
    Inspect(super::customize::InspectArgs),
    /// List a directory of the guest
    Ls(super::customize::GuestPathArgs),
    /// Print a file of the guest
    Cat(super::customize::GuestPathArgs),
    /// Copy a guest file or directory to a host directory
    CopyOut(super::customize::CopyOutArgs),
    /// Copy host files or directories into a guest directory
    CopyIn(super::customize::CopyInArgs),
    /// Convert an image to raw or qcow2 (like qemu-img convert)
    Convert(ConvertArgs),
    /// Show format, sizes, clusters, compression and backing chain
    Info(InfoArgs),
    /// Check qcow2 metadata: refcounts, overlaps, offsets past the end (exit 2: corrupt, 3: leaks)
    Check(InfoArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Raw,
    Qcow2,
}

impl From<FormatArg> for ImageFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Raw => ImageFormat::Raw,
            FormatArg::Qcow2 => ImageFormat::Qcow2,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    Zlib,
    Zstd,
}

impl From<CompressionArg> for CompressionType {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::Zlib => CompressionType::Zlib,
            CompressionArg::Zstd => CompressionType::Zstd,
        }
    }
}

#[derive(Args)]
pub struct ConvertArgs {
    /// Source format (probed when omitted)
    #[arg(short = 'f', value_enum)]
    source_format: Option<FormatArg>,
    /// Output format
    #[arg(short = 'O', value_enum)]
    output_format: FormatArg,
    /// Compress qcow2 clusters (zlib unless --compression says otherwise)
    #[arg(short = 'c')]
    compress: bool,
    /// Compression algorithm for -c; implies -c
    #[arg(long, value_enum)]
    compression: Option<CompressionArg>,
    /// qcow2 cluster size: 512 to 2M, a power of two (default 64K)
    #[arg(long, value_parser = super::parse_size)]
    cluster_size: Option<u64>,
    /// qemu-img style output options: compression_type=zlib|zstd, cluster_size=SIZE
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Worker threads (default: one per core)
    #[arg(short = 'j', long = "threads")]
    threads: Option<usize>,
    /// Show progress even if it would be hidden (it is shown on a terminal anyway)
    #[arg(short = 'p')]
    progress: bool,
    /// No progress bar
    #[arg(short = 'q')]
    quiet: bool,
    /// Image to read
    src: PathBuf,
    /// Image to write (appears only when complete)
    dst: PathBuf,
}

#[derive(Args)]
pub struct InfoArgs {
    /// Image format (probed when omitted)
    #[arg(short = 'f', value_enum)]
    format: Option<FormatArg>,
    /// Print JSON
    #[arg(long)]
    json: bool,
    image: PathBuf,
}

pub fn run(cmd: ImageCommand) -> Result<u8> {
    match cmd {
        ImageCommand::Build(args) => super::build::run_build(args),
        ImageCommand::Create(args) => super::build::run_create(args),
        ImageCommand::Customize(args) => super::customize::run_customize(args),
        ImageCommand::Sysprep(args) => super::customize::run_sysprep(args),
        ImageCommand::Inspect(args) => super::customize::run_inspect(args),
        ImageCommand::Ls(args) => super::customize::run_ls(args),
        ImageCommand::Cat(args) => super::customize::run_cat(args),
        ImageCommand::CopyOut(args) => super::customize::run_copy_out(args),
        ImageCommand::CopyIn(args) => super::customize::run_copy_in(args),
        ImageCommand::Convert(args) => run_convert(args),
        ImageCommand::Info(args) => run_info(args),
        ImageCommand::Check(args) => run_check(args),
    }
}

/// Apply `-o key=value,...` on top of the dedicated flags.
fn apply_qemu_options(args: &mut ConvertArgs) -> Result<()> {
    for group in std::mem::take(&mut args.options) {
        for kv in group.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = kv
                .split_once('=')
                .with_context(|| format!("-o {kv:?}: expected key=value"))?;
            match key {
                "compression_type" => {
                    args.compression =
                        Some(CompressionArg::from_str(value, true).map_err(|_| {
                            anyhow::anyhow!("-o compression_type={value}: expected zlib or zstd")
                        })?);
                }
                "cluster_size" => {
                    args.cluster_size = Some(super::parse_size(value).map_err(anyhow::Error::msg)?);
                }
                other => bail!(
                    "-o {other}: unsupported option (kiln knows compression_type and cluster_size)"
                ),
            }
        }
    }
    Ok(())
}

fn run_convert(mut args: ConvertArgs) -> Result<u8> {
    let qemu_style_type = args.options.iter().any(|o| o.contains("compression_type"));
    apply_qemu_options(&mut args)?;
    // qemu-img's -o compression_type only names the algorithm; --compression implies -c.
    let compress = args.compress || (args.compression.is_some() && !qemu_style_type);
    let opts = convert::ConvertOptions {
        source_format: args.source_format.map(Into::into),
        output_format: args.output_format.into(),
        compression: compress.then(|| {
            args.compression
                .map(Into::into)
                .unwrap_or(CompressionType::Zlib)
        }),
        cluster_size: args.cluster_size,
        threads: args.threads,
        progress: !args.quiet || args.progress,
    };
    convert::convert(&args.src, &args.dst, &opts).with_context(|| {
        format!(
            "converting {} to {}",
            args.src.display(),
            args.dst.display()
        )
    })?;
    Ok(0)
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run_info(args: InfoArgs) -> Result<u8> {
    let info = info::image_info(&args.image, args.format.map(Into::into))?;
    if args.json {
        print_json(&info)?;
    } else {
        print!("{}", info::render_text(&info));
    }
    Ok(0)
}

fn run_check(args: InfoArgs) -> Result<u8> {
    let result = check::check_image(&args.image, args.format.map(Into::into))?;
    if args.json {
        print_json(&result)?;
    } else {
        print!("{}", check::render_text(&result));
    }
    Ok(result.verdict.exit_code())
}

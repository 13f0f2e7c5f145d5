//! `kiln image customize / sysprep / inspect / ls / cat / copy-in / copy-out`
//! (virt-customize, virt-sysprep, virt-inspector, virt-ls, virt-cat,
//! virt-copy-in/out names).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::image::FormatArg;
use crate::build::sandbox::enter_private_mount_namespace;
use crate::customize::image::{self, Outcome};
use crate::customize::{Customization, Op, parse_args, sysprep};
use crate::format::ImageFormat;

/// The operations, as `kiln image customize --help` lists them (virt-customize's
/// names and argument forms).
const CUSTOMIZE_OPERATIONS: &str = "\
Operations (applied in command-line order; all or nothing):
  --append-line FILE:LINE        append LINE to FILE (adds a newline before it if needed)
  --chmod PERMS:FILE             change a file's mode (octal)
  --chown UID.GID:FILE           change a file's owner (numeric)
  --commands-from-file FILE      read more operations from FILE, one per line
  --copy SRC:DEST                copy inside the guest
  --copy-in LOCALPATH:REMOTEDIR  copy host files or directories into the guest
  --delete PATH                  delete a file or directory (recursively)
  --edit FILE:s/RE/REPL/[g]      edit a file with a regular expression substitution
  --firstboot SCRIPT             run a host script in the guest at first boot
  --firstboot-command 'CMD'      run a command at first boot
  --firstboot-install PKG,PKG    install packages at first boot
  --hostname HOSTNAME            set the host name
  --install PKG,PKG              install packages with the guest's package manager
  --link TARGET:LINK[:LINK]      create symbolic links
  --mkdir DIR                    create a directory (with parents)
  --move SRC:DEST                move inside the guest
  --password USER:SELECTOR       set a user's password (SELECTOR below)
  --password-crypto sha512|yescrypt  hash to use (default: by guest, as virt-customize)
  --root-password SELECTOR       set root's password
  --run SCRIPT                   run a host script in the guest
  --run-command 'CMD'            run a command in the guest
  --scrub FILE                   overwrite a file, then delete it
  --selinux-relabel              relabel the guest at first boot (SELinux guests)
  --ssh-inject USER[:file:F|:string:KEY]  add an SSH key to USER's authorized_keys
  --tar-in TARBALL:REMOTEDIR     unpack a tarball into the guest
  --timezone TIMEZONE            set the time zone (e.g. Europe/London)
  --touch FILE                   create a file or update its times
  --truncate FILE                make a file empty
  --truncate-recursive DIR       make every file under DIR empty
  --uninstall PKG,PKG            remove packages
  --update                       update every package
  --upload FILE:DEST             copy a host file into the guest
  --write FILE:CONTENT           write CONTENT to FILE
  --sm-credentials USER:password:PASS|USER:file:FILE  subscription-manager login
  --sm-register / --sm-attach auto|pool:ID|file:F / --sm-remove / --sm-unregister

Password SELECTOR: password:PASS, file:FILE, random, disabled, locked[:...].
Set KILN_OVERLAY_DIR for where changes beyond 256 MiB are kept until the commit.";

#[derive(Args)]
#[command(after_long_help = CUSTOMIZE_OPERATIONS)]
pub struct CustomizeArgs {
    /// -a IMAGE [--format raw|qcow2] [-n|--dry-run] [-q] [-v] OPERATIONS... (applied in order)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    args: Vec<String>,
}

#[derive(Args)]
pub struct SysprepArgs {
    /// The image to reset
    #[arg(short = 'a', long = "add", required_unless_present = "list_operations")]
    image: Option<PathBuf>,
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Operations: defaults,-NAME,NAME (default: defaults)
    #[arg(long, default_value = "defaults")]
    operations: String,
    /// List the operations with their default and description
    #[arg(long)]
    list_operations: bool,
    /// Run everything, write nothing
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    image: PathBuf,
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GuestPathArgs {
    image: PathBuf,
    /// A path in the guest
    path: String,
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
}

#[derive(Args)]
pub struct CopyOutArgs {
    image: PathBuf,
    /// The guest file or directory to copy
    path: String,
    /// The host directory to copy it into
    dest: PathBuf,
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
}

#[derive(Args)]
pub struct CopyInArgs {
    image: PathBuf,
    /// Host files or directories, then the guest directory they go into
    #[arg(required = true, num_args = 2..)]
    paths: Vec<String>,
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
}

fn format_of(f: Option<FormatArg>) -> Option<ImageFormat> {
    f.map(ImageFormat::from)
}

fn enter_namespace() -> Result<()> {
    enter_private_mount_namespace()
        .context("entering a private mount namespace (kiln mounts guests as root)")
}

/// kiln's own flags of `customize`, the rest being operations.
struct CustomizeFlags {
    image: PathBuf,
    format: Option<ImageFormat>,
    dry_run: bool,
    quiet: bool,
    ops: Vec<String>,
}

fn split_customize_args(args: &[String]) -> Result<CustomizeFlags> {
    let mut image = None;
    let mut format = None;
    let (mut dry_run, mut quiet) = (false, false);
    let mut ops = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value")),
            }
        };
        match flag {
            "-a" | "--add" => image = Some(PathBuf::from(value("-a")?)),
            "--format" => {
                format = Some(match value("--format")?.as_str() {
                    "raw" => ImageFormat::Raw,
                    "qcow2" => ImageFormat::Qcow2,
                    other => bail!("--format {other}: expected raw or qcow2"),
                })
            }
            "-n" | "--dry-run" => dry_run = true,
            "-q" | "--quiet" => quiet = true,
            // Accepted for virt-customize compatibility; output is already per operation.
            "-v" | "--verbose" | "-x" => {}
            _ => ops.push(arg.clone()),
        }
    }
    let image = image.context("customize needs -a IMAGE")?;
    Ok(CustomizeFlags {
        image,
        format,
        dry_run,
        quiet,
        ops,
    })
}

pub fn run_customize(args: CustomizeArgs) -> Result<u8> {
    let flags = split_customize_args(&args.args)?;
    let custom = parse_args(&flags.ops)?;
    if custom.ops.is_empty() {
        bail!(
            "no operations given (see virt-customize's options: --root-password, --run-command, ...)"
        );
    }
    enter_namespace()?;
    let quiet = flags.quiet;
    let mut log = |line: &str| {
        if !quiet {
            eprintln!("kiln: {line}");
        }
    };
    let outcome =
        image::customize_image(&flags.image, flags.format, &custom, flags.dry_run, &mut log)
            .with_context(|| {
                format!(
                    "customizing {} (the image is unchanged)",
                    flags.image.display()
                )
            })?;
    report(&flags.image, outcome, quiet);
    Ok(0)
}

fn report(image: &std::path::Path, outcome: Outcome, quiet: bool) {
    if quiet {
        return;
    }
    match outcome {
        Outcome::Committed(bytes) => {
            eprintln!(
                "kiln: {} changed ({bytes} bytes of the disk written)",
                image.display()
            )
        }
        Outcome::DryRun => eprintln!("kiln: dry run: {} left unchanged", image.display()),
    }
}

pub fn run_sysprep(args: SysprepArgs) -> Result<u8> {
    if args.list_operations {
        print!("{}", sysprep::list_operations());
        return Ok(0);
    }
    let image = args.image.context("sysprep needs -a IMAGE")?;
    let names = sysprep::select(&args.operations)?;
    enter_namespace()?;
    let outcome = image::sysprep_image(&image, format_of(args.format), &names, args.dry_run)
        .with_context(|| format!("sysprep of {} (the image is unchanged)", image.display()))?;
    report(&image, outcome, false);
    Ok(0)
}

pub fn run_inspect(args: InspectArgs) -> Result<u8> {
    enter_namespace()?;
    let info = image::inspect_image(&args.image, format_of(args.format))
        .with_context(|| format!("inspecting {}", args.image.display()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &info)?;
        writeln!(out)?;
        return Ok(0);
    }
    writeln!(out, "root: {}", info.root)?;
    writeln!(out, "distro: {} {}", info.distro, info.version)?;
    writeln!(out, "product name: {}", info.product_name)?;
    writeln!(out, "arch: {}", info.arch.as_deref().unwrap_or("unknown"))?;
    writeln!(
        out,
        "hostname: {}",
        info.hostname.as_deref().unwrap_or("unknown")
    )?;
    writeln!(
        out,
        "packages: {} ({}, {})",
        info.packages.len(),
        info.package_format.as_deref().unwrap_or("none"),
        info.package_management.as_deref().unwrap_or("none")
    )?;
    for fs in &info.filesystems {
        writeln!(
            out,
            "filesystem: {} {} label={} uuid={}",
            fs.device,
            fs.fstype,
            fs.label.as_deref().unwrap_or(""),
            fs.uuid.as_deref().unwrap_or("")
        )?;
    }
    for mp in &info.mountpoints {
        writeln!(out, "mountpoint: {} on {}", mp.device, mp.mountpoint)?;
    }
    Ok(0)
}

pub fn run_ls(args: GuestPathArgs) -> Result<u8> {
    enter_namespace()?;
    let names = image::list_dir(&args.image, format_of(args.format), &args.path)?;
    let mut out = std::io::stdout().lock();
    for n in names {
        writeln!(out, "{n}")?;
    }
    Ok(0)
}

pub fn run_cat(args: GuestPathArgs) -> Result<u8> {
    enter_namespace()?;
    let bytes = image::read_file(&args.image, format_of(args.format), &args.path)?;
    std::io::stdout().lock().write_all(&bytes)?;
    Ok(0)
}

pub fn run_copy_out(args: CopyOutArgs) -> Result<u8> {
    enter_namespace()?;
    image::copy_out(&args.image, format_of(args.format), &args.path, &args.dest)?;
    Ok(0)
}

pub fn run_copy_in(mut args: CopyInArgs) -> Result<u8> {
    let remote_dir = args.paths.pop().expect("clap requires two paths");
    let custom = Customization {
        ops: args
            .paths
            .iter()
            .map(|local| Op::CopyIn {
                local: PathBuf::from(local),
                remote_dir: remote_dir.clone(),
            })
            .collect(),
        ..Customization::default()
    };
    enter_namespace()?;
    image::customize_image(
        &args.image,
        format_of(args.format),
        &custom,
        false,
        &mut |_| {},
    )
    .with_context(|| {
        format!(
            "copying into {} (the image is unchanged)",
            args.image.display()
        )
    })?;
    Ok(0)
}

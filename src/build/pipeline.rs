//! `kiln image build`: one recipe from elements to image files.
//!
//! The order is diskimage-builder's: resolve the elements and assemble the hooks
//! directory; root.d and extra-data.d on the host; pre-install.d, install.d and
//! post-install.d in the chroot; post-root.d; plan the disk (fstab) and run
//! block-device.d, pre-finalise.d, finalise.d (chroot) and cleanup.d; then the
//! boot loader, the disk assembly and the outputs. Everything runs in a private
//! mount namespace on a tmpfs, so a failed or killed build leaves nothing behind,
//! and outputs appear only when complete.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::disk_image::{self, BootRequest, DiskImageError};
use super::output::{self, Checksums, OutputOptions, OutputType};
use super::recipe::{ImageType, Recipe};
use super::runner::{self, BreakPoints, BuildLog, Echo, RunContext, ScriptTiming, ScriptToRun};
use super::workspace::{self, Workspace};
use crate::disk::DiskPlan;
use crate::element::package_installs::{self, PackageLists};
use crate::element::{self, Hooks, Phase, ResolveOptions, RunsIn, SearchPath};

/// How to run a build, besides the recipe.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Where the images go (`-o DIR`); the recipe's imagename is relative to it.
    pub output_dir: PathBuf,
    /// `-t`: output types instead of the recipe's.
    pub types: Option<Vec<String>>,
    /// `--elements-path`, before ELEMENTS_PATH and the shipped elements.
    pub elements_path: Vec<PathBuf>,
    /// `--break` points.
    pub breaks: Vec<String>,
    /// Echo every script's output (else only on a terminal).
    pub verbose: bool,
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub outputs: Vec<PathBuf>,
    pub timings: Vec<ScriptTiming>,
    /// Seconds per step that is not a script (disk, outputs).
    pub steps: Vec<(String, f64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("elements: {0}")]
    Search(#[from] element::SearchError),
    #[error("elements: {0}")]
    Graph(#[from] element::GraphError),
    #[error("hooks: {0}")]
    Hooks(#[from] element::HooksError),
    #[error("package-installs: {0}")]
    Packages(#[from] package_installs::PackageInstallsError),
    #[error(transparent)]
    Run(#[from] runner::RunError),
    #[error(transparent)]
    Break(#[from] runner::UnknownBreakPoint),
    #[error("build directory: {0}")]
    Workspace(#[from] workspace::WorkspaceError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] super::sandbox::SandboxError),
    #[error(transparent)]
    Disk(#[from] DiskImageError),
    #[error("writing the images: {0}")]
    Output(#[from] output::OutputError),
    #[error("writing the ramdisk: {0}")]
    Ramdisk(#[from] super::ramdisk::RamdiskError),
    #[error("output type {0:?} is not supported by kiln (raw, qcow2, tar, squashfs)")]
    UnsupportedType(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("evaluating environment.d: {0}")]
    Environment(String),
}

/// Build `recipe`. The calling thread must already be in a private mount
/// namespace ([`super::sandbox::enter_private_mount_namespace`]).
pub fn build(recipe: &Recipe, opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    // A ramdisk recipe makes NAME.kernel + NAME.initramfs and no disk.
    let types = if recipe.ramdisk {
        Vec::new()
    } else {
        output_types(recipe, opts)?
    };
    let search = SearchPath::from_env(&opts.elements_path);
    let catalog = search.scan()?;
    let resolve_opts = ResolveOptions::for_build(recipe.skip_base, &recipe.effective_arch());
    let resolved = element::resolve(&catalog, &recipe.elements, &resolve_opts)?;
    let breaks = BreakPoints::parse(&opts.breaks)?;

    let ws = Workspace::create(!recipe.no_tmpfs)?;
    let hooks = Hooks::assemble(&resolved, &ws.hooks_dir())?;
    let mut env = workspace::script_environment(
        &ws,
        &recipe.dib_environment(),
        &resolved.environment(),
        &search.to_env_value(),
    );
    env.insert("IMAGE_NAME".into(), image_stem(&recipe.imagename));
    let evaluated = evaluate_environment(&hooks, &env)?;
    let mut lists = package_lists(&resolved, &evaluated)?;
    lists.add_recipe_packages(&recipe.packages);
    hooks.write_package_lists(&lists)?;

    let log_path = recipe.logfile.clone().unwrap_or_else(|| ws.log_path());
    let log = BuildLog::create(&log_path).map_err(|source| BuildError::Io {
        context: format!("build log {}", log_path.display()),
        source,
    })?;
    let mut ctx = RunContext::new(&ws.target_root(), hooks.root(), log);
    ctx.echo = if opts.verbose {
        Echo::Always
    } else {
        Echo::WhenTerminal
    };
    ctx.breaks = breaks;

    let timestamp = source_date_epoch(&env);
    let seed = build_seed(recipe, &env, timestamp);
    let mut timings = Vec::new();
    let mut steps = Vec::new();
    let phases = |ctx: &mut RunContext, list: &[Phase], timings: &mut Vec<ScriptTiming>| {
        for &phase in list {
            timings.extend(run_phase(ctx, &hooks, phase, &env)?);
        }
        Ok::<(), BuildError>(())
    };

    phases(&mut ctx, &[Phase::Root, Phase::ExtraData], &mut timings)?;
    ctx.hold_chroot_mounts()?;
    phases(
        &mut ctx,
        &[Phase::PreInstall, Phase::Install, Phase::PostInstall],
        &mut timings,
    )?;
    ctx.release_chroot_mounts()?;
    phases(&mut ctx, &[Phase::PostRoot], &mut timings)?;

    let tree = ws.target_root();
    let wants_disk = types.iter().any(|t| t.needs_disk());
    let plan = if wants_disk {
        let started = Instant::now();
        let names: Vec<&str> = resolved.names().collect();
        let layout = disk_image::choose_layout(recipe.block_device.as_ref(), &env, &names)?;
        let plan_opts = disk_image::plan_options(
            recipe.image_size,
            recipe.image_extra_size.map(|g| g << 30),
            &tree,
            &seed,
            timestamp.unwrap_or_else(now),
        )?;
        let plan = DiskPlan::new(&layout, &plan_opts).map_err(DiskImageError::from)?;
        disk_image::prepare_tree(&plan, &tree, None)?;
        steps.push(("plan disk".to_string(), started.elapsed().as_secs_f64()));
        Some(plan)
    } else {
        None
    };
    phases(
        &mut ctx,
        &[Phase::BlockDevice, Phase::PreFinalise],
        &mut timings,
    )?;
    ctx.hold_chroot_mounts()?;
    phases(&mut ctx, &[Phase::Finalise], &mut timings)?;
    ctx.release_chroot_mounts()?;
    phases(&mut ctx, &[Phase::Cleanup], &mut timings)?;

    let out_base = opts.output_dir.join(&recipe.imagename);
    let out_dir = out_base
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir).map_err(|source| BuildError::Io {
        context: format!("output directory {}", out_dir.display()),
        source,
    })?;
    let name = image_stem(&recipe.imagename);

    let mut disk_path = None;
    if let Some(plan) = &plan {
        let started = Instant::now();
        let cmdline = kernel_cmdline(recipe, &env);
        let request = BootRequest {
            cmdline: &cmdline,
            efi_loader: env.get("KILN_EFI_LOADER").map(String::as_str),
            title: &name,
        };
        let wants_loader = resolved.contains("bootloader");
        let bios = disk_image::prepare_tree(plan, &tree, wants_loader.then_some(&request))?;
        let raw = disk_image::raw_disk_path(&ws.image_dir(), &name);
        disk_image::assemble(plan, &tree, &raw, bios.as_ref())?;
        steps.push(("assemble disk".to_string(), started.elapsed().as_secs_f64()));
        disk_path = Some(raw);
    }

    let started = Instant::now();
    let out_opts = OutputOptions {
        qcow2_compression: if recipe.uncompressed {
            None
        } else {
            OutputOptions::default().qcow2_compression
        },
        checksums: Checksums {
            sha256: recipe.checksum,
            md5: recipe.checksum,
        },
        timestamp: timestamp.unwrap_or_else(now),
    };
    let outputs = output::write_outputs(
        disk_path.as_deref(),
        &tree,
        &out_dir,
        &name,
        &types,
        &out_opts,
    )?;
    let mut outputs = outputs;
    if recipe.ramdisk {
        let clamp = timestamp.map(|t| t.clamp(0, i64::from(u32::MAX)) as u32);
        outputs.extend(super::ramdisk::write_ramdisk(
            &tree,
            &out_dir,
            &name,
            env.get("KILN_RAMDISK_COMPRESSION").map(String::as_str),
            clamp,
        )?);
    }
    steps.push(("write outputs".to_string(), started.elapsed().as_secs_f64()));
    drop(ctx);
    ws.remove()?;
    Ok(BuildReport {
        outputs,
        timings,
        steps,
    })
}

fn run_phase(
    ctx: &mut RunContext,
    hooks: &Hooks,
    phase: Phase,
    env: &BTreeMap<String, String>,
) -> Result<Vec<ScriptTiming>, BuildError> {
    let scripts: Vec<ScriptToRun> = hooks
        .scripts(phase)?
        .into_iter()
        .map(|s| ScriptToRun {
            element: s
                .element
                .unwrap_or_else(|| "(made during the build)".into()),
            name: s.name,
        })
        .collect();
    let in_chroot = phase.runs_in() == RunsIn::Chroot;
    if !scripts.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "kiln: {} ({} script{})",
            phase.dir_name(),
            scripts.len(),
            if scripts.len() == 1 { "" } else { "s" }
        );
    }
    Ok(runner::run_phase(
        ctx,
        phase.dir_name(),
        in_chroot,
        &scripts,
        env,
    )?)
}

/// The recipe's types (or `-t`), as output writers.
fn output_types(recipe: &Recipe, opts: &BuildOptions) -> Result<Vec<OutputType>, BuildError> {
    let names: Vec<String> = match &opts.types {
        Some(list) => list
            .iter()
            .flat_map(|t| t.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        None => recipe
            .types
            .iter()
            .map(|t| type_name(*t).to_string())
            .collect(),
    };
    let mut types = Vec::new();
    for name in names {
        let kind: OutputType = name
            .parse()
            .map_err(|_| BuildError::UnsupportedType(name.clone()))?;
        if !types.contains(&kind) {
            types.push(kind);
        }
    }
    Ok(types)
}

fn type_name(t: ImageType) -> &'static str {
    match t {
        ImageType::Squashfs => "squashfs",
        other => other.extension(),
    }
}

/// The file name part of the recipe's imagename.
fn image_stem(imagename: &str) -> String {
    Path::new(imagename)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into())
}

/// Source every environment.d file the way scripts see them and return the
/// resulting variables (DISTRO_NAME, DIB_RELEASE, ... decide package names).
fn evaluate_environment(
    hooks: &Hooks,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, BuildError> {
    let files: Vec<PathBuf> = hooks
        .environment_files()?
        .into_iter()
        .map(|f| hooks.root().join(f))
        .collect();
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg("set -e; for f in \"$@\"; do . \"$f\"; done; env -0")
        .arg("kiln-environment")
        .args(&files)
        .env("TMP_HOOKS_PATH", hooks.root())
        .envs(env)
        .output()
        .map_err(|source| BuildError::Io {
            context: "running bash to source environment.d".into(),
            source,
        })?;
    if !output.status.success() {
        return Err(BuildError::Environment(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    let mut vars = BTreeMap::new();
    for item in output.stdout.split(|&b| b == 0) {
        let item = String::from_utf8_lossy(item);
        if let Some((k, v)) = item.split_once('=') {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    Ok(vars)
}

fn package_lists(
    resolved: &element::Resolved,
    vars: &BTreeMap<String, String>,
) -> Result<PackageLists, BuildError> {
    let distro = vars.get("DISTRO_NAME").cloned().unwrap_or_default();
    let release = vars.get("DIB_RELEASE").cloned();
    Ok(package_installs::lists_for_build(
        resolved,
        &|k| vars.get(k).cloned(),
        &distro,
        release.as_deref(),
    )?)
}

/// SOURCE_DATE_EPOCH from the recipe or kiln's environment.
fn source_date_epoch(env: &BTreeMap<String, String>) -> Option<i64> {
    env.get("SOURCE_DATE_EPOCH")
        .cloned()
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Identifiers (UUIDs, hash seeds) derive from this: KILN_BUILD_SEED when set;
/// with SOURCE_DATE_EPOCH the image name and that time, so a rebuild is
/// byte-identical; else fresh ones, like DIB.
fn build_seed(recipe: &Recipe, env: &BTreeMap<String, String>, epoch: Option<i64>) -> String {
    if let Some(seed) = env
        .get("KILN_BUILD_SEED")
        .cloned()
        .or_else(|| std::env::var("KILN_BUILD_SEED").ok())
    {
        return seed;
    }
    match epoch {
        Some(t) => format!("{}:{t}", recipe.imagename),
        None => uuid::Uuid::new_v4().to_string(),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The kernel command line: the recipe's, else DIB_BOOTLOADER_DEFAULT_CMDLINE,
/// else DIB's default; then a serial console unless the line names one.
fn kernel_cmdline(recipe: &Recipe, env: &BTreeMap<String, String>) -> String {
    let mut line = recipe
        .kernel_cmdline
        .clone()
        .or_else(|| env.get("DIB_BOOTLOADER_DEFAULT_CMDLINE").cloned())
        .unwrap_or_else(|| "nofb nomodeset gfxpayload=text".into());
    if !line.contains("console=") {
        let serial = env
            .get("DIB_BOOTLOADER_SERIAL_CONSOLE")
            .cloned()
            .unwrap_or_else(|| "ttyS0,115200".into());
        line.push_str(&format!(" console=tty0 console={serial}"));
    }
    line.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_gets_a_serial_console_once() {
        let mut recipe = Recipe::default();
        let env = BTreeMap::new();
        assert_eq!(
            kernel_cmdline(&recipe, &env),
            "nofb nomodeset gfxpayload=text console=tty0 console=ttyS0,115200"
        );
        recipe.kernel_cmdline = Some("quiet console=ttyS1".into());
        assert_eq!(kernel_cmdline(&recipe, &env), "quiet console=ttyS1");
    }

    #[test]
    fn types_from_the_command_line_win_and_unknown_ones_are_named() {
        let recipe = Recipe::default();
        let opts = BuildOptions {
            types: Some(vec!["raw,qcow2".into(), "raw".into()]),
            ..BuildOptions::default()
        };
        assert_eq!(
            output_types(&recipe, &opts).unwrap(),
            [OutputType::Raw, OutputType::Qcow2]
        );
        let bad = BuildOptions {
            types: Some(vec!["vhd".into()]),
            ..BuildOptions::default()
        };
        assert!(matches!(
            output_types(&recipe, &bad),
            Err(BuildError::UnsupportedType(t)) if t == "vhd"
        ));
    }
}

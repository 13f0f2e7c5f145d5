//! `kiln config ...`: role configuration on a node (os-collect-config,
//! os-apply-config and os-refresh-config compatible).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::config::apply::{self, ApplyOptions, ApplyOutcome};
use crate::config::collect::{Collector, ConfigDrive, DriveLocation, Http, LocalDir};
use crate::config::report::{HttpReporter, Reporter};
use crate::config::{cache, key, refresh, render};

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Render a templates tree with merged metadata (os-apply-config)
    Render(RenderArgs),
    /// Print one metadata value, checked against a type (os-apply-config --key)
    Key(KeyArgs),
    /// Collect metadata; when it changed, render and run the refresh phases
    Apply(ApplyArgs),
}

#[derive(Args)]
pub struct MetadataArgs {
    /// Metadata JSON files, deep-merged in order (default: $OS_CONFIG_FILES, colon-separated)
    #[arg(short = 'm', long = "metadata", num_args = 1.., value_name = "FILE")]
    metadata: Vec<PathBuf>,
}

impl MetadataArgs {
    fn files(&self) -> Vec<PathBuf> {
        if !self.metadata.is_empty() {
            return self.metadata.clone();
        }
        std::env::var("OS_CONFIG_FILES")
            .map(|v| {
                v.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Args)]
pub struct RenderArgs {
    /// Templates tree mirroring / (default: $OS_CONFIG_APPLIER_TEMPLATES or /usr/libexec/os-apply-config/templates)
    #[arg(short = 't', long = "templates")]
    templates: Option<PathBuf>,
    #[command(flatten)]
    metadata: MetadataArgs,
    /// Root the files are written under
    #[arg(short = 'o', long = "output", default_value = "/")]
    output: PathBuf,
    /// Render only; write nothing
    #[arg(long)]
    validate: bool,
}

#[derive(Args)]
pub struct KeyArgs {
    /// Dotted path: a.b.0.c
    key: String,
    /// int, default, netaddress, netdevice, dsn, swiftdevices, username or raw
    #[arg(long = "type", default_value = "default")]
    type_name: String,
    /// Printed when the key is missing (not type-checked)
    #[arg(long = "key-default")]
    key_default: Option<String>,
    /// Print nothing; exit 0 if the value is true, 1 if false, 255 if not a
    /// boolean (os-apply-config --boolean-key)
    #[arg(long = "boolean", conflicts_with_all = ["type_name", "key_default"])]
    boolean: bool,
    #[command(flatten)]
    metadata: MetadataArgs,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// Run once and exit (default: keep polling)
    #[arg(long = "one-time")]
    one_time: bool,
    /// Seconds between polls
    #[arg(long = "polling-interval", default_value_t = 30)]
    polling_interval: u64,
    /// Longest wait after repeated failures, in seconds
    #[arg(long = "max-backoff", default_value_t = 600)]
    max_backoff: u64,
    /// Cache folder (default: $KILN_CONFIG_CACHE or /var/lib/kiln-config)
    #[arg(long = "cache-dir")]
    cache_dir: Option<PathBuf>,
    #[arg(short = 't', long = "templates")]
    templates: Option<PathBuf>,
    /// Root the rendered files are written under
    #[arg(short = 'o', long = "output", default_value = "/")]
    output: PathBuf,
    /// Refresh phases folder (default: $OS_REFRESH_CONFIG_BASE_DIR or /usr/libexec/os-refresh-config)
    #[arg(long = "refresh-dir")]
    refresh_dir: Option<PathBuf>,
    /// Config drive: a device or an already mounted folder (default: the device labelled config-2)
    #[arg(long = "config-drive")]
    config_drive: Option<PathBuf>,
    /// Do not look for a config drive
    #[arg(long = "no-config-drive")]
    no_config_drive: bool,
    /// Conductor metadata URL (default: the one in the config drive's kiln_config.json)
    #[arg(long = "metadata-url")]
    metadata_url: Option<String>,
    /// Config token for the conductor (default: the one in the config drive)
    #[arg(long = "config-token")]
    config_token: Option<String>,
    /// Folder of local JSON files, merged last
    #[arg(long = "local-dir")]
    local_dir: Option<PathBuf>,
    /// Conductor URL to report success or failure to (default: the config drive's status_url)
    #[arg(long = "report")]
    report: Option<String>,
}

pub fn run(cmd: ConfigCommand) -> Result<u8> {
    match cmd {
        ConfigCommand::Render(args) => {
            let templates = args.templates.unwrap_or_else(render::default_templates_dir);
            let metadata = render::load_metadata(&args.metadata.files())?;
            if args.validate {
                render::build_tree(&templates, &metadata)?;
            } else {
                render::install(&templates, &metadata, &args.output)?;
            }
            Ok(0)
        }
        ConfigCommand::Key(args) => {
            let metadata = render::load_metadata(&args.metadata.files())?;
            if args.boolean {
                return Ok(key::boolean_key(&metadata, &args.key));
            }
            let line = key::print_key(
                &metadata,
                &args.key,
                &args.type_name,
                args.key_default.as_deref(),
            )?;
            println!("{line}");
            Ok(0)
        }
        ConfigCommand::Apply(args) => run_apply(args),
    }
}

fn run_apply(args: ApplyArgs) -> Result<u8> {
    let mut sources: Vec<Box<dyn Collector>> = Vec::new();
    if !args.no_config_drive {
        let location = match args.config_drive {
            Some(p) if p.is_dir() => DriveLocation::Folder(p),
            Some(p) => DriveLocation::Device(p),
            None => DriveLocation::Probe,
        };
        sources.push(Box::new(ConfigDrive { location }));
    }
    // The conductor's metadata: the given URL, or the one the config drive names.
    let config_token = args.config_token.clone();
    sources.push(Box::new(Http::new(args.metadata_url, args.config_token)));
    if let Some(dir) = args.local_dir {
        sources.push(Box::new(LocalDir { dir }));
    }
    let opts = ApplyOptions {
        cache_dir: args.cache_dir.unwrap_or_else(cache::default_cache_dir),
        templates: args.templates.unwrap_or_else(render::default_templates_dir),
        output_root: args.output,
        refresh_base: args.refresh_dir.unwrap_or_else(refresh::default_base_dir),
        sources,
        reporter: Some(Box::new(HttpReporter {
            url: args.report,
            token: config_token,
        }) as Box<dyn Reporter>),
    };
    if !args.one_time {
        apply::poll(
            &opts,
            Duration::from_secs(args.polling_interval.max(1)),
            Duration::from_secs(args.max_backoff),
        );
    }
    match apply::apply_and_report(&opts).context("kiln config apply")? {
        ApplyOutcome::Unchanged => eprintln!("kiln: no changes"),
        ApplyOutcome::Applied { scripts } => {
            eprintln!(
                "kiln: config applied ({} refresh scripts ran)",
                scripts.len()
            )
        }
    }
    Ok(0)
}

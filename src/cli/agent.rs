//! `kiln agent ...`: the commands the deploy ramdisk runs on a node.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::agent::stream::{Checksum, ImageUrl, WriteOptions, write_image};
use crate::deploy::images::{ImageStore, LocalImageServer};
use crate::util::progress;

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Stream an image (raw or qcow2) over HTTP onto a disk, verifying its checksum
    WriteImage(WriteImageArgs),
    /// Serve the images of DIR as the conductor does (for benches and manual tests)
    #[command(hide = true)]
    ServeImages(ServeImagesArgs),
    /// Export a disk as an iSCSI target (CHAP required) until SIGTERM/SIGINT
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Block device or file to export (its size is the LUN's size)
    #[arg(long)]
    disk: PathBuf,
    /// Address to listen on, ADDR:PORT (port 0 picks a free one)
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The target's name, e.g. iqn.2026-11.org.kiln:node1
    #[arg(long)]
    target_iqn: String,
    /// CHAP user the initiator must log in as; the secret comes from KILN_CHAP_SECRET
    #[arg(long)]
    chap_user: String,
}

#[derive(Args)]
pub struct ServeImagesArgs {
    /// Folder of images
    #[arg(long)]
    dir: PathBuf,
    /// Folder for the checksum cache (default: DIR)
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct WriteImageArgs {
    /// Image URL (http://HOST:PORT/v1/images/NAME)
    #[arg(long)]
    url: String,
    /// Checksum of the image file: sha256:HEX or sha512:HEX
    #[arg(long)]
    checksum: String,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// No progress bar
    #[arg(short = 'q')]
    quiet: bool,
    /// Block device or file to write (a missing file is created, sparse)
    target: PathBuf,
}

/// `kiln agent --api-url URL` runs the agent loop; `kiln agent SUBCOMMAND` the tools.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
pub struct RunArgs {
    /// The conductor's API URL (http://HOST:PORT)
    #[arg(long)]
    api_url: Option<String>,
    /// Simulate a node: synthetic inventory, the --disk file as /dev/sim0
    #[arg(long, requires_all = ["mac", "disk"])]
    simulate: bool,
    /// Simulated node: its NIC's MAC address
    #[arg(long)]
    mac: Option<String>,
    /// Simulated node: FILE[:SIZE] backing /dev/sim0 (SIZE like 8G; default 8G)
    #[arg(long)]
    disk: Option<String>,
    /// Simulated node: memory in MiB reported in the inventory
    #[arg(long, default_value_t = 4096)]
    memory_mb: u64,
    /// Simulated node: CPU count reported in the inventory
    #[arg(long, default_value_t = 2)]
    cpus: u64,
}

pub fn run(args: AgentArgs) -> Result<u8> {
    match args.command {
        Some(AgentCommand::WriteImage(args)) => run_write_image(args),
        Some(AgentCommand::ServeImages(args)) => run_serve_images(args),
        Some(AgentCommand::Export(args)) => run_export(args),
        None => run_agent(args.run),
    }
}

fn run_agent(args: RunArgs) -> Result<u8> {
    use crate::agent::client::ConductorClient;
    use crate::agent::run::{Host, LocalHost};
    use crate::agent::simulate::SimulatedNode;
    let Some(api_url) = args.api_url else {
        anyhow::bail!("kiln agent needs --api-url URL (or a subcommand)");
    };
    let host: Arc<dyn Host> = if args.simulate {
        let disk = args.disk.unwrap_or_default();
        let (path, size) = match disk.rsplit_once(':') {
            Some((path, size)) => (
                path.to_string(),
                super::parse_size(size).map_err(|e| anyhow::anyhow!("--disk {disk}: {e}"))?,
            ),
            None => (disk.clone(), 8 << 30),
        };
        Arc::new(SimulatedNode {
            mac: args.mac.unwrap_or_default(),
            disk: PathBuf::from(path),
            disk_size: size,
            memory_mb: args.memory_mb,
            cpus: args.cpus,
        })
    } else {
        Arc::new(LocalHost)
    };
    crate::agent::run::run(&ConductorClient::new(&api_url), host)?;
    Ok(0)
}

fn run_write_image(args: WriteImageArgs) -> Result<u8> {
    let url = ImageUrl::parse(&args.url)?;
    let checksum: Checksum = args.checksum.parse()?;
    let bar = progress::bytes_bar(0, !args.quiet);
    let shown = bar.clone();
    let opts = WriteOptions {
        progress: Some(Arc::new(move |done, total| {
            shown.set_length(total);
            shown.set_position(done);
        })),
        threads: None,
        resume_window: None,
    };
    let report = write_image(&url, &checksum, &args.target, &opts);
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "wrote {} ({:?}, {} bytes, {} bytes of data) to {} in {:.1}s; {} verified{}",
            report.url,
            report.format,
            report.virtual_size,
            report.data_bytes,
            report.target.display(),
            report.seconds,
            report.checksum,
            match report.resumes {
                0 => String::new(),
                n => format!("; resumed {n} times"),
            }
        );
    }
    Ok(0)
}

/// Print the URL prefix, then serve until SIGINT/SIGTERM.
fn run_serve_images(args: ServeImagesArgs) -> Result<u8> {
    let cache = args.cache_dir.unwrap_or_else(|| args.dir.clone());
    let store = ImageStore::new(&args.dir, &cache)?;
    let server = LocalImageServer::start(store)?;
    println!("{}", server.url(""));
    std::io::Write::flush(&mut std::io::stdout())?;
    while crate::util::interrupt::check().is_ok() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(server);
    Ok(0)
}

/// Print the portal, then serve the disk over iSCSI until SIGINT/SIGTERM.
fn run_export(args: ExportArgs) -> Result<u8> {
    use crate::deploy::protocol::ChapSecret;
    use crate::iscsi::target::{RunningTarget, TargetConfig};
    let secret = std::env::var("KILN_CHAP_SECRET").map_err(|_| {
        anyhow::anyhow!("kiln agent export needs the CHAP secret in KILN_CHAP_SECRET")
    })?;
    let mutual_chap = match (
        std::env::var("KILN_MUTUAL_CHAP_USER"),
        std::env::var("KILN_MUTUAL_CHAP_SECRET"),
    ) {
        (Ok(user), Ok(secret)) => Some(ChapSecret { user, secret }),
        (Err(_), Err(_)) => None,
        _ => {
            anyhow::bail!("set both KILN_MUTUAL_CHAP_USER and KILN_MUTUAL_CHAP_SECRET, or neither")
        }
    };
    let target = RunningTarget::start(TargetConfig {
        listen: args.listen,
        target_iqn: args.target_iqn,
        chap: ChapSecret {
            user: args.chap_user,
            secret,
        },
        mutual_chap,
        disk: args.disk,
    })?;
    println!("{}", target.local_addr());
    std::io::Write::flush(&mut std::io::stdout())?;
    while crate::util::interrupt::check().is_ok() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let stats = target.stop()?;
    eprintln!(
        "kiln agent export: {} sessions, {} failed logins, {} commands, {} bytes read, {} bytes written",
        stats.sessions, stats.failed_logins, stats.commands, stats.bytes_read, stats.bytes_written
    );
    Ok(0)
}

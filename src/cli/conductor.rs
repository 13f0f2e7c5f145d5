//! `kiln conductor`: the deploy conductor service.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::deploy::api::ApiServer;
use crate::deploy::conductor::{CleanMode, Conductor, Config, QemuSettings};
use crate::deploy::protocol::DEFAULT_LISTEN;

#[derive(Args)]
pub struct ConductorArgs {
    /// Address to listen on (port 0: any free port, printed on stdout)
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: String,
    /// The SQLite state file (created if missing)
    #[arg(long)]
    state: PathBuf,
    /// Folder of images served at /v1/images/
    #[arg(long)]
    images: PathBuf,
    /// Seconds an inspection may take
    #[arg(long, default_value_t = 1800)]
    inspect_timeout: u64,
    /// Seconds a node may wait for its agent, or its agent stay silent
    #[arg(long, default_value_t = 1800)]
    callback_timeout: u64,
    /// Seconds between agent heartbeats
    #[arg(long, default_value_t = 10)]
    heartbeat_interval: u64,
    /// Cleaning between deployments
    #[arg(long, value_enum, default_value_t = CleanMode::None)]
    clean: CleanMode,
    /// qemu nodes: the deploy ramdisk's kernel
    #[arg(long, requires = "deploy_initramfs")]
    deploy_kernel: Option<PathBuf>,
    /// qemu nodes: the deploy ramdisk's initramfs
    #[arg(long, requires = "deploy_kernel")]
    deploy_initramfs: Option<PathBuf>,
    /// The conductor's URL as deployed nodes reach it, for their role config
    /// (e.g. http://10.0.2.100:6385 for qemu nodes; default: the listen address)
    #[arg(long)]
    public_url: Option<String>,
    /// qemu nodes: extra kernel command line
    #[arg(long, default_value = "console=ttyS0")]
    kernel_append: String,
}

pub fn run(args: ConductorArgs) -> Result<u8> {
    raise_open_files_limit();
    let mut config = Config {
        state: args.state.clone(),
        images: args.images.clone(),
        inspect_timeout: Duration::from_secs(args.inspect_timeout),
        callback_timeout: Duration::from_secs(args.callback_timeout),
        heartbeat_interval: Duration::from_secs(args.heartbeat_interval.max(1)),
        clean: args.clean,
        qemu: None,
        public_url: None,
    };
    // Bound first, so qemu nodes are told the real port.
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    config.public_url = Some(args.public_url.unwrap_or_else(|| format!("http://{addr}")));
    if let (Some(kernel), Some(initramfs)) = (args.deploy_kernel, args.deploy_initramfs) {
        let state_dir = args
            .state
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .join("qemu-nodes");
        config.qemu = Some(QemuSettings {
            deploy_kernel: kernel,
            deploy_initramfs: initramfs,
            state_dir,
            conductor_port: addr.port(),
            kernel_append: format!(
                "{} ipa-api-url=http://{}",
                args.kernel_append,
                crate::deploy::power::qemu::CONDUCTOR_GUEST_ADDR
            ),
        });
    }
    let conductor = Arc::new(Conductor::open(config)?);
    let server = ApiServer::new(listener, Arc::clone(&conductor))?;
    conductor.spawn_timeout_thread(Duration::from_secs(1));
    println!("http://{addr}");
    std::io::Write::flush(&mut std::io::stdout())?;
    eprintln!("kiln conductor: listening on http://{addr}");
    // The binary routes SIGINT/SIGTERM to a flag instead of dying; nothing here
    // needs unwinding (every state change is already committed), so the
    // conductor just stops once the flag is set.
    std::thread::spawn(move || server.serve());
    while crate::util::interrupt::check().is_ok() {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("kiln conductor: terminated by a signal; in-flight nodes resume on restart");
    Ok(130)
}

/// Every deploying node holds about three descriptors in the conductor (its
/// image download, the open image file, a heartbeat): a default soft limit of
/// 1024 runs out near 300 nodes, so take what the hard limit allows.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let wanted = limit.rlim_max;
            limit.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                eprintln!(
                    "kiln conductor: cannot raise the open files limit to {wanted}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

//! Command-line definitions (clap). Each command calls one library function.

mod agent;
mod build;
mod conductor;
mod config;
mod customize;
mod deploy;
mod image;
mod initrd;
mod iscsi;
mod node;
mod vnode;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build, customize and deploy the golden disk images of a bare-metal cloud"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Disk images: build, create, customize, sysprep, inspect, ls, cat, copy-in/out, convert, info, check
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Linux initramfs images: ls, extract, pack, rm
    #[command(subcommand)]
    Initrd(initrd::InitrdCommand),
    /// Deploy agent (runs in the deploy ramdisk): the agent loop (--api-url), write-image
    Agent(agent::AgentArgs),
    /// The deploy conductor: HTTP API, node flows, image server
    Conductor(conductor::ConductorArgs),
    /// Bare-metal nodes: import, list, show, manage, inspect, provide, power, rules
    Node(node::NodeArgs),
    /// Deploy a plan's roles onto nodes; status, list, undeploy
    Deploy(deploy::DeployArgs),
    /// Role configuration on a node: render, key, apply (os-apply-config / os-refresh-config / os-collect-config)
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// A virtual node behind an emulated BMC (what ipmi_sim's and sushy-emulator's hooks run)
    #[command(hide = true)]
    Vnode(vnode::VnodeArgs),
    /// The conductor's iSCSI initiator by hand (tests, benchmarks)
    #[command(subcommand, hide = true)]
    Iscsi(iscsi::IscsiCommand),
}

/// Entry point of the binary: parse, run, turn errors into a message and exit code.
pub fn main() -> ExitCode {
    crate::util::interrupt::install();
    // `kiln initrd ls | head`: a closed pipe ends the output quietly, as with
    // other Unix tools, instead of a panic in println!.
    // SAFETY: restoring the default disposition of a signal is always sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(cmd) => image::run(cmd),
        Command::Initrd(cmd) => initrd::run(cmd),
        Command::Agent(cmd) => agent::run(cmd),
        Command::Conductor(args) => conductor::run(args),
        Command::Node(args) => node::run(args),
        Command::Deploy(args) => deploy::run(args),
        Command::Config(cmd) => config::run(cmd),
        Command::Vnode(args) => vnode::run(args),
        Command::Iscsi(cmd) => iscsi::run(cmd),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kiln: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause added only when the text so far does
/// not already say it (our error types often print their source themselves).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Parse a size with an optional binary suffix, as qemu-img accepts: 65536, 64K, 2M, 1G.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => {
                    return Err(format!(
                        "unknown size suffix {c:?} in {s:?} (use K, M, G or T)"
                    ));
                }
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 65536, 64K, 2M)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert!(parse_size("2X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}

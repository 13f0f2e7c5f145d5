//! `kiln iscsi ...` (hidden): the conductor's iSCSI initiator by hand, for tests
//! and benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::deploy::protocol::ChapSecret;
use crate::iscsi::initiator::{LoginOptions, Session, discover, write_image};
use crate::util::progress;

#[derive(Subcommand)]
pub enum IscsiCommand {
    /// Log in to a target and write an image (qcow2 or raw) onto its disk LUN
    WriteImage(WriteImageArgs),
}

#[derive(Args)]
pub struct WriteImageArgs {
    /// Target portal, ADDR:PORT
    #[arg(long)]
    portal: SocketAddr,
    /// Target name (IQN)
    #[arg(long, required_unless_present = "discover")]
    target_iqn: Option<String>,
    /// CHAP user name; the secret comes from the environment (KILN_CHAP_SECRET)
    #[arg(long)]
    chap_user: String,
    /// Mutual CHAP: the name the target answers with (secret in KILN_MUTUAL_CHAP_SECRET)
    #[arg(long)]
    mutual_user: Option<String>,
    /// This initiator's name
    #[arg(long, default_value = "iqn.2026-11.org.kiln:conductor")]
    initiator_iqn: String,
    /// CRC32C header and data digests
    #[arg(long)]
    digests: bool,
    /// The disk is known to hold zeros: skip zeroing
    #[arg(long)]
    erased: bool,
    /// List the portal's targets (SendTargets) instead of writing
    #[arg(long)]
    discover: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Image file to write
    #[arg(required_unless_present = "discover")]
    image: Option<PathBuf>,
}

fn secret(var: &str, user: &str) -> Result<ChapSecret> {
    let secret = std::env::var(var).with_context(|| format!("{var} must hold the CHAP secret"))?;
    Ok(ChapSecret {
        user: user.to_string(),
        secret,
    })
}

pub fn run(cmd: IscsiCommand) -> Result<u8> {
    match cmd {
        IscsiCommand::WriteImage(args) => write_image_cmd(args),
    }
}

fn write_image_cmd(args: WriteImageArgs) -> Result<u8> {
    let chap = secret("KILN_CHAP_SECRET", &args.chap_user)?;
    if args.discover {
        let targets = discover(args.portal, &args.initiator_iqn, &chap)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&targets)?);
        } else {
            for t in targets {
                println!("{} {}", t.name, t.portals.join(" "));
            }
        }
        return Ok(0);
    }
    let (Some(target_iqn), Some(image)) = (args.target_iqn, args.image) else {
        anyhow::bail!("--target-iqn and IMAGE are required unless --discover");
    };
    let mutual_chap = match &args.mutual_user {
        Some(user) => Some(secret("KILN_MUTUAL_CHAP_SECRET", user)?),
        None => None,
    };
    let options = LoginOptions {
        initiator_iqn: args.initiator_iqn,
        target_iqn,
        chap,
        mutual_chap,
        digests: args.digests,
    };
    let started = std::time::Instant::now();
    let session = Session::login(args.portal, &options)?;
    let bar = progress::bytes_bar(0, !args.json);
    let report = write_image(&session, &image, args.erased, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("writing {} to {}", image.display(), options.target_iqn))?;
    bar.finish_and_clear();
    session.logout()?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["seconds"] = serde_json::json!(seconds);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "wrote {} bytes, zeroed {} bytes of a {}-byte image onto {} in {seconds:.2} s",
            report.bytes_written, report.bytes_zeroed, report.virtual_size, options.target_iqn
        );
    }
    Ok(0)
}

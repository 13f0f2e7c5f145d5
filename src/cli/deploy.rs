//! `kiln deploy PLAN.yaml` and `kiln deploy status|list|update|undeploy`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::node::{ConductorUrl, WaitArgs};
use crate::deploy::client::progress::NodeBars;
use crate::deploy::client::{Client, WaitOptions, WatchOptions, WatchOutput, render};
use crate::deploy::protocol::DeploymentStatus;

#[derive(Args)]
#[command(subcommand_negates_reqs = true)]
pub struct DeployArgs {
    #[command(flatten)]
    conductor: ConductorUrl,
    /// The deploy plan (YAML): images and roles
    #[arg(value_name = "PLAN.yaml", required = true)]
    plan: Option<PathBuf>,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(subcommand)]
    command: Option<DeployCommand>,
}

#[derive(Subcommand)]
enum DeployCommand {
    /// Per node of a deployment (or of all): role, hostname, state, progress, last error
    Status {
        name: Option<String>,
        #[arg(long)]
        json: bool,
        /// Keep showing the status (as the conductor's status page does) until
        /// every node rests; one line (or with --json one JSON document) per
        /// change when stdout is not a terminal
        #[arg(long)]
        watch: bool,
        /// Seconds between polls with --watch
        #[arg(long, value_name = "SECS", default_value_t = 2,
              value_parser = clap::value_parser!(u64).range(1..=3600), requires = "watch")]
        interval: u64,
    },
    /// Change a deployment's plan: new role configuration (and hostnames) reach
    /// the deployed nodes on their next poll; image or count changes are refused
    Update {
        #[arg(value_name = "PLAN.yaml")]
        plan: PathBuf,
    },
    /// Undeploy every node of a deployment
    Undeploy {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List deployments
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: DeployArgs) -> Result<u8> {
    let client = args.conductor.client();
    match (args.command, args.plan) {
        (
            Some(DeployCommand::Status {
                name,
                json,
                watch: true,
                interval,
            }),
            _,
        ) => {
            let output = if json {
                WatchOutput::JsonLines
            } else if std::io::stdout().is_terminal() {
                WatchOutput::Screen
            } else {
                WatchOutput::Lines
            };
            let options = WatchOptions {
                deployment: name,
                interval: Duration::from_secs(interval),
                output,
            };
            client.watch(&options, &mut std::io::stdout().lock())?;
        }
        (Some(DeployCommand::Status { name, json, .. }), _) => {
            let names = match name {
                Some(name) => vec![name],
                None => client.deployments()?,
            };
            let statuses = names
                .iter()
                .map(|name| client.deployment(name))
                .collect::<Result<Vec<_>, _>>()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                print_statuses(&statuses);
            }
        }
        (Some(DeployCommand::Update { plan }), _) => {
            print_statuses(&[client.update_deployment(&plan)?]);
        }
        (Some(DeployCommand::Undeploy { name, wait }), _) => {
            let status = client.undeploy(&name)?;
            let status = if wait.wait {
                wait_for(&client, &name, &wait)?
            } else {
                status
            };
            print_statuses(&[status]);
        }
        (Some(DeployCommand::List { json }), _) => {
            let names = client.deployments()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&names)?);
            } else {
                for name in names {
                    println!("{name}");
                }
            }
        }
        (None, Some(plan)) => {
            let status = client.deploy(&plan)?;
            let status = if args.wait.wait {
                wait_for(&client, &status.name, &args.wait)?
            } else {
                status
            };
            print_statuses(&[status]);
        }
        (None, None) => anyhow::bail!("kiln deploy needs a PLAN.yaml or a subcommand"),
    }
    Ok(0)
}

fn wait_for(client: &Client, name: &str, wait: &WaitArgs) -> Result<DeploymentStatus> {
    let mut bars = NodeBars::new();
    let result = client.wait_deployment(
        name,
        WaitOptions {
            timeout: wait.timeout(),
            accept_failed: false,
            on_update: &mut |status| bars.deployment(status),
        },
    );
    bars.finish();
    Ok(result?)
}

fn print_statuses(statuses: &[DeploymentStatus]) {
    for (i, status) in statuses.iter().enumerate() {
        if statuses.len() > 1 {
            if i > 0 {
                println!();
            }
            println!("{}:", status.name);
        }
        print!("{}", render::deployment_table(status));
    }
}

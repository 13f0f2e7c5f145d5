//! `kiln node ...`: enroll and drive bare-metal nodes through the conductor
//! (the words of `openstack baremetal node` and `openstack overcloud node import`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

use crate::deploy::client::progress::NodeBars;
use crate::deploy::client::{Client, WaitOptions, conductor_url, render};

/// Where the conductor is: every operator command takes it.
#[derive(Args, Clone)]
pub struct ConductorUrl {
    /// Conductor API URL [default: $KILN_CONDUCTOR_URL, else http://127.0.0.1:6385]
    #[arg(long, global = true)]
    pub url: Option<String>,
}

impl ConductorUrl {
    pub fn client(&self) -> Client {
        Client::new(&conductor_url(self.url.as_deref()))
    }
}

/// `--wait [--timeout S]`.
#[derive(Args, Clone)]
pub struct WaitArgs {
    /// Wait until the node(s) rest in a stable state; a failed state exits 1
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (default: no limit)
    #[arg(long, requires = "wait", value_name = "S")]
    pub timeout: Option<u64>,
}

impl WaitArgs {
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.map(Duration::from_secs)
    }
}

#[derive(Args)]
pub struct NodeArgs {
    #[command(flatten)]
    conductor: ConductorUrl,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Enroll the nodes of an instackenv.json or nodes.yaml (all or nothing)
    Import { file: PathBuf },
    /// List nodes: name, uuid, power and provision state, profile, last error
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show every field of a node, its inventory summary and its timeline
    Show {
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// enroll -> manageable (also: inspect failed, clean failed -> manageable)
    Manage(VerbArgs),
    /// manageable -> inspecting -> manageable (inventory, introspection rules)
    Inspect(VerbArgs),
    /// manageable -> cleaning -> available
    Provide(VerbArgs),
    /// active / deploy failed -> deleting -> cleaning -> available
    Undeploy(VerbArgs),
    /// Stop waiting for a node's agent: wait call-back -> deploy failed
    Abort(VerbArgs),
    /// active -> deploying again with the same instance info
    Rebuild(VerbArgs),
    /// Power a node on, off, or reboot it
    Power {
        action: PowerAction,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove a node from the conductor
    Delete {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Introspection rules
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Args)]
struct VerbArgs {
    #[arg(required = true)]
    nodes: Vec<String>,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum PowerAction {
    On,
    Off,
    Reboot,
}

impl PowerAction {
    fn target(self) -> &'static str {
        match self {
            Self::On => "power on",
            Self::Off => "power off",
            Self::Reboot => "reboot",
        }
    }
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Replace the introspection rules with those of a YAML or JSON file
    Set { file: PathBuf },
    /// Print the introspection rules (JSON)
    Show,
}

pub fn run(args: NodeArgs) -> Result<u8> {
    let client = args.conductor.client();
    match args.command {
        NodeCommand::Import { file } => {
            let nodes = client.import_nodes(&file)?;
            print!("{}", render::node_table(&nodes));
        }
        NodeCommand::List { json } => {
            let nodes = client.list_nodes()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print!("{}", render::node_table(&nodes));
            }
        }
        NodeCommand::Show { node, json } => {
            let details = client.show_node(&node)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&details)?);
            } else {
                print!("{}", render::node_page(&details));
            }
        }
        NodeCommand::Manage(verb) => provision(&client, "manage", verb)?,
        NodeCommand::Inspect(verb) => provision(&client, "inspect", verb)?,
        NodeCommand::Provide(verb) => provision(&client, "provide", verb)?,
        NodeCommand::Undeploy(verb) => provision(&client, "undeploy", verb)?,
        NodeCommand::Abort(verb) => provision(&client, "abort", verb)?,
        NodeCommand::Rebuild(verb) => provision(&client, "rebuild", verb)?,
        NodeCommand::Power { action, nodes } => {
            let mut records = Vec::new();
            for node in &nodes {
                records.push(client.power(node, action.target())?);
            }
            print!("{}", render::node_table(&records));
        }
        NodeCommand::Delete { nodes } => {
            for node in &nodes {
                client.delete_node(node)?;
                println!("deleted node {node}");
            }
        }
        NodeCommand::Rules(RulesCommand::Set { file }) => {
            let rules = client.set_rules(&file)?;
            let count = rules.as_array().map_or(0, Vec::len);
            println!("{count} introspection rule(s) set");
        }
        NodeCommand::Rules(RulesCommand::Show) => {
            println!("{}", serde_json::to_string_pretty(&client.rules()?)?);
        }
    }
    Ok(0)
}

/// Applies a verb to every node (stopping at the first refusal), then waits.
fn provision(client: &Client, verb: &str, args: VerbArgs) -> Result<()> {
    let mut records = Vec::new();
    for node in &args.nodes {
        records.push(client.provision(node, verb)?);
    }
    if args.wait.wait {
        let mut bars = NodeBars::new();
        let result = client.wait_nodes(
            &args.nodes,
            WaitOptions {
                timeout: args.wait.timeout(),
                accept_failed: verb == "abort",
                on_update: &mut |nodes| bars.nodes(nodes),
            },
        );
        bars.finish();
        records = result?;
    }
    print!("{}", render::node_table(&records));
    Ok(())
}

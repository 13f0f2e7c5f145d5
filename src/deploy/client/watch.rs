//! `kiln deploy status --watch`: polls GET /v1/status and shows the operators'
//! view until every watched node rests. On a terminal the screen is redrawn in
//! place (only when its text changed); otherwise one line per node change, or
//! with --json one JSON document per change.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use crate::deploy::state::ProvisionState;
use crate::deploy::status_page::{NodeStatus, StatusView, age, percent};

use super::render::{bytes, short_error, table, utc};
use super::wait::is_failed;
use super::{Client, ClientError, Result};

/// How the watch prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchOutput {
    /// Redraw the whole view in place (stdout is a terminal).
    Screen,
    /// One line per node whose state, step, progress or error changed.
    Lines,
    /// One JSON document (the view) per change.
    JsonLines,
}

pub struct WatchOptions {
    /// None: every node of the conductor.
    pub deployment: Option<String>,
    pub interval: Duration,
    pub output: WatchOutput,
}

/// Width of the text progress bar on the screen.
const BAR_WIDTH: usize = 20;

/// What makes a node's line worth printing again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeKey {
    state: ProvisionState,
    power: Option<&'static str>,
    step: Option<String>,
    percent: Option<u64>,
    error: Option<String>,
}

fn key(node: &NodeStatus) -> NodeKey {
    NodeKey {
        state: node.provision_state,
        power: node.power_state.map(|power| power.as_str()),
        step: node.deploy_step.clone(),
        percent: node.progress.map(percent),
        error: node.last_error.clone(),
    }
}

impl Client {
    /// GET /v1/status: the snapshot the status page shows.
    pub fn status(&self) -> Result<StatusView> {
        self.send("GET", "/v1/status", None)
    }

    /// The view of one deployment (or everything), refused when the
    /// deployment does not exist.
    fn watched_view(&self, deployment: Option<&str>) -> Result<StatusView> {
        let view = self.status()?;
        match deployment {
            None => Ok(view),
            Some(name) => view
                .only_deployment(name)
                .ok_or_else(|| ClientError::Refused {
                    status: 404,
                    message: format!("no deployment named {name}"),
                    allowed: None,
                }),
        }
    }

    /// Shows the view on `out` until no watched node is in flight; returns the
    /// last view, or an error naming the nodes that rest in a failed state.
    pub fn watch(&self, options: &WatchOptions, out: &mut dyn Write) -> Result<StatusView> {
        let mut seen: BTreeMap<String, NodeKey> = BTreeMap::new();
        let mut last_screen = String::new();
        loop {
            let view = self.watched_view(options.deployment.as_deref())?;
            let changed: Vec<&NodeStatus> = view
                .nodes
                .iter()
                .filter(|node| seen.get(&node.name) != Some(&key(node)))
                .collect();
            let first = seen.is_empty() && last_screen.is_empty();
            let written = match options.output {
                WatchOutput::Screen => {
                    let screen = screen(&view, options);
                    let result = if screen != last_screen {
                        redraw(out, &screen, last_screen.is_empty())
                    } else {
                        Ok(())
                    };
                    last_screen = screen;
                    result
                }
                WatchOutput::Lines => changed
                    .iter()
                    .try_for_each(|node| writeln!(out, "{}", change_line(view.generated_at, node))),
                WatchOutput::JsonLines if first || !changed.is_empty() => {
                    serde_json::to_writer(&mut *out, &view)
                        .map_err(std::io::Error::from)
                        .and_then(|()| writeln!(out))
                }
                WatchOutput::JsonLines => Ok(()),
            };
            written
                .and_then(|()| out.flush())
                .map_err(|err| ClientError::Failed {
                    what: "writing the status".to_string(),
                    message: err.to_string(),
                })?;
            seen = view
                .nodes
                .iter()
                .map(|node| (node.name.clone(), key(node)))
                .collect();
            if view.is_settled() {
                return settled(view, options.deployment.as_deref());
            }
            std::thread::sleep(options.interval);
        }
    }
}

/// The end of a watch: Ok, or the nodes resting in a failed state.
fn settled(view: StatusView, deployment: Option<&str>) -> Result<StatusView> {
    let failures: Vec<String> = view
        .nodes
        .iter()
        .filter(|node| is_failed(node.provision_state))
        .map(|node| match &node.last_error {
            Some(error) => format!("node {} is {}: {error}", node.name, node.provision_state),
            None => format!("node {} is {}", node.name, node.provision_state),
        })
        .collect();
    if failures.is_empty() {
        return Ok(view);
    }
    Err(ClientError::Failed {
        what: deployment.map_or_else(|| "nodes".to_string(), |name| format!("deployment {name}")),
        message: failures.join("; "),
    })
}

/// "2026-11-21 22:14:05 node-b: deploying, write_image 3.0 MiB / 4.0 MiB (75%), power on".
pub fn change_line(now: i64, node: &NodeStatus) -> String {
    let mut line = format!("{} {}: {}", utc(now), node.name, node.provision_state);
    if let Some(step) = &node.deploy_step {
        line.push_str(&format!(", {step}"));
    }
    if let Some(progress) = node.progress {
        line.push_str(&format!(
            " {} / {} ({}%)",
            bytes(progress.done),
            bytes(progress.total),
            percent(progress)
        ));
    }
    if let Some(power) = node.power_state {
        line.push_str(&format!(", {}", power.as_str()));
    }
    if let Some(error) = &node.last_error {
        line.push_str(&format!(", last error: {}", short_error(Some(error))));
    }
    line
}

/// The whole screen: a heading and one table row per node with a text bar.
pub fn screen(view: &StatusView, options: &WatchOptions) -> String {
    let what = options.deployment.as_deref().map_or_else(
        || "all nodes".to_string(),
        |name| format!("deployment {name}"),
    );
    let mut text = format!(
        "kiln: {what} as of {} UTC (every {} s; Ctrl-C stops)\n\n",
        utc(view.generated_at),
        options.interval.as_secs().max(1)
    );
    let rows: Vec<Vec<String>> = view
        .nodes
        .iter()
        .map(|node| {
            vec![
                node.name.clone(),
                node.power_state
                    .map_or_else(|| "-".to_string(), |power| power.as_str().to_string()),
                node.provision_state.as_str().to_string(),
                node.role.clone().unwrap_or_else(|| "-".to_string()),
                node.hostname.clone().unwrap_or_else(|| "-".to_string()),
                node.deploy_step.clone().unwrap_or_else(|| "-".to_string()),
                node.progress.map_or_else(
                    || "-".to_string(),
                    |progress| {
                        format!(
                            "{} {} / {}",
                            bar(percent(progress)),
                            bytes(progress.done),
                            bytes(progress.total)
                        )
                    },
                ),
                node.last_heartbeat
                    .map_or_else(|| "-".to_string(), |time| age(view.generated_at, time)),
                short_error(node.last_error.as_deref()),
            ]
        })
        .collect();
    text.push_str(&table(
        &[
            "NODE",
            "POWER",
            "PROVISION STATE",
            "ROLE",
            "HOSTNAME",
            "STEP",
            "PROGRESS",
            "HEARTBEAT",
            "LAST ERROR",
        ],
        &rows,
    ));
    text
}

/// "[=========>          ]  45%".
pub fn bar(percent: u64) -> String {
    let percent = percent.min(100) as usize;
    let filled = percent * BAR_WIDTH / 100;
    let mut text = String::with_capacity(BAR_WIDTH + 8);
    text.push('[');
    for i in 0..BAR_WIDTH {
        text.push(match i.cmp(&filled) {
            std::cmp::Ordering::Less => '=',
            std::cmp::Ordering::Equal => '>',
            std::cmp::Ordering::Greater => ' ',
        });
    }
    text.push(']');
    text.push_str(&format!(" {percent:>3}%"));
    text
}

/// Draws the screen over the previous one: home the cursor, rewrite each line
/// clearing its rest, clear below. The whole screen is cleared only the first
/// time, so redraws do not flicker.
fn redraw(out: &mut dyn Write, screen: &str, first: bool) -> std::io::Result<()> {
    let mut buffer = String::with_capacity(screen.len() + 256);
    buffer.push_str(if first { "\x1b[H\x1b[2J" } else { "\x1b[H" });
    for line in screen.lines() {
        buffer.push_str(line);
        buffer.push_str("\x1b[K\n");
    }
    buffer.push_str("\x1b[J");
    out.write_all(buffer.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::protocol::CommandProgress;
    use crate::deploy::store::PowerState;

    fn node(state: ProvisionState, done: u64) -> NodeStatus {
        NodeStatus {
            name: "node-b".to_string(),
            uuid: uuid::Uuid::nil(),
            power_state: Some(PowerState::On),
            provision_state: state,
            target_provision_state: None,
            deployment: Some("overcloud".to_string()),
            role: Some("Compute".to_string()),
            hostname: Some("cmp-0".to_string()),
            profile: None,
            image: None,
            deploy_step: Some("write_image".to_string()),
            progress: Some(CommandProgress {
                done,
                total: 1 << 20,
            }),
            last_error: None,
            last_heartbeat: Some(90),
            state_entered_at: 0,
        }
    }

    #[test]
    fn bars_fill_with_the_percentage() {
        assert_eq!(bar(0), "[>                   ]   0%");
        assert_eq!(bar(45), "[=========>          ]  45%");
        assert_eq!(bar(100), "[====================] 100%");
        assert_eq!(bar(250), bar(100));
    }

    #[test]
    fn a_change_line_names_node_state_step_and_progress() {
        let line = change_line(100, &node(ProvisionState::Deploying, 1 << 19));
        assert_eq!(
            line,
            "1970-01-01 00:01:40 node-b: deploying, write_image 512.0 KiB / 1.0 MiB (50%), \
             power on"
        );
    }

    #[test]
    fn only_what_an_operator_cares_about_counts_as_a_change() {
        let a = node(ProvisionState::Deploying, 1000);
        let mut b = a.clone();
        b.last_heartbeat = Some(95);
        b.progress = Some(CommandProgress {
            done: 1001,
            total: 1 << 20,
        });
        assert_eq!(key(&a), key(&b), "same percent, newer heartbeat");
        b.provision_state = ProvisionState::Active;
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn the_screen_shows_a_bar_and_the_heartbeat_age() {
        let view = StatusView {
            generated_at: 100,
            nodes: vec![node(ProvisionState::Deploying, 3 << 18)],
            deployments: Vec::new(),
        };
        let options = WatchOptions {
            deployment: Some("overcloud".to_string()),
            interval: Duration::from_secs(2),
            output: WatchOutput::Screen,
        };
        let text = screen(&view, &options);
        assert!(text.starts_with("kiln: deployment overcloud as of 1970-01-01 00:01:40"));
        assert!(
            text.contains("[===============>    ]  75% 768.0 KiB / 1.0 MiB"),
            "{text}"
        );
        assert!(text.contains("10 s ago"), "{text}");
        let mut out = Vec::new();
        redraw(&mut out, &text, false).unwrap();
        let drawn = String::from_utf8(out).unwrap();
        assert!(drawn.starts_with("\x1b[H") && !drawn.contains("\x1b[2J"));
        assert!(drawn.ends_with("\x1b[K\n\x1b[J"));
    }
}

//! Progress bars for `--wait` on a terminal: one line per node with its state,
//! and the image bytes written while it deploys. Hidden when stderr is not a
//! terminal, so piped and scripted runs print only their result.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::deploy::protocol::DeploymentStatus;

use super::NodeRecord;

/// One bar per node, created as nodes first appear.
pub struct NodeBars {
    multi: MultiProgress,
    bars: BTreeMap<String, ProgressBar>,
}

impl Default for NodeBars {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeBars {
    pub fn new() -> NodeBars {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        NodeBars {
            multi: MultiProgress::with_draw_target(target),
            bars: BTreeMap::new(),
        }
    }

    /// Shows one node: its state, and bytes written of total while streaming.
    pub fn update(&mut self, node: &str, state: &str, progress: Option<(u64, Option<u64>)>) {
        let multi = &self.multi;
        let bar = self.bars.entry(node.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::no_length());
            // The conductor is polled once a second; keep the spinner alive between.
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        match progress {
            Some((done, Some(total))) if total > 0 => {
                bar.set_style(style(
                    "{prefix:20} {msg:16} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec})",
                ));
                bar.set_length(total);
                bar.set_position(done.min(total));
            }
            _ => {
                bar.set_style(style("{spinner} {prefix:20} {msg} [{elapsed}]"));
                bar.tick();
            }
        }
        bar.set_prefix(node.to_string());
        bar.set_message(state.to_string());
    }

    pub fn nodes(&mut self, nodes: &[NodeRecord]) {
        for node in nodes {
            self.update(
                &node.name,
                node.provision_state.as_str(),
                node.progress_bytes(),
            );
        }
    }

    pub fn deployment(&mut self, status: &DeploymentStatus) {
        for node in &status.nodes {
            let progress = node.progress.map(|p| (p.done, Some(p.total)));
            self.update(&node.node, &node.state, progress);
        }
    }

    /// Removes the bars, leaving the terminal to the result.
    pub fn finish(self) {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

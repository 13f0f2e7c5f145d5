//! The status page as one self-contained HTML5 document: inline CSS, no
//! scripts, no external assets, and a meta refresh so it updates by itself.
//! Every text that comes from operators or agents (names, errors, messages) is
//! escaped; CSS classes come from fixed lists, never from data.

use std::fmt::Write as _;

use crate::deploy::client::render::{bytes, config_text, utc};
use crate::deploy::protocol::CommandProgress;
use crate::deploy::state::ProvisionState;

use super::{DeploymentView, NodeStatus, StatusView, age, percent};

/// Seconds between the page's own reloads.
pub const REFRESH_SECONDS: u32 = 2;

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em}\
p.meta{color:#666;margin:0 0 1em}\
table{border-collapse:collapse;background:#fff;font-size:.9em}\
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#eee}td.num{text-align:right}\
.uuid,.time{font-family:ui-monospace,monospace;font-size:.9em}\
.ok{color:#1a7f37;font-weight:600}.failed{color:#c62828;font-weight:600}\
.busy{color:#0550ae;font-weight:600}.idle{color:#555}\
.error{color:#c62828;max-width:28em;white-space:pre-wrap;word-break:break-word}\
progress{width:9em;vertical-align:middle}\
details{margin:.4em 0}summary{cursor:pointer}\
small{color:#666}td.name,td.state,td.power{white-space:nowrap}";

/// The whole page for `view`.
pub fn page(view: &StatusView) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(
        out,
        "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">"
    );
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<title>kiln conductor status</title>\n");
    let _ = writeln!(out, "<style>{STYLE}</style>\n</head>\n<body>");
    out.push_str("<h1>kiln conductor</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"meta\">{} node{}, {} deployment{} &middot; as of {} UTC &middot; \
         refreshes every {REFRESH_SECONDS} s</p>",
        view.nodes.len(),
        plural(view.nodes.len()),
        view.deployments.len(),
        plural(view.deployments.len()),
        utc(view.generated_at),
    );
    node_table(&mut out, view);
    for deployment in &view.deployments {
        deployment_section(&mut out, view.generated_at, deployment);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn node_table(out: &mut String, view: &StatusView) {
    out.push_str("<h2>Nodes</h2>\n");
    if view.nodes.is_empty() {
        out.push_str("<p>No nodes are enrolled.</p>\n");
        return;
    }
    out.push_str(
        "<table id=\"nodes\">\n<thead><tr><th>Name</th><th>UUID</th><th>Power</th>\
         <th>Provision state</th><th>Deployment / role / hostname</th><th>Profile</th>\
         <th>Image</th><th>Deploy step</th><th>Progress</th><th>Last error</th>\
         <th>Last heartbeat</th></tr></thead>\n<tbody>\n",
    );
    for node in &view.nodes {
        node_row(out, view.generated_at, node);
    }
    out.push_str("</tbody>\n</table>\n");
}

fn node_row(out: &mut String, now: i64, node: &NodeStatus) {
    let state = node.provision_state;
    let uuid = node.uuid.to_string();
    let placement = [&node.deployment, &node.role, &node.hostname]
        .iter()
        .map(|part| part.as_deref().unwrap_or("-"))
        .collect::<Vec<_>>()
        .join(" / ");
    let target = match node.target_provision_state {
        Some(target) => format!(" <small>&rarr; {}</small>", escape(target.as_str())),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "<tr class=\"node\" data-node=\"{name}\" data-state=\"{state_text}\">\
         <td class=\"name\">{name}</td>\
         <td class=\"uuid\" title=\"{uuid}\">{short}</td>\
         <td class=\"power\">{power}</td>\
         <td class=\"state {class}\">{state_text}{target}</td>\
         <td>{placement}</td><td>{profile}</td><td>{image}</td><td>{step}</td>\
         <td>{progress}</td><td class=\"error\">{error}</td><td>{heartbeat}</td></tr>",
        name = escape(&node.name),
        state_text = escape(state.as_str()),
        short = escape(uuid.get(..8).unwrap_or(&uuid)),
        power = escape(node.power_state.map_or("-", |power| power.as_str())),
        class = state_class(state),
        placement = escape(&placement),
        profile = escape(node.profile.as_deref().unwrap_or("-")),
        image = escape(node.image.as_deref().unwrap_or("-")),
        step = escape(node.deploy_step.as_deref().unwrap_or("-")),
        progress = progress_cell(node.progress),
        error = escape(node.last_error.as_deref().unwrap_or("")),
        heartbeat = time_cell(now, node.last_heartbeat),
    );
}

fn deployment_section(out: &mut String, now: i64, deployment: &DeploymentView) {
    let name = escape(&deployment.name);
    let _ = writeln!(
        out,
        "<section class=\"deployment\" data-deployment=\"{name}\">\n\
         <h2>Deployment {name}</h2>"
    );
    if deployment.nodes.is_empty() {
        out.push_str("<p>No nodes.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table>\n<thead><tr><th>Node</th><th>Role</th><th>Hostname</th>\
         <th>Provision state</th><th>Deploy step</th><th>Progress</th><th>Config</th>\
         <th>Last error</th></tr></thead>\n<tbody>\n",
    );
    for node in &deployment.nodes {
        let state = node.state.parse::<ProvisionState>().ok();
        let _ = writeln!(
            out,
            "<tr data-node=\"{name}\"><td>{name}</td><td>{role}</td><td>{host}</td>\
             <td class=\"state {class}\">{state}</td><td>{step}</td><td>{progress}</td>\
             <td>{config}</td><td class=\"error\">{error}</td></tr>",
            name = escape(&node.node),
            role = escape(node.role.as_deref().unwrap_or("-")),
            host = escape(node.hostname.as_deref().unwrap_or("-")),
            class = state.map_or("idle", state_class),
            state = escape(&node.state),
            step = escape(node.deploy_step.as_deref().unwrap_or("-")),
            progress = progress_cell(node.progress),
            config = escape(&config_text(node.config.as_ref())),
            error = escape(node.last_error.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</tbody>\n</table>\n");
    for timeline in &deployment.timelines {
        // `open`: the page reloads every few seconds and would fold it again.
        let _ = writeln!(
            out,
            "<details open><summary>Timeline of {} ({} event{})</summary>",
            escape(&timeline.node),
            timeline.events.len() + timeline.earlier_events,
            plural(timeline.events.len() + timeline.earlier_events)
        );
        out.push_str(
            "<table>\n<thead><tr><th>Time (UTC)</th><th>Event</th><th>From &rarr; to</th>\
             <th>Message</th></tr></thead>\n<tbody>\n",
        );
        for event in &timeline.events {
            let _ = writeln!(
                out,
                "<tr><td class=\"time\" title=\"{ago}\">{time}</td><td>{event}</td>\
                 <td>{from} &rarr; {to}</td><td>{message}</td></tr>",
                ago = escape(&age(now, event.time)),
                time = escape(&utc(event.time)),
                event = escape(&event.event),
                from = escape(&event.from),
                to = escape(&event.to),
                message = escape(event.message.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</tbody>\n</table>\n");
        if timeline.earlier_events > 0 {
            let _ = writeln!(
                out,
                "<p><small>{} earlier event{} not shown.</small></p>",
                timeline.earlier_events,
                plural(timeline.earlier_events)
            );
        }
        out.push_str("</details>\n");
    }
    out.push_str("</section>\n");
}

/// A bar and "12.0 MiB / 16.0 MiB (75%)", or "-" before the agent reports.
fn progress_cell(progress: Option<CommandProgress>) -> String {
    let Some(progress) = progress else {
        return "-".to_string();
    };
    let percent = percent(progress);
    format!(
        "<progress max=\"100\" value=\"{percent}\">{percent}%</progress> \
         <span class=\"bytes\">{} / {} ({percent}%)</span>",
        escape(&bytes(progress.done)),
        escape(&bytes(progress.total)),
    )
}

/// "4 s ago" with the UTC time below it, or "-" for never.
fn time_cell(now: i64, time: Option<i64>) -> String {
    match time {
        Some(time) => format!(
            "{}<br><small class=\"time\">{} UTC</small>",
            escape(&age(now, time)),
            escape(&utc(time))
        ),
        None => "-".to_string(),
    }
}

/// The CSS class of a state: settled well, failed, working, or resting.
fn state_class(state: ProvisionState) -> &'static str {
    match state {
        ProvisionState::Active | ProvisionState::Available => "ok",
        ProvisionState::DeployFailed
        | ProvisionState::InspectFailed
        | ProvisionState::CleanFailed
        | ProvisionState::Error => "failed",
        state if state.is_in_flight() => "busy",
        _ => "idle",
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// Text made safe for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in HTML text; show them.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

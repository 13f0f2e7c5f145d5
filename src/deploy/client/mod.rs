//! The operator's HTTP client for the conductor API: one function per `kiln node` /
//! `kiln deploy` command. Files (node lists, rules, plans) are parsed and validated
//! here with the conductor's own parsers before anything is sent, so a bad file is
//! reported with its node index or role and field and the conductor never sees it.

mod model;
pub mod progress;
pub mod render;
mod wait;
pub mod watch;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::deploy::protocol::{DeploymentStatus, ErrorBody, PowerRequest, ProvisionRequest};

pub use model::{NodeDetails, NodeRecord, TimelineEntry};
pub use wait::WaitOptions;
pub use watch::{WatchOptions, WatchOutput};

/// Where operator commands find the conductor when neither --url nor the
/// environment says otherwise (Ironic's port).
pub const DEFAULT_URL: &str = "http://127.0.0.1:6385";
/// The environment variable that names the conductor URL.
pub const URL_ENV: &str = "KILN_CONDUCTOR_URL";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the conductor at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The conductor refused the request; `message` is its own wording.
    #[error("{}{}", .message, allowed_suffix(.allowed.as_deref(), .message))]
    Refused {
        status: u16,
        message: String,
        allowed: Option<Vec<String>>,
    },
    #[error("the conductor at {url} sent an answer kiln cannot read: {message}")]
    BadAnswer { url: String, message: String },
    #[error(transparent)]
    Import(#[from] crate::deploy::import::ImportError),
    #[error(transparent)]
    Rules(#[from] crate::deploy::rules::RulesError),
    #[error(transparent)]
    Plan(#[from] crate::deploy::plan::PlanError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} did not reach a stable state within {seconds} s (last state: {state})")]
    WaitTimeout {
        what: String,
        seconds: u64,
        state: String,
    },
    #[error("{what} failed: {message}")]
    Failed { what: String, message: String },
}

/// The conductor's 409 already lists the allowed verbs in its message; add them
/// only when it did not.
fn allowed_suffix(allowed: Option<&[String]>, message: &str) -> String {
    match allowed {
        Some(verbs) if !message.contains("allowed verbs") => {
            if verbs.is_empty() {
                " (no verb is allowed in this state)".to_string()
            } else {
                format!(" (allowed verbs: {})", verbs.join(", "))
            }
        }
        _ => String::new(),
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The conductor URL an operator command uses: --url, else $KILN_CONDUCTOR_URL,
/// else the default.
pub fn conductor_url(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::env::var(URL_ENV).ok().filter(|url| !url.is_empty()))
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

/// A connection to one conductor.
pub struct Client {
    base: String,
    http: ureq::Agent,
}

impl Client {
    /// `url` is the conductor's root (http://HOST:PORT), with or without `/v1`.
    pub fn new(url: &str) -> Client {
        let base = url
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_string();
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Client { base, http }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    // ---- nodes -------------------------------------------------------------

    /// `kiln node import FILE`: validates the whole file locally, then enrolls
    /// every node in one request (the conductor is all or nothing too).
    pub fn import_nodes(&self, file: &Path) -> Result<Vec<NodeRecord>> {
        let text = read(file)?;
        crate::deploy::import::parse_nodes(&text, &file.display().to_string())?;
        let answer: Value = self.send("POST", "/v1/nodes", Some(&text))?;
        self.decode("/v1/nodes", field(answer, "nodes"))
    }

    /// `kiln node list`.
    pub fn list_nodes(&self) -> Result<Vec<NodeRecord>> {
        let answer: Value = self.send("GET", "/v1/nodes", None)?;
        self.decode("/v1/nodes", field(answer, "nodes"))
    }

    /// One node by name or UUID.
    pub fn node(&self, node: &str) -> Result<NodeRecord> {
        self.send("GET", &node_path(node, ""), None)
    }

    /// `kiln node show`: the node, its inventory (if inspected) and its timeline.
    pub fn show_node(&self, node: &str) -> Result<NodeDetails> {
        let record = self.node(node)?;
        let id = record.uuid.to_string();
        let inventory = match self.send::<Value>("GET", &node_path(&id, "/inventory"), None) {
            Ok(answer) => Some(field(answer, "inventory")),
            Err(ClientError::Refused { status: 404, .. }) => None,
            Err(err) => return Err(err),
        };
        let timeline: Value = self.send("GET", &node_path(&id, "/timeline"), None)?;
        let timeline = self.decode("/timeline", field(timeline, "events"))?;
        Ok(NodeDetails {
            node: record,
            inventory,
            timeline,
        })
    }

    /// `kiln node manage|inspect|provide|undeploy|abort|rebuild NODE`.
    pub fn provision(&self, node: &str, verb: &str) -> Result<NodeRecord> {
        let body = json_text(&ProvisionRequest {
            target: verb.to_string(),
        });
        self.send(
            "PUT",
            &node_path(node, "/states/provision"),
            Some(body.as_str()),
        )
    }

    /// `kiln node power on|off|reboot NODE`; `target` is "power on", "power off"
    /// or "reboot".
    pub fn power(&self, node: &str, target: &str) -> Result<NodeRecord> {
        let body = json_text(&PowerRequest {
            target: target.to_string(),
        });
        self.send(
            "PUT",
            &node_path(node, "/states/power"),
            Some(body.as_str()),
        )
    }

    /// `kiln node delete NODE`.
    pub fn delete_node(&self, node: &str) -> Result<()> {
        self.send::<Value>("DELETE", &node_path(node, ""), None)?;
        Ok(())
    }

    /// `kiln node rules set FILE`: validated locally, then replaces the rules.
    pub fn set_rules(&self, file: &Path) -> Result<Value> {
        let text = read(file)?;
        crate::deploy::rules::parse_rules(&text, &file.display().to_string())?;
        self.send("PUT", "/v1/rules", Some(&text))
    }

    /// `kiln node rules show`.
    pub fn rules(&self) -> Result<Value> {
        self.send("GET", "/v1/rules", None)
    }

    // ---- deployments ---------------------------------------------------------

    /// `kiln deploy PLAN`: validated locally, then started. Node matching happens
    /// on the conductor, which refuses the plan before touching any node.
    pub fn deploy(&self, plan: &Path) -> Result<DeploymentStatus> {
        let text = read(plan)?;
        crate::deploy::plan::parse_plan(&text, &plan.display().to_string())?;
        self.send("POST", "/v1/deployments", Some(&text))
    }

    /// `kiln deploy update PLAN.yaml`: the changed plan of a deployment; nodes
    /// apply the new role configuration on their next poll.
    pub fn update_deployment(&self, plan: &Path) -> Result<DeploymentStatus> {
        let text = read(plan)?;
        let parsed = crate::deploy::plan::parse_plan(&text, &plan.display().to_string())?;
        self.send(
            "PUT",
            &format!("/v1/deployments/{}", segment(&parsed.name)),
            Some(&text),
        )
    }

    /// `kiln deploy list`.
    pub fn deployments(&self) -> Result<Vec<String>> {
        let answer: Value = self.send("GET", "/v1/deployments", None)?;
        self.decode("/v1/deployments", field(answer, "deployments"))
    }

    /// `kiln deploy status NAME`.
    pub fn deployment(&self, name: &str) -> Result<DeploymentStatus> {
        self.send("GET", &format!("/v1/deployments/{}", segment(name)), None)
    }

    /// `kiln deploy undeploy NAME`.
    pub fn undeploy(&self, name: &str) -> Result<DeploymentStatus> {
        self.send(
            "DELETE",
            &format!("/v1/deployments/{}", segment(name)),
            None,
        )
    }

    // ---- transport -----------------------------------------------------------

    /// Sends a request and decodes a 2xx JSON answer (an empty body is `null`).
    /// Refusals carry the conductor's own message and allowed verbs.
    fn send<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&str>) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let unreachable = |err: ureq::Error| ClientError::Unreachable {
            url: self.base.clone(),
            message: err.to_string(),
        };
        let response = match method {
            "GET" => self.http.get(&url).call(),
            "DELETE" => self.http.delete(&url).call(),
            "POST" => self.http.post(&url).send(body.unwrap_or("")),
            _ => self.http.put(&url).send(body.unwrap_or("")),
        };
        let mut response = response.map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(unreachable)?;
        if !(200..300).contains(&status) {
            return Err(refusal(status, &text));
        }
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|err| ClientError::BadAnswer {
                url: url.clone(),
                message: err.to_string(),
            })?
        };
        self.decode(&url, value)
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, value: Value) -> Result<T> {
        serde_json::from_value(value).map_err(|err| ClientError::BadAnswer {
            url: what.to_string(),
            message: err.to_string(),
        })
    }
}

fn refusal(status: u16, text: &str) -> ClientError {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => ClientError::Refused {
            status,
            message: body.error.message,
            allowed: body.error.allowed,
        },
        Err(_) => ClientError::Refused {
            status,
            message: format!("HTTP {status}: {}", text.trim()),
            allowed: None,
        },
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn field(mut value: Value, name: &str) -> Value {
    value.get_mut(name).map(Value::take).unwrap_or(Value::Null)
}

fn json_text<T: Serialize>(value: &T) -> String {
    // Plain structs of strings always encode.
    serde_json::to_string(value).unwrap_or_default()
}

fn node_path(node: &str, rest: &str) -> String {
    format!("/v1/nodes/{}{rest}", segment(node))
}

/// Percent-encodes a node or deployment name for one URL path segment.
fn segment(name: &str) -> String {
    let mut out = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;

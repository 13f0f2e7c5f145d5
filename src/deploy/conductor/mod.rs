//! The conductor: node flows (inspect, provide/clean, deploy, undeploy, abort,
//! rebuild), the agent protocol's conductor side and timeouts.
//!
//! Every state change goes through `Store::transition`, committed before the
//! conductor acts on it (powers a node, hands out a command), so a conductor
//! killed at any point restarts from a state it really was in. One mutex over
//! the store serializes the flows; power calls are short (manual, qemu QMP).

mod config;
mod iscsi;
mod power;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};

use crate::deploy::images::{ImageError, ImageStore};
use crate::deploy::power::{BootDevice, PowerError};
use crate::deploy::protocol::{
    Command, CommandKind, CommandProgress, CommandReport, CommandStatus, ConfigdriveParams,
    DeploymentNode, DeploymentStatus, EraseParams, HeartbeatRequest, HeartbeatResponse,
    LookupRequest, LookupResponse, WriteImageParams,
};
use crate::deploy::state::{Event, ProvisionState};
use crate::deploy::store::{self, InstanceInfo, Node, Store, StoreError};
use crate::deploy::{plan, rules};

pub use power::QemuSettings;

/// Deploy steps, stored as the node's `deploy_step` and used as command ids.
const STEP_WRITE_IMAGE: &str = "write_image";
const STEP_CONFIGDRIVE: &str = "write_configdrive";
const STEP_ERASE: &str = "erase_metadata";

/// What cleaning does between deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CleanMode {
    /// Nothing: cleaning completes at once (TripleO's automated_clean=false).
    None,
    /// Boot the agent and wipe partition tables and filesystem signatures.
    Metadata,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite state file.
    pub state: PathBuf,
    /// The image directory served at /v1/images/.
    pub images: PathBuf,
    pub inspect_timeout: Duration,
    /// How long a node may wait for its agent, or its agent stay silent.
    pub callback_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub clean: CleanMode,
    /// Needed only for nodes with the qemu driver.
    pub qemu: Option<QemuSettings>,
    /// The conductor's URL as deployed nodes reach it (their config drive points
    /// there for metadata and config reports); None: nodes get no endpoints.
    pub public_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConductorError {
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        message: String,
        allowed: Option<Vec<String>>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Power(#[from] PowerError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl ConductorError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::Conflict { .. } => 409,
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::NotImplemented(_) => 501,
            Self::Image(ImageError::NotFound { .. }) => 400,
            _ => 500,
        }
    }

    pub fn allowed(&self) -> Option<Vec<String>> {
        match self {
            Self::Conflict { allowed, .. } => allowed.clone(),
            _ => None,
        }
    }
}

impl From<StoreError> for ConductorError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NodeNotFound(_) | StoreError::MacNotFound(_) => {
                Self::NotFound(err.to_string())
            }
            StoreError::Transition { ref source, .. } => {
                let allowed = source
                    .allowed_verbs()
                    .iter()
                    .map(|verb| verb.as_str().to_string())
                    .collect();
                Self::Conflict {
                    message: err.to_string(),
                    allowed: Some(allowed),
                }
            }
            StoreError::DuplicateNames(_)
            | StoreError::DuplicateMacs(_)
            | StoreError::NotDeletable { .. } => Self::Conflict {
                message: err.to_string(),
                allowed: None,
            },
            other => Self::Store(other),
        }
    }
}

pub type Result<T, E = ConductorError> = std::result::Result<T, E>;

pub struct Conductor {
    // Shared with the iSCSI deploy threads, which record their progress.
    store: Arc<Mutex<Store>>,
    config: Config,
    images: ImageStore,
    drivers: power::Drivers,
    iscsi: iscsi::Exports,
}

impl Conductor {
    /// Opens the state file (creating it) and the image directory. Nothing is
    /// powered or redone: in-flight nodes continue when their agents call in, or
    /// time out.
    pub fn open(config: Config) -> Result<Conductor> {
        let state = config.state.to_string_lossy().into_owned();
        let store = Store::open(&state)?;
        let cache = config
            .state
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("image-checksums");
        let images = ImageStore::new(&config.images, &cache)?;
        Ok(Conductor {
            store: Arc::new(Mutex::new(store)),
            drivers: power::Drivers::new(config.qemu.clone()),
            config,
            images,
            iscsi: iscsi::Exports::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the SQLite connection usable: every
        // change is its own transaction.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- operator: nodes -------------------------------------------------

    pub fn nodes(&self) -> Result<Vec<Node>> {
        Ok(self
            .store()
            .nodes()?
            .into_iter()
            .map(|n| n.redacted())
            .collect())
    }

    pub fn node(&self, id: &str) -> Result<Node> {
        Ok(self.store().node(id)?.redacted())
    }

    /// Enrolls the nodes of an instackenv.json / nodes.yaml body: all or nothing.
    pub fn create_nodes(&self, body: &str) -> Result<Vec<Node>> {
        let nodes = crate::deploy::import::parse_nodes(body, "request body")
            .map_err(|err| ConductorError::BadRequest(err.to_string()))?;
        let created = self.store().create_nodes(&nodes)?;
        Ok(created.into_iter().map(|n| n.redacted()).collect())
    }

    pub fn delete_node(&self, id: &str) -> Result<()> {
        self.store().delete_node(id)?;
        Ok(())
    }

    pub fn inventory(&self, id: &str) -> Result<Value> {
        let store = self.store();
        let node = store.node(id)?;
        match store.inventory(id)? {
            Some(stored) => Ok(json!({
                "node": node.uuid,
                "collected_at": stored.collected_at,
                "inventory": stored.inventory,
            })),
            None => Err(ConductorError::NotFound(format!(
                "node {} has not been inspected",
                node.name
            ))),
        }
    }

    pub fn timeline(&self, id: &str) -> Result<Value> {
        let events = self.store().timeline(id)?;
        let events: Vec<Value> = events
            .iter()
            .map(|event| {
                json!({
                    "time": event.time,
                    "from": event.from_state.as_str(),
                    "to": event.to_state.as_str(),
                    "event": event.event.as_str(),
                    "message": event.message,
                })
            })
            .collect();
        Ok(Value::Array(events))
    }

    pub fn rules(&self) -> Result<Value> {
        Ok(self.store().introspection_rules()?)
    }

    /// Replaces the introspection rules (YAML or JSON list).
    pub fn set_rules(&self, body: &str) -> Result<Value> {
        let rules: Value = serde_yaml_ng::from_str(body)
            .map_err(|err| ConductorError::BadRequest(format!("rules: {err}")))?;
        rules::parse_rules(body, "rules")
            .map_err(|err| ConductorError::BadRequest(err.to_string()))?;
        self.store().set_introspection_rules(&rules)?;
        Ok(rules)
    }

    // ---- operator: provision and power verbs -----------------------------

    /// Applies an operator verb and starts its flow. A verb the node's state does
    /// not allow is a Conflict naming the allowed verbs.
    pub fn provision(&self, id: &str, target: &str) -> Result<Node> {
        let event: Event = target
            .parse()
            .ok()
            .filter(|event: &Event| event.is_verb())
            .ok_or_else(|| {
                ConductorError::BadRequest(format!(
                    "unknown provision target \"{target}\"; expected manage, inspect, provide, \
                     deploy, undeploy, rebuild or abort"
                ))
            })?;
        let store = self.store();
        let node = store.node(id)?;
        if matches!(event, Event::Deploy) && node.instance_info.image.is_none() {
            // Check the state first, so a bad transition is still a 409.
            crate::deploy::state::apply(node.provision_state, event).map_err(|source| {
                StoreError::Transition {
                    node: node.name.clone(),
                    source,
                }
            })?;
            return Err(ConductorError::BadRequest(format!(
                "node {} has no image to deploy; deploy through POST /v1/deployments",
                node.name
            )));
        }
        let node = store.transition(id, event, None)?;
        self.start_flow(&store, node)
    }

    /// What follows a committed transition into `node`'s current state.
    fn start_flow(&self, store: &Store, node: Node) -> Result<Node> {
        let id = node.uuid.to_string();
        match node.provision_state {
            ProvisionState::Inspecting => {
                if let Err(err) = self.boot_agent(store, &node) {
                    store.transition(&id, Event::Fail, Some(&err.to_string()))?;
                }
            }
            ProvisionState::Cleaning => self.start_cleaning(store, &node)?,
            ProvisionState::Deploying => {
                let node = store.transition(&id, Event::Wait, None)?;
                store.set_deploy_step(&id, None)?;
                if let Err(err) = self.boot_agent(store, &node) {
                    store.transition(&id, Event::Fail, Some(&err.to_string()))?;
                }
            }
            ProvisionState::Deleting => {
                if let Err(err) = self.set_power(store, &node, false) {
                    store.transition(&id, Event::Fail, Some(&err.to_string()))?;
                } else {
                    store.set_instance_info(&id, &InstanceInfo::default())?;
                    store.clear_node_config(&id)?;
                    let node = store.transition(&id, Event::Done, None)?;
                    self.start_cleaning(store, &node)?;
                }
            }
            ProvisionState::DeployFailed | ProvisionState::InspectFailed => {
                // abort: the agent, if any, is not wanted any more.
                self.power_off_logged(store, &node);
            }
            _ => {}
        }
        Ok(store.node(&id)?.redacted())
    }

    fn start_cleaning(&self, store: &Store, node: &Node) -> Result<()> {
        let id = node.uuid.to_string();
        match self.config.clean {
            CleanMode::None => {
                store.transition(&id, Event::Done, Some("cleaning disabled (--clean none)"))?;
            }
            CleanMode::Metadata => {
                store.set_deploy_step(&id, Some(STEP_ERASE))?;
                if let Err(err) = self.boot_agent(store, node) {
                    store.transition(&id, Event::Fail, Some(&err.to_string()))?;
                }
            }
        }
        Ok(())
    }

    /// Forgets the agent token (a fresh agent may look up once) and boots the
    /// node into the deploy ramdisk.
    fn boot_agent(&self, store: &Store, node: &Node) -> Result<()> {
        let id = node.uuid.to_string();
        store.clear_agent_token(&id)?;
        let driver = self.drivers.get(node)?;
        driver.set_boot_device(BootDevice::Network, false)?;
        match driver.power_state()? {
            crate::deploy::power::PowerState::On => driver.reboot()?,
            crate::deploy::power::PowerState::Off => driver.power_on()?,
        }
        store.set_power_state(&id, Some(store::PowerState::On))?;
        Ok(())
    }

    fn set_power(&self, store: &Store, node: &Node, on: bool) -> Result<()> {
        let driver = self.drivers.get(node)?;
        let id = node.uuid.to_string();
        if on {
            store.clear_agent_token(&id)?;
            driver.power_on()?;
            store.set_power_state(&id, Some(store::PowerState::On))?;
        } else {
            driver.power_off()?;
            store.set_power_state(&id, Some(store::PowerState::Off))?;
        }
        Ok(())
    }

    /// Powers a node off after a failure or completion; a power error is logged
    /// and kept as last_error but does not change the outcome.
    fn power_off_logged(&self, store: &Store, node: &Node) {
        if let Err(err) = self.set_power(store, node, false) {
            eprintln!("kiln conductor: node {}: power off: {err}", node.name);
            let _ = store.set_last_error(&node.uuid.to_string(), Some(&err.to_string()));
        }
    }

    /// PUT /v1/nodes/{id}/states/power.
    pub fn power(&self, id: &str, target: &str) -> Result<Node> {
        let store = self.store();
        let node = store.node(id)?;
        match target {
            "power on" => self.set_power(&store, &node, true)?,
            "power off" => self.set_power(&store, &node, false)?,
            "reboot" => {
                store.clear_agent_token(&node.uuid.to_string())?;
                self.drivers.get(&node)?.reboot()?;
                store.set_power_state(&node.uuid.to_string(), Some(store::PowerState::On))?;
            }
            other => {
                return Err(ConductorError::BadRequest(format!(
                    "unknown power target \"{other}\"; expected \"power on\", \"power off\" or \
                     \"reboot\""
                )));
            }
        }
        Ok(store.node(id)?.redacted())
    }

    // ---- operator: deployments -------------------------------------------

    /// Validates the plan, resolves its images' checksums and matches nodes, all
    /// before any node is touched; then starts every node's deploy.
    pub fn create_deployment(&self, body: &str) -> Result<DeploymentStatus> {
        let plan = plan::parse_plan(body, "plan")
            .map_err(|err| ConductorError::BadRequest(err.to_string()))?;
        // The checksum of each image file now: a file replaced later fails the
        // deploy instead of deploying something nobody planned.
        let mut checksums = serde_json::Map::new();
        for (name, file) in &plan.images {
            let info = self.images.stat(file).map_err(|err| {
                ConductorError::BadRequest(format!("plan: images: {name}: {err}"))
            })?;
            checksums.insert(file.clone(), json!(format!("sha256:{}", info.sha256)));
        }
        let store = self.store();
        if !self.deployment_nodes(&store, &plan.name)?.is_empty() {
            return Err(ConductorError::Conflict {
                message: format!(
                    "deployment {} exists and has nodes; undeploy it first",
                    plan.name
                ),
                allowed: None,
            });
        }
        let assignments =
            plan::match_nodes(&plan, &store.nodes()?).map_err(|err| ConductorError::Conflict {
                message: err.to_string(),
                allowed: None,
            })?;
        let plan_value = serde_json::to_value(&plan)
            .map_err(|err| ConductorError::BadRequest(format!("plan: {err}")))?;
        store.save_deployment(
            &plan.name,
            &json!({"plan": plan_value, "checksums": Value::Object(checksums)}),
        )?;
        for assignment in assignments {
            let id = assignment.node_uuid.to_string();
            store.set_instance_info(&id, &assignment.instance_info(&plan.name))?;
            let node = store.transition(&id, Event::Deploy, None)?;
            self.start_flow(&store, node)?;
        }
        self.deployment_status(&store, &plan.name)
    }

    pub fn deployment_names(&self) -> Result<Vec<String>> {
        Ok(self.store().deployment_names()?)
    }

    pub fn deployment(&self, name: &str) -> Result<DeploymentStatus> {
        let store = self.store();
        self.deployment_status(&store, name)
    }

    /// Undeploys every node of the deployment.
    pub fn delete_deployment(&self, name: &str) -> Result<DeploymentStatus> {
        let store = self.store();
        let status = self.deployment_status(&store, name)?;
        for node in self.deployment_nodes(&store, name)? {
            let id = node.uuid.to_string();
            let event = if node.provision_state == ProvisionState::WaitCallBack {
                Event::Abort
            } else {
                Event::Undeploy
            };
            match store.transition(&id, event, None) {
                Ok(node) => {
                    let node = self.start_flow(&store, node)?;
                    if node.provision_state == ProvisionState::DeployFailed {
                        let node = store.transition(&id, Event::Undeploy, None)?;
                        self.start_flow(&store, node)?;
                    }
                }
                Err(err) => eprintln!("kiln conductor: deployment {name}: {err}"),
            }
        }
        let _ = status;
        self.deployment_status(&store, name)
    }

    fn deployment_nodes(&self, store: &Store, name: &str) -> Result<Vec<Node>> {
        Ok(store
            .nodes()?
            .into_iter()
            .filter(|node| node.instance_info.deployment.as_deref() == Some(name))
            .collect())
    }

    fn deployment_status(&self, store: &Store, name: &str) -> Result<DeploymentStatus> {
        if store.deployment(name)?.is_none() {
            return Err(ConductorError::NotFound(format!(
                "no deployment named {name}"
            )));
        }
        let nodes = self
            .deployment_nodes(store, name)?
            .into_iter()
            .map(|node| DeploymentNode {
                node: node.name.clone(),
                uuid: node.uuid,
                role: node.instance_info.role.clone(),
                hostname: node.instance_info.hostname.clone(),
                state: node.provision_state.as_str().to_string(),
                progress: node.progress.bytes_total.map(|total| CommandProgress {
                    done: node.progress.bytes_written,
                    total,
                }),
                deploy_step: node.progress.deploy_step.clone(),
                last_error: node.last_error.clone(),
                config: config::config_state(store, &node).unwrap_or_else(|err| {
                    eprintln!("kiln conductor: node {}: config state: {err}", node.name);
                    None
                }),
            })
            .collect();
        Ok(DeploymentStatus {
            name: name.to_string(),
            nodes,
        })
    }

    // ---- agent -------------------------------------------------------------

    /// POST /v1/agent/lookup: finds the node by MAC and hands out its one-time
    /// token, if the node expects an agent and none has looked up since it was
    /// last powered on.
    pub fn lookup(&self, request: &LookupRequest) -> Result<LookupResponse> {
        let store = self.store();
        let node = request
            .macs
            .iter()
            .find_map(|mac| store.node_by_mac(mac).ok())
            .ok_or_else(|| {
                ConductorError::NotFound(format!(
                    "no node has a port with any of the MACs {}",
                    request.macs.join(", ")
                ))
            })?;
        let expects_agent = match node.provision_state {
            ProvisionState::Inspecting
            | ProvisionState::WaitCallBack
            | ProvisionState::Deploying => true,
            ProvisionState::Cleaning => node.progress.deploy_step.as_deref() == Some(STEP_ERASE),
            _ => false,
        };
        if !expects_agent {
            return Err(ConductorError::Conflict {
                message: format!(
                    "node {} is {} and does not expect an agent",
                    node.name, node.provision_state
                ),
                allowed: None,
            });
        }
        if node.has_agent_token {
            return Err(ConductorError::Conflict {
                message: format!(
                    "node {}: an agent token was already issued since the node was powered on",
                    node.name
                ),
                allowed: None,
            });
        }
        let id = node.uuid.to_string();
        let token = store::new_agent_token()?;
        store.set_agent_token(&id, &token)?;
        store.record_heartbeat(&id)?;
        if !request.inventory.is_null() {
            store.save_inventory(&id, &request.inventory)?;
        }
        match node.provision_state {
            ProvisionState::Inspecting => {
                self.finish_inspection(&store, &node, &request.inventory)?
            }
            ProvisionState::WaitCallBack => {
                store.transition(&id, Event::Resume, Some("agent looked up"))?;
                store.set_deploy_step(&id, Some(iscsi::first_deploy_step(&node)))?;
            }
            ProvisionState::Deploying if node.progress.deploy_step.is_none() => {
                store.set_deploy_step(&id, Some(iscsi::first_deploy_step(&node)))?;
            }
            _ => {}
        }
        Ok(LookupResponse {
            node: node.uuid,
            token,
            heartbeat_interval: self.config.heartbeat_interval.as_secs().max(1),
        })
    }

    /// Inspection completes with the lookup's inventory: properties derived,
    /// rules run, node powered off.
    fn finish_inspection(&self, store: &Store, node: &Node, inventory: &Value) -> Result<()> {
        let id = node.uuid.to_string();
        if inventory.is_null() {
            store.transition(&id, Event::Fail, Some("the agent sent no inventory"))?;
            self.power_off_logged(store, node);
            return Ok(());
        }
        // `store` is the locked store: read the rules through it, not self.rules().
        let rule_list = store.introspection_rules()?;
        let outcome = rules::parse_rules(&rule_list.to_string(), "introspection rules")
            .and_then(|list| rules::process_inventory(store, &id, inventory, &list));
        match outcome {
            Ok(outcome) => match outcome.failure {
                None => {
                    store.transition(&id, Event::Done, Some("inventory received"))?;
                }
                Some(message) => {
                    store.transition(&id, Event::Fail, Some(&message))?;
                }
            },
            Err(err) => {
                store.transition(&id, Event::Fail, Some(&err.to_string()))?;
            }
        }
        self.power_off_logged(store, node);
        Ok(())
    }

    /// POST /v1/agent/{uuid}/heartbeat: records the agent's report and answers
    /// with the next command.
    pub fn heartbeat(
        &self,
        uuid: &str,
        token: Option<&str>,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse> {
        let store = self.store();
        let node = store.node(uuid)?;
        if node.uuid.to_string() != uuid {
            return Err(ConductorError::NotFound(format!(
                "no node with UUID {uuid}"
            )));
        }
        let valid = match token {
            Some(token) => store.verify_agent_token(uuid, token)?,
            None => false,
        };
        if !valid {
            let why = if token.is_some() {
                "wrong agent token"
            } else {
                "no agent token"
            };
            eprintln!(
                "kiln conductor: node {}: heartbeat refused: {why}",
                node.name
            );
            return Err(ConductorError::Unauthorized(format!(
                "node {}: {why} (X-Agent-Token)",
                node.name
            )));
        }
        store.record_heartbeat(uuid)?;
        let step = node.progress.deploy_step.clone();
        let command = match (node.provision_state, step) {
            (ProvisionState::Deploying | ProvisionState::Cleaning, Some(step)) => {
                self.advance(&store, &node, &step, request.command.as_ref())?
            }
            (ProvisionState::Inspecting | ProvisionState::WaitCallBack, _) => {
                Some(command(CommandKind::Idle, "idle"))
            }
            _ => Some(command(CommandKind::PowerOff, "power_off")),
        };
        Ok(HeartbeatResponse { command })
    }

    /// One step of a deploy or clean: the report on the current step moves the
    /// node on; anything else gets the current step's command (again).
    fn advance(
        &self,
        store: &Store,
        node: &Node,
        step: &str,
        report: Option<&CommandReport>,
    ) -> Result<Option<Command>> {
        if iscsi::is_iscsi_step(step) {
            return self.advance_iscsi(store, node, step, report);
        }
        let id = node.uuid.to_string();
        let Some(report) = report.filter(|report| report.id == step) else {
            return self.step_command(store, node, step).map(Some);
        };
        if let Some(progress) = report.progress {
            store.set_progress(&id, progress.done, Some(progress.total))?;
        }
        match report.status {
            CommandStatus::Running => Ok(None),
            CommandStatus::Failed => {
                let message = format!(
                    "{step} failed: {}",
                    report.error.as_deref().unwrap_or("no error given")
                );
                store.set_deploy_step(&id, None)?;
                store.transition(&id, Event::Fail, Some(&message))?;
                self.power_off_logged(store, node);
                Ok(Some(command(CommandKind::PowerOff, "power_off")))
            }
            CommandStatus::Succeeded => match step {
                STEP_WRITE_IMAGE => {
                    store.set_deploy_step(&id, Some(STEP_CONFIGDRIVE))?;
                    let node = store.node(&id)?;
                    self.step_command(store, &node, STEP_CONFIGDRIVE).map(Some)
                }
                STEP_CONFIGDRIVE => self.boot_from_disk(store, node, "image written"),
                _ => {
                    store.set_deploy_step(&id, None)?;
                    store.transition(&id, Event::Done, Some("metadata erased"))?;
                    self.power_off_logged(store, node);
                    Ok(Some(command(CommandKind::PowerOff, "power_off")))
                }
            },
        }
    }

    /// The image and config drive are on the disk: the node boots from it from
    /// now on, and the deploy is done (`message` goes into the timeline).
    fn boot_from_disk(&self, store: &Store, node: &Node, message: &str) -> Result<Option<Command>> {
        let id = node.uuid.to_string();
        store.set_deploy_step(&id, None)?;
        let driver = self.drivers.get(node)?;
        let booted = driver
            .set_boot_device(BootDevice::Disk, true)
            .and_then(|()| driver.reboot());
        match booted {
            Ok(()) => {
                store.transition(&id, Event::Done, Some(message))?;
            }
            Err(err) => {
                store.transition(&id, Event::Fail, Some(&err.to_string()))?;
            }
        }
        Ok(Some(command(CommandKind::PowerOff, "power_off")))
    }

    /// The config drive a deployed node gets, whichever way its image is written.
    fn configdrive_of(
        &self,
        store: &Store,
        node: &Node,
        hints: serde_json::Map<String, Value>,
    ) -> Result<ConfigdriveParams> {
        let mut params = configdrive_params(node, hints);
        if let Some(kiln_config) = self.drive_kiln_config(store, node)? {
            params.kiln_config = kiln_config;
        }
        Ok(params)
    }

    fn step_command(&self, store: &Store, node: &Node, step: &str) -> Result<Command> {
        let hints = root_device_hints(node);
        match step {
            STEP_WRITE_IMAGE => {
                let (file, checksum) = self.image_of(store, node)?;
                Ok(command(
                    CommandKind::WriteImage(WriteImageParams {
                        url: format!("/v1/images/{file}"),
                        checksum,
                        format: None,
                        hints,
                    }),
                    step,
                ))
            }
            STEP_CONFIGDRIVE => Ok(command(
                CommandKind::WriteConfigdrive(self.configdrive_of(store, node, hints)?),
                step,
            )),
            _ => Ok(command(
                CommandKind::EraseMetadata(EraseParams { hints }),
                step,
            )),
        }
    }

    /// The image file and the checksum recorded when the node's deployment was made.
    fn image_of(&self, store: &Store, node: &Node) -> Result<(String, String)> {
        let missing = || ConductorError::Conflict {
            message: format!("node {} has no deployment image recorded", node.name),
            allowed: None,
        };
        let info = &node.instance_info;
        let deployment = store
            .deployment(info.deployment.as_deref().ok_or_else(missing)?)?
            .ok_or_else(missing)?;
        let file = info.image.clone().ok_or_else(missing)?;
        let checksum = deployment
            .plan
            .get("checksums")
            .and_then(|sums| sums.get(&file))
            .and_then(Value::as_str)
            .ok_or_else(missing)?
            .to_string();
        Ok((file, checksum))
    }

    // ---- timeouts --------------------------------------------------------

    /// Times out nodes whose agent did not call back (or went silent) in time.
    /// Returns the names of the nodes it failed.
    pub fn enforce_timeouts(&self) -> Result<Vec<String>> {
        let store = self.store();
        let now = store::now();
        let mut failed = Vec::new();
        for node in store.nodes()? {
            let entered = node.state_entered_at;
            let heard = node.last_heartbeat.unwrap_or(entered).max(entered);
            let callback = self.config.callback_timeout.as_secs() as i64;
            let (deadline, why) = match node.provision_state {
                ProvisionState::Inspecting => (
                    entered + self.config.inspect_timeout.as_secs() as i64,
                    "inspection timed out",
                ),
                ProvisionState::WaitCallBack => (entered + callback, "no agent call-back"),
                ProvisionState::Deploying | ProvisionState::Deleting => {
                    (heard + callback, "the agent stopped heartbeating")
                }
                ProvisionState::Cleaning
                    if node.progress.deploy_step.as_deref() == Some(STEP_ERASE) =>
                {
                    (heard + callback, "the agent stopped heartbeating")
                }
                _ => continue,
            };
            if now < deadline {
                continue;
            }
            let id = node.uuid.to_string();
            let message = format!("{why} within {}s", deadline - heard.min(deadline));
            store.set_deploy_step(&id, None)?;
            store.transition(&id, Event::Timeout, Some(&message))?;
            self.power_off_logged(&store, &node);
            failed.push(node.name);
        }
        Ok(failed)
    }

    /// Runs [`Self::enforce_timeouts`] every `period` until the process ends.
    pub fn spawn_timeout_thread(self: &Arc<Self>, period: Duration) {
        let conductor = Arc::clone(self);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(period);
                if let Err(err) = conductor.enforce_timeouts() {
                    eprintln!("kiln conductor: timeouts: {err}");
                }
            }
        });
    }
}

/// The plan's root device hints for the node, as every disk command carries them.
fn root_device_hints(node: &Node) -> serde_json::Map<String, Value> {
    node.instance_info.root_device.clone().into_iter().collect()
}

fn command(kind: CommandKind, id: &str) -> Command {
    Command {
        id: id.to_string(),
        kind,
    }
}

/// The config drive contents for a deployed node (OpenStack's layout).
fn configdrive_params(node: &Node, hints: serde_json::Map<String, Value>) -> ConfigdriveParams {
    let info = &node.instance_info;
    let hostname = info.hostname.clone().unwrap_or_else(|| node.name.clone());
    let public_keys: BTreeMap<String, Value> = info
        .config
        .get("public_keys")
        .and_then(Value::as_object)
        .map(|keys| keys.clone().into_iter().collect())
        .unwrap_or_default();
    let links: Vec<Value> = node
        .macs
        .iter()
        .enumerate()
        .map(|(index, mac)| {
            json!({"id": format!("port{index}"), "type": "phy", "ethernet_mac_address": mac})
        })
        .collect();
    let networks: Vec<Value> = (0..node.macs.len())
        .map(|index| {
            json!({"id": format!("network{index}"), "type": "ipv4_dhcp",
                   "link": format!("port{index}"), "network_id": format!("network{index}")})
        })
        .collect();
    // meta_data.meta holds strings only (Nova's rule).
    let mut meta = serde_json::Map::new();
    for (key, value) in [
        ("role", info.role.clone()),
        ("deployment", info.deployment.clone()),
        ("index", info.index.map(|index| index.to_string())),
    ] {
        if let Some(value) = value {
            meta.insert(key.to_string(), Value::String(value));
        }
    }
    ConfigdriveParams {
        meta_data: json!({
            "uuid": node.uuid,
            "name": hostname,
            "hostname": hostname,
            "launch_index": info.index.unwrap_or(0),
            "availability_zone": "nova",
            "public_keys": public_keys,
            "meta": meta,
        }),
        user_data: info
            .config
            .get("user_data")
            .and_then(Value::as_str)
            .map(str::to_string),
        network_data: json!({"links": links, "networks": networks, "services": []}),
        kiln_config: info.config.clone(),
        hints,
    }
}

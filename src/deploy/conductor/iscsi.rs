//! The iSCSI deploy interface, conductor side (issue 8).
//!
//! For a node whose `deploy_interface` is `iscsi` the deploy steps are:
//!
//! 1. `export_disk`: the agent exports its root disk as an iSCSI target that
//!    only an initiator knowing a fresh per-deploy CHAP secret may log in to;
//!    the target proves a second secret back (mutual CHAP), so the image goes
//!    to no impostor on the deploy network. The secrets live in this
//!    process's memory only: never in the store, the logs or the API.
//! 2. Once the agent reports the export `running` with the portal it listens
//!    on, a thread of this conductor logs in (the portal mapped through the
//!    node's power driver), writes the image (its first MiB last), the config
//!    drive (the HTTP path's contents), SYNCHRONIZE CACHE, and logs out.
//!    Progress goes into the store as write_image's does. Nodes write at once.
//! 3. `stop_export`: the agent stops its target and reports export_disk
//!    succeeded; the node boots from its disk as after the direct path.
//!
//! A conductor restarted during step 2 has lost the secrets and the thread
//! while the agent still exports: the agent is told to stop, and the export
//! starts over with new secrets (the write repeats from the start). A failed
//! write fails the deploy with a message naming the node, portal and cause.
//!
//! Ports: nodes of the manual driver (simulated agents, all on one host) are
//! asked to listen on port 0, the kernel's choice, which the agent reports;
//! every other node listens on 3260, where the qemu driver's forward points.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use super::{Conductor, ConductorError, Result, STEP_WRITE_IMAGE, command, root_device_hints};
use crate::agent::configdrive::{ConfigDriveError, write_config_drive_on};
use crate::agent::run::configdrive_content;
use crate::deploy::plan::DeployInterface;
use crate::deploy::power::{PowerDriver, PowerError};
use crate::deploy::protocol::{
    ChapSecret, Command, CommandKind, CommandReport, CommandStatus, ExportDiskParams, ExportedDisk,
};
use crate::deploy::state::{Event, ProvisionState};
use crate::deploy::store::{self, Driver, Node, Store};
use crate::format::configdrive::ConfigDriveContent;
use crate::iscsi::initiator::{self, LoginOptions, Session, SessionDisk};

pub(super) const STEP_EXPORT: &str = "export_disk";
pub(super) const STEP_STOP_EXPORT: &str = "stop_export";
/// Target names are this followed by the node's UUID.
pub const TARGET_IQN_PREFIX: &str = "iqn.2026-11.org.kiln:";
/// The name the conductor's initiator logs in with.
pub const INITIATOR_IQN: &str = "iqn.2026-11.org.kiln:conductor";
/// CHAP names: the conductor's (proving the forward secret) and the target's.
const CHAP_USER: &str = "kiln-conductor";
const MUTUAL_CHAP_USER: &str = "kiln-agent";
/// RFC 7143 wants at least 12 bytes; 16 random alphanumerics are ~95 bits.
const SECRET_CHARS: usize = 16;
/// Progress reaches the store in steps of this fraction of the total.
const PROGRESS_STEPS: u64 = 100;

/// Whether the node's image goes over iSCSI.
pub(super) fn uses_iscsi(node: &Node) -> bool {
    node.instance_info.deploy_interface.as_deref() == Some(DeployInterface::Iscsi.as_str())
}

/// The step a deploy starts with once the agent has looked up.
pub(super) fn first_deploy_step(node: &Node) -> &'static str {
    if uses_iscsi(node) {
        STEP_EXPORT
    } else {
        STEP_WRITE_IMAGE
    }
}

pub(super) fn is_iscsi_step(step: &str) -> bool {
    step == STEP_EXPORT || step == STEP_STOP_EXPORT
}

/// The target name of a node's export.
pub fn target_iqn(node: Uuid) -> String {
    format!("{TARGET_IQN_PREFIX}{node}")
}

/// Where a node's export stands, as this conductor process knows it.
enum Export {
    /// export_disk went out with these secrets; the agent's portal is awaited.
    Requested(Credentials),
    /// A thread writes the disk.
    Writing,
    /// The disk is written; the timeline line for when the target has stopped.
    Written { summary: String },
    /// The agent exports with secrets this process never knew (it restarted):
    /// stop that export before starting a new one.
    Stopping,
}

#[derive(Clone)]
struct Credentials {
    chap: ChapSecret,
    mutual_chap: ChapSecret,
}

impl Credentials {
    fn generate() -> Result<Credentials> {
        Ok(Credentials {
            chap: ChapSecret {
                user: CHAP_USER.to_string(),
                secret: random_secret()?,
            },
            mutual_chap: ChapSecret {
                user: MUTUAL_CHAP_USER.to_string(),
                secret: random_secret()?,
            },
        })
    }
}

/// The exports of all nodes, shared with the writing threads.
#[derive(Clone, Default)]
pub(super) struct Exports(Arc<Mutex<HashMap<Uuid, Export>>>);

impl Exports {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Export>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why the conductor's side of an iSCSI deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum IscsiDeployError {
    #[error("node {node}: iSCSI login to {target} at {portal} failed: {source}")]
    Login {
        node: String,
        portal: String,
        target: String,
        source: initiator::InitiatorError,
    },
    #[error("node {node}: writing the image over iSCSI to {portal}: {source}")]
    Image {
        node: String,
        portal: String,
        source: initiator::InitiatorError,
    },
    #[error("node {node}: writing the config drive over iSCSI to {portal}: {source}")]
    Configdrive {
        node: String,
        portal: String,
        source: Box<ConfigDriveError>,
    },
    #[error("node {node}: {what} on {portal}: {source}")]
    Finish {
        node: String,
        portal: String,
        what: &'static str,
        source: initiator::InitiatorError,
    },
}

impl Conductor {
    /// One heartbeat of an iSCSI deploy step (`report` is the agent's report
    /// on its current command, whichever it is).
    pub(super) fn advance_iscsi(
        &self,
        store: &Store,
        node: &Node,
        step: &str,
        report: Option<&CommandReport>,
    ) -> Result<Option<Command>> {
        let report = report.filter(|r| is_iscsi_step(&r.id));
        if step == STEP_EXPORT {
            self.export_step(store, node, report)
        } else {
            self.stop_step(store, node, report)
        }
    }

    fn export_step(
        &self,
        store: &Store,
        node: &Node,
        report: Option<&CommandReport>,
    ) -> Result<Option<Command>> {
        let mut exports = self.iscsi.lock();
        let status = report.map(|r| (r.id.as_str(), r.status));
        match (status, exports.get(&node.uuid)) {
            (Some((STEP_EXPORT, CommandStatus::Running)), Some(Export::Requested(credentials))) => {
                let Some(report) = report.filter(|r| !r.result.is_null()) else {
                    // The target is starting; its portal comes with a later report.
                    return Ok(None);
                };
                let credentials = credentials.clone();
                exports.insert(node.uuid, Export::Writing);
                drop(exports);
                let exported: ExportedDisk = match serde_json::from_value(report.result.clone()) {
                    Ok(exported) => exported,
                    Err(err) => {
                        let message = format!(
                            "node {}: export_disk result is not an exported disk: {err}",
                            node.name
                        );
                        return self.fail_iscsi(store, node, &message);
                    }
                };
                self.start_writing(store, node, exported, credentials)
            }
            (Some((STEP_EXPORT, CommandStatus::Running)), Some(Export::Writing)) => Ok(None),
            (Some((STEP_EXPORT, CommandStatus::Running)), _) => {
                // Exporting with secrets this process does not have.
                exports.insert(node.uuid, Export::Stopping);
                Ok(Some(command(CommandKind::StopExport, STEP_STOP_EXPORT)))
            }
            (Some((STEP_STOP_EXPORT, CommandStatus::Running)), Some(Export::Stopping)) => Ok(None),
            (Some((STEP_EXPORT, CommandStatus::Failed)), state)
                if !matches!(state, Some(Export::Stopping)) =>
            {
                exports.remove(&node.uuid);
                drop(exports);
                let error = report
                    .and_then(|r| r.error.as_deref())
                    .unwrap_or("no error given");
                self.fail_iscsi(store, node, &format!("export_disk failed: {error}"))
            }
            _ => {
                // Nothing exported (yet, or any more): export with fresh secrets.
                let credentials = Credentials::generate()?;
                let params = ExportDiskParams {
                    target_iqn: target_iqn(node.uuid),
                    chap: credentials.chap.clone(),
                    mutual_chap: Some(credentials.mutual_chap.clone()),
                    port: (node.driver == Driver::Manual).then_some(0),
                    hints: root_device_hints(node),
                };
                exports.insert(node.uuid, Export::Requested(credentials));
                Ok(Some(command(CommandKind::ExportDisk(params), STEP_EXPORT)))
            }
        }
    }

    fn stop_step(
        &self,
        store: &Store,
        node: &Node,
        report: Option<&CommandReport>,
    ) -> Result<Option<Command>> {
        match report.map(|r| r.status) {
            Some(CommandStatus::Succeeded) | Some(CommandStatus::Failed) => {
                let summary = match self.iscsi.lock().remove(&node.uuid) {
                    Some(Export::Written { summary }) => summary,
                    _ => "image written over iSCSI".to_string(),
                };
                // The disk was synced before logout: a target that failed to
                // stop cleanly does not undo the deploy, the reboot ends it.
                let message = match report.and_then(|r| r.error.as_deref()) {
                    Some(error) => format!("{summary}; the agent's target stopped with: {error}"),
                    None => summary,
                };
                self.boot_from_disk(store, node, &message)
            }
            Some(CommandStatus::Running) if report.is_some_and(|r| r.id == STEP_STOP_EXPORT) => {
                Ok(None)
            }
            // Still exporting: (again) ask it to stop; stopping is idempotent.
            _ => Ok(Some(command(CommandKind::StopExport, STEP_STOP_EXPORT))),
        }
    }

    /// Fails the deploy of `node` with `message` and powers it off.
    fn fail_iscsi(&self, store: &Store, node: &Node, message: &str) -> Result<Option<Command>> {
        let id = node.uuid.to_string();
        eprintln!("kiln conductor: {message}");
        self.iscsi.lock().remove(&node.uuid);
        store.set_deploy_step(&id, None)?;
        store.transition(&id, Event::Fail, Some(message))?;
        self.power_off_logged(store, node);
        Ok(Some(command(CommandKind::PowerOff, "power_off")))
    }

    /// Starts the thread that writes the exported disk.
    fn start_writing(
        &self,
        store: &Store,
        node: &Node,
        exported: ExportedDisk,
        credentials: Credentials,
    ) -> Result<Option<Command>> {
        let expected = target_iqn(node.uuid);
        if exported.target_iqn != expected {
            let message = format!(
                "node {}: the agent exported {} at {}, not {expected}",
                node.name, exported.target_iqn, exported.portal
            );
            return self.fail_iscsi(store, node, &message);
        }
        let driver = self.drivers.get(node)?;
        let mapped = driver
            .conductor_portal(&exported.portal)
            .and_then(|portal| {
                portal
                    .parse::<SocketAddr>()
                    .map_err(|err| PowerError::Failed {
                        node: node.name.clone(),
                        driver: driver.driver_name(),
                        message: format!("portal {portal:?} is no IP address and port: {err}"),
                    })
            });
        let portal = match mapped {
            Ok(portal) => portal,
            Err(err) => {
                let message = format!(
                    "node {}: iSCSI portal {} is out of the conductor's reach: {err}",
                    node.name, exported.portal
                );
                return self.fail_iscsi(store, node, &message);
            }
        };
        let (file, checksum) = self.image_of(store, node)?;
        let info = self.images.stat(&file)?;
        if checksum != format!("sha256:{}", info.sha256) {
            let message = format!(
                "node {}: image {file} changed since the deployment was planned (now sha256:{})",
                node.name, info.sha256
            );
            return self.fail_iscsi(store, node, &message);
        }
        let params = self.configdrive_of(store, node, root_device_hints(node))?;
        let configdrive = match configdrive_content(&params) {
            Ok(content) => content,
            Err(err) => {
                let message = format!("node {}: config drive: {err}", node.name);
                return self.fail_iscsi(store, node, &message);
            }
        };
        let id = node.uuid.to_string();
        store.set_progress(&id, 0, None)?;
        let job = WriteJob {
            node: node.name.clone(),
            uuid: node.uuid,
            entered_at: node.state_entered_at,
            reported_portal: exported.portal.clone(),
            portal,
            target_iqn: expected,
            disk_size: exported.size,
            credentials,
            image: self.images.dir().join(&file),
            configdrive,
            store: Arc::clone(&self.store),
            exports: self.iscsi.clone(),
            driver,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("iscsi-{}", node.name))
            .spawn(move || job.run());
        if let Err(err) = spawned {
            let message = format!("node {}: starting the iSCSI writer: {err}", node.name);
            return self.fail_iscsi(store, node, &message);
        }
        Ok(None)
    }
}

/// One node's write over iSCSI, on its own thread.
struct WriteJob {
    node: String,
    uuid: Uuid,
    /// When the node entered `deploying`: a result for an older deploy is dropped.
    entered_at: i64,
    reported_portal: String,
    /// Where this conductor connects (the reported portal, mapped).
    portal: SocketAddr,
    target_iqn: String,
    disk_size: u64,
    credentials: Credentials,
    image: PathBuf,
    configdrive: ConfigDriveContent,
    store: Arc<Mutex<Store>>,
    exports: Exports,
    driver: Arc<dyn PowerDriver>,
}

impl WriteJob {
    fn run(self) {
        let outcome = self.write();
        self.finish(outcome);
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Login, image, config drive, cache flush, logout.
    fn write(&self) -> std::result::Result<String, Box<IscsiDeployError>> {
        let portal = self.portal_text();
        let options = LoginOptions {
            initiator_iqn: INITIATOR_IQN.to_string(),
            target_iqn: self.target_iqn.clone(),
            chap: self.credentials.chap.clone(),
            mutual_chap: Some(self.credentials.mutual_chap.clone()),
            digests: false,
        };
        let session =
            Session::login(self.portal, &options).map_err(|source| IscsiDeployError::Login {
                node: self.node.clone(),
                portal: portal.clone(),
                target: self.target_iqn.clone(),
                source,
            })?;
        let session = Arc::new(session);
        let id = self.uuid.to_string();
        let recorded = AtomicU64::new(0);
        let progress = |done: u64, total: u64| {
            // Not every chunk: each write takes the conductor-wide store lock.
            let step = (total / PROGRESS_STEPS).max(1);
            if done == total || done >= recorded.load(Ordering::Relaxed) + step {
                recorded.store(done, Ordering::Relaxed);
                let store = self.store();
                if !self.is_current(&store) {
                    // Aborted or timed out meanwhile: stop writing to the node.
                    session.abort();
                    return;
                }
                if let Err(err) = store.set_progress(&id, done, Some(total)) {
                    eprintln!("kiln conductor: node {}: progress: {err}", self.node);
                }
            }
        };
        // Cleaning only wipes metadata: every byte the image does not cover
        // must be zeroed, as the agent's writer does.
        let written =
            initiator::write_image(&session, &self.image, false, &progress).map_err(|source| {
                IscsiDeployError::Image {
                    node: self.node.clone(),
                    portal: portal.clone(),
                    source,
                }
            })?;
        write_config_drive_on(
            Arc::new(SessionDisk(Arc::clone(&session))),
            &format!("{} at {portal}", self.target_iqn),
            &self.configdrive,
        )
        .map_err(|source| IscsiDeployError::Configdrive {
            node: self.node.clone(),
            portal: portal.clone(),
            source: Box::new(source),
        })?;
        let finish = |what: &'static str| {
            let portal = portal.clone();
            let node = self.node.clone();
            move |source| IscsiDeployError::Finish {
                node,
                portal,
                what,
                source,
            }
        };
        session
            .synchronize_cache()
            .map_err(finish("SYNCHRONIZE CACHE"))?;
        // The config drive writer has dropped its handle: the session is ours alone.
        match Arc::try_unwrap(session) {
            Ok(session) => session.logout().map_err(finish("logout"))?,
            Err(_) => eprintln!(
                "kiln conductor: node {}: iSCSI session still shared; dropped without logout",
                self.node
            ),
        }
        Ok(format!(
            "image written over iSCSI: export_disk {} ({} bytes), login, write_image {} bytes, \
             config drive, synchronize cache, logout, stop_export",
            portal, self.disk_size, written.bytes_written
        ))
    }

    /// Whether the node is still in the deploy this job writes for (not
    /// aborted, timed out or failed by the agent's report meanwhile).
    fn is_current(&self, store: &Store) -> bool {
        store.node(&self.uuid.to_string()).is_ok_and(|node| {
            node.provision_state == ProvisionState::Deploying
                && node.state_entered_at == self.entered_at
                && node.progress.deploy_step.as_deref() == Some(STEP_EXPORT)
        })
    }

    /// "PORTAL" or "PORTAL (reported as ...)" when the driver mapped it.
    fn portal_text(&self) -> String {
        if self.portal.to_string() == self.reported_portal {
            self.portal.to_string()
        } else {
            format!("{} (the agent's {})", self.portal, self.reported_portal)
        }
    }

    /// Records the outcome, unless the deploy moved on meanwhile (aborted,
    /// timed out, failed by the agent's report).
    fn finish(&self, outcome: std::result::Result<String, Box<IscsiDeployError>>) {
        let store = self.store();
        let mut exports = self.exports.lock();
        let id = self.uuid.to_string();
        if !self.is_current(&store) || !matches!(exports.get(&self.uuid), Some(Export::Writing)) {
            eprintln!(
                "kiln conductor: node {}: iSCSI write ended after the deploy moved on",
                self.node
            );
            return;
        }
        let recorded = match outcome {
            Ok(summary) => {
                exports.insert(self.uuid, Export::Written { summary });
                store.set_deploy_step(&id, Some(STEP_STOP_EXPORT)).map(drop)
            }
            Err(err) => {
                exports.remove(&self.uuid);
                let message = err.to_string();
                eprintln!("kiln conductor: {message}");
                store
                    .set_deploy_step(&id, None)
                    .and_then(|_| {
                        store.transition_if(
                            &id,
                            ProvisionState::Deploying,
                            Some(self.entered_at),
                            Event::Fail,
                            Some(&message),
                        )
                    })
                    .map(drop)
                    .and_then(|()| self.power_off(&store))
            }
        };
        if let Err(err) = recorded {
            eprintln!(
                "kiln conductor: node {}: recording the iSCSI write: {err}",
                self.node
            );
        }
    }

    /// The agent is not wanted any more; a power error is logged, not fatal.
    fn power_off(&self, store: &Store) -> store::Result<()> {
        match self.driver.power_off() {
            Ok(()) => store
                .set_power_state(&self.uuid.to_string(), Some(store::PowerState::Off))
                .map(drop),
            Err(err) => {
                eprintln!("kiln conductor: node {}: power off: {err}", self.node);
                Ok(())
            }
        }
    }
}

/// A CHAP secret: `SECRET_CHARS` letters and digits from the OS's generator.
fn random_secret() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 248 is the largest multiple of 62 in a byte: higher bytes are redrawn,
    // so every symbol is equally likely.
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut secret = String::with_capacity(SECRET_CHARS);
    while secret.len() < SECRET_CHARS {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|err| ConductorError::from(store::StoreError::Random(err.to_string())))?;
        for byte in bytes.into_iter().filter(|&b| b < limit) {
            if secret.len() < SECRET_CHARS {
                secret.push(char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]));
            }
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_sixteen_alphanumerics_and_differ() {
        let a = random_secret().unwrap();
        let b = random_secret().unwrap();
        assert_eq!(a.len(), SECRET_CHARS);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        // 95 bits each: equal only if the generator is broken.
        assert_ne!(a, b);
        let credentials = Credentials::generate().unwrap();
        assert_ne!(credentials.chap.secret, credentials.mutual_chap.secret);
    }

    #[test]
    fn target_names_carry_the_node_uuid() {
        assert_eq!(
            target_iqn(Uuid::from_u128(0x1234)),
            "iqn.2026-11.org.kiln:00000000-0000-0000-0000-000000001234"
        );
    }
}

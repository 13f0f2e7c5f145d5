//! The agent's main loop: look the node up (retrying with back-off until the
//! conductor expects an agent), then heartbeat every interval while the
//! commands the conductor hands out run on a worker thread.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};

use super::client::{ClientError, ConductorClient};
use crate::agent::configdrive::write_config_drive;
use crate::agent::export::{ExportControl, export_disk};
use crate::agent::hints::{RootDeviceHints, select_root_device};
use crate::agent::inventory::{Disk, Inventory, collect_inventory};
use crate::agent::stream::{Checksum, ImageUrl, WriteOptions, write_image};
use crate::deploy::protocol::{
    Command, CommandKind, CommandProgress, CommandReport, CommandStatus, ConfigdriveParams,
    HeartbeatRequest, LookupRequest, LookupResponse, WriteImageParams,
};
use crate::format::configdrive::ConfigDriveContent;

/// Back-off between lookups: doubles from the first to the last.
const LOOKUP_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// Bytes wiped at each end of a disk by erase_metadata: partition tables (MBR,
/// GPT and its backup) and filesystem/RAID signatures live there.
const ERASE_BYTES: u64 = 1 << 20;

/// What the agent runs on: a real machine, or a simulated one.
pub trait Host: Send + Sync {
    /// The inventory sent at lookup (IPA's field names).
    fn inventory(&self) -> Result<Value, String>;
    /// MACs to look the node up by.
    fn macs(&self) -> Result<Vec<String>, String>;
    /// The disk chosen by root device hints (a block device or a file).
    fn root_disk(&self, hints: &Map<String, Value>) -> Result<PathBuf, String>;
    /// Writes the config drive partition at the end of `disk`.
    fn write_configdrive(&self, disk: &Path, params: &ConfigdriveParams) -> Result<Value, String>;
    /// The conductor is done with the node.
    fn power_off(&self);
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("collecting the inventory: {0}")]
    Inventory(String),
    #[error("the conductor refused this agent's token; the node was powered on again: {0}")]
    TokenRefused(ClientError),
}

/// Runs the agent until the conductor says power_off (Ok) or refuses the token.
pub fn run(client: &ConductorClient, host: Arc<dyn Host>) -> Result<(), AgentError> {
    let session = look_up(client, host.as_ref())?;
    eprintln!(
        "kiln agent: node {} looked up; heartbeat every {}s",
        session.node, session.heartbeat_interval
    );
    let interval = Duration::from_secs(session.heartbeat_interval.max(1));
    let current = Arc::new(Current::default());
    let export = Arc::new(ExportControl::default());
    loop {
        let (report, seen) = current.report();
        match client.heartbeat(
            session.node,
            &session.token,
            &HeartbeatRequest {
                command: report.clone(),
            },
        ) {
            Ok(response) => match response.command {
                Some(Command {
                    kind: CommandKind::PowerOff,
                    ..
                }) => {
                    eprintln!("kiln agent: conductor is done with this node: power off");
                    export.stop_and_wait();
                    host.power_off();
                    return Ok(());
                }
                Some(Command {
                    kind: CommandKind::Idle,
                    ..
                })
                | None => {}
                // Not a command of its own: it ends the running export_disk.
                Some(Command {
                    kind: CommandKind::StopExport,
                    ..
                }) => export.request_stop(),
                Some(command) => {
                    let busy = report
                        .as_ref()
                        .is_some_and(|r| r.id == command.id && r.status == CommandStatus::Running);
                    if !busy {
                        start(client, &host, &current, &export, command);
                    }
                }
            },
            Err(err) if err.status() == Some(401) => return Err(AgentError::TokenRefused(err)),
            // A restarting conductor or a dropped connection: keep going, the
            // conductor keeps our state and token.
            Err(err) => eprintln!("kiln agent: heartbeat: {err}"),
        }
        current.wait_for_change(seen, interval);
    }
}

fn look_up(client: &ConductorClient, host: &dyn Host) -> Result<LookupResponse, AgentError> {
    let inventory = host.inventory().map_err(AgentError::Inventory)?;
    let macs = host.macs().map_err(AgentError::Inventory)?;
    let request = LookupRequest { macs, inventory };
    let mut delay = LOOKUP_BACKOFF.0;
    loop {
        match client.lookup(&request) {
            Ok(session) => return Ok(session),
            Err(err) => {
                eprintln!("kiln agent: lookup: {err}; again in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(LOOKUP_BACKOFF.1);
            }
        }
    }
}

/// The command being (or last) run and its status, shared with the worker.
#[derive(Default)]
struct Current {
    shared: Mutex<Shared>,
    changed: Condvar,
}

#[derive(Default)]
struct Shared {
    report: Option<CommandReport>,
    /// Counts notifying updates. A command that finishes while the main loop
    /// is in a heartbeat call (not waiting) would otherwise go unreported for
    /// a whole interval: the loop waits only while this is what it last saw.
    changes: u64,
}

impl Current {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The report to send and the change count it reflects.
    fn report(&self) -> (Option<CommandReport>, u64) {
        let shared = self.lock();
        (shared.report.clone(), shared.changes)
    }

    fn update(&self, change: impl FnOnce(&mut Option<CommandReport>), notify: bool) {
        let mut shared = self.lock();
        change(&mut shared.report);
        if notify {
            shared.changes += 1;
            self.changed.notify_all();
        }
    }

    /// Sleeps for `interval`, or less when a command finishes after the
    /// report counted `seen` changes (so its result is reported at once).
    /// Returns whether it woke for a change.
    fn wait_for_change(&self, seen: u64, interval: Duration) -> bool {
        let guard = self.lock();
        let (shared, _) = self
            .changed
            .wait_timeout_while(guard, interval, |shared| shared.changes == seen)
            .unwrap_or_else(|e| e.into_inner());
        shared.changes != seen
    }
}

fn start(
    client: &ConductorClient,
    host: &Arc<dyn Host>,
    current: &Arc<Current>,
    export: &Arc<ExportControl>,
    command: Command,
) {
    eprintln!("kiln agent: running {}", command.id);
    current.update(
        |report| {
            *report = Some(CommandReport {
                id: command.id.clone(),
                status: CommandStatus::Running,
                progress: None,
                error: None,
                result: Value::Null,
            })
        },
        false,
    );
    let client = client.clone();
    let host = Arc::clone(host);
    let current = Arc::clone(current);
    let export = Arc::clone(export);
    std::thread::spawn(move || {
        let outcome = match &command.kind {
            CommandKind::ExportDisk(params) => {
                let publish = |result: &Value| {
                    current.update(
                        |report| {
                            if let Some(report) = report.as_mut() {
                                report.result = result.clone();
                            }
                        },
                        true,
                    )
                };
                let disk = host.root_disk(&params.hints);
                disk.and_then(|disk| export_disk(client.base(), &disk, &export, params, &publish))
            }
            kind => execute(&client, host.as_ref(), &current, kind),
        };
        if let Err(err) = &outcome {
            eprintln!("kiln agent: {} failed: {err}", command.id);
        }
        current.update(
            |report| {
                if let Some(report) = report.as_mut().filter(|r| r.id == command.id) {
                    match outcome {
                        Ok(result) => {
                            report.status = CommandStatus::Succeeded;
                            report.result = result;
                        }
                        Err(err) => {
                            report.status = CommandStatus::Failed;
                            report.error = Some(err);
                        }
                    }
                }
            },
            true,
        );
    });
}

fn execute(
    client: &ConductorClient,
    host: &dyn Host,
    current: &Arc<Current>,
    kind: &CommandKind,
) -> Result<Value, String> {
    match kind {
        CommandKind::Inventory => host.inventory(),
        CommandKind::WriteImage(params) => write(client, host, current, params),
        CommandKind::WriteConfigdrive(params) => {
            let disk = host.root_disk(&params.hints)?;
            host.write_configdrive(&disk, params)
        }
        CommandKind::EraseMetadata(params) => {
            let disk = host.root_disk(&params.hints)?;
            erase_metadata(&disk)
        }
        // Both are handled before execute (start / the heartbeat loop).
        CommandKind::ExportDisk(_) | CommandKind::StopExport => Ok(Value::Null),
        CommandKind::PowerOff | CommandKind::Idle => Ok(Value::Null),
    }
}

fn write(
    client: &ConductorClient,
    host: &dyn Host,
    current: &Arc<Current>,
    params: &WriteImageParams,
) -> Result<Value, String> {
    let url = ImageUrl::parse(&client.resolve(&params.url)).map_err(|e| e.to_string())?;
    let checksum: Checksum = params
        .checksum
        .parse()
        .map_err(|e: crate::agent::stream::StreamError| e.to_string())?;
    let disk = host.root_disk(&params.hints)?;
    let progress_of = Arc::clone(current);
    let options = WriteOptions {
        progress: Some(Arc::new(move |done, total| {
            progress_of.update(
                |report| {
                    if let Some(report) = report.as_mut() {
                        report.progress = Some(CommandProgress { done, total });
                    }
                },
                false,
            );
        })),
        threads: None,
        resume_window: None,
    };
    let report = write_image(&url, &checksum, &disk, &options).map_err(|e| e.to_string())?;
    serde_json::to_value(&report).map_err(|e| e.to_string())
}

/// Zeroes the first and last MiB of the disk: partition tables (including the
/// backup GPT) and most filesystem signatures go with them.
fn erase_metadata(disk: &Path) -> Result<Value, String> {
    let file = OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    let size = disk_size(&file).map_err(|e| format!("{}: {e}", disk.display()))?;
    let zeros = vec![0u8; ERASE_BYTES.min(size) as usize];
    let io = |e: std::io::Error| format!("{}: {e}", disk.display());
    file.write_all_at(&zeros, 0).map_err(io)?;
    let tail = size.saturating_sub(ERASE_BYTES);
    file.write_all_at(&zeros[..(size - tail) as usize], tail)
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(serde_json::json!({"disk": disk, "erased_bytes": zeros.len() * 2}))
}

/// Size of a regular file or a block device (seek to the end works for both).
fn disk_size(file: &std::fs::File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut handle = file;
    handle.seek(SeekFrom::End(0))
}

/// Writes the config drive partition at the end of `disk` from the conductor's
/// parameters.
pub fn write_configdrive(disk: &Path, params: &ConfigdriveParams) -> Result<Value, String> {
    let content = configdrive_content(params)?;
    let summary = write_config_drive(disk, &content).map_err(|e| e.to_string())?;
    serde_json::to_value(&summary).map_err(|e| e.to_string())
}

/// The config drive's files from the conductor's parameters (the agent's
/// write_configdrive and the conductor's iSCSI writer put the same on disk).
pub fn configdrive_content(params: &ConfigdriveParams) -> Result<ConfigDriveContent, String> {
    Ok(ConfigDriveContent {
        meta_data: serde_json::from_value(params.meta_data.clone())
            .map_err(|e| format!("config drive meta_data: {e}"))?,
        user_data: params.user_data.clone().map(String::into_bytes),
        network_data: serde_json::from_value(params.network_data.clone())
            .map_err(|e| format!("config drive network_data: {e}"))?,
        vendor_data: Value::Object(Map::new()),
        kiln_config: match &params.kiln_config {
            Value::Null => Value::Object(Map::new()),
            other => other.clone(),
        },
    })
}

/// The root disk among `disks` chosen by the conductor's hints.
pub fn select_disk(disks: &[Disk], hints: &Map<String, Value>) -> Result<PathBuf, String> {
    let hints = RootDeviceHints::parse(&Value::Object(hints.clone())).map_err(|e| e.to_string())?;
    let disk = select_root_device(disks, &hints).map_err(|e| e.to_string())?;
    Ok(PathBuf::from(&disk.name))
}

/// The machine the agent runs on (the deploy ramdisk).
pub struct LocalHost;

impl LocalHost {
    fn collect(&self) -> Result<Inventory, String> {
        collect_inventory(Path::new("/")).map_err(|e| e.to_string())
    }
}

impl Host for LocalHost {
    fn inventory(&self) -> Result<Value, String> {
        serde_json::to_value(self.collect()?).map_err(|e| e.to_string())
    }

    fn macs(&self) -> Result<Vec<String>, String> {
        Ok(self
            .collect()?
            .interfaces
            .iter()
            .map(|interface| interface.mac_address.clone())
            .collect())
    }

    fn root_disk(&self, hints: &Map<String, Value>) -> Result<PathBuf, String> {
        select_disk(&self.collect()?.disks, hints)
    }

    fn write_configdrive(&self, disk: &Path, params: &ConfigdriveParams) -> Result<Value, String> {
        write_configdrive(disk, params)
    }

    fn power_off(&self) {
        // The deploy ramdisk's init restarts a finished agent; powering off is
        // the conductor's job through the power driver.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(id: &str) -> Option<CommandReport> {
        Some(CommandReport {
            id: id.to_string(),
            status: CommandStatus::Running,
            progress: None,
            error: None,
            result: Value::Null,
        })
    }

    #[test]
    fn a_command_finishing_before_the_wait_is_not_slept_through() {
        let current = Current::default();
        current.update(|report| *report = running("write_image"), false);
        let (_, seen) = current.report();
        // The worker finishes while the main loop is still heartbeating.
        current.update(
            |report| report.as_mut().unwrap().status = CommandStatus::Succeeded,
            true,
        );
        assert!(current.wait_for_change(seen, Duration::from_secs(3600)));
        let (report, now) = current.report();
        assert_eq!(report.unwrap().status, CommandStatus::Succeeded);
        assert!(!current.wait_for_change(now, Duration::ZERO));
    }

    #[test]
    fn progress_updates_do_not_cut_the_interval_short() {
        let current = Current::default();
        current.update(|report| *report = running("write_image"), false);
        let (_, seen) = current.report();
        current.update(
            |report| {
                report.as_mut().unwrap().progress = Some(CommandProgress { done: 1, total: 2 })
            },
            false,
        );
        assert!(!current.wait_for_change(seen, Duration::ZERO));
    }
}

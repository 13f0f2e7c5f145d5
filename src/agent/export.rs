//! The agent's export_disk command: the root disk served as an iSCSI target on
//! the deploy network address until the conductor's initiator is done.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::{Condvar, Mutex};

use serde_json::Value;

use crate::deploy::protocol::{ExportDiskParams, ExportedDisk};
use crate::iscsi::target::{RunningTarget, TargetConfig};

/// Whether an export should end, and whether one is serving.
#[derive(Default)]
pub struct ExportControl {
    state: Mutex<ExportState>,
    changed: Condvar,
}

#[derive(Default)]
struct ExportState {
    serving: bool,
    stop: bool,
}

impl ExportControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExportState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn request_stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    /// Stops a serving export and waits until its target is shut down.
    pub fn stop_and_wait(&self) {
        let mut state = self.lock();
        state.stop = true;
        self.changed.notify_all();
        while state.serving {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// export_disk: serves the root disk over iSCSI on the deploy network
/// address, reporting `running` with an [`ExportedDisk`] until stop_export
/// (or power_off); then stops the target and succeeds with the same result.
pub fn export_disk(
    conductor_base: &str,
    disk: &Path,
    control: &ExportControl,
    params: &ExportDiskParams,
    publish: &dyn Fn(&Value),
) -> Result<Value, String> {
    let address = deploy_address(conductor_base)?;
    let listen = std::net::SocketAddr::new(address, params.port.unwrap_or(3260));
    let size = OpenOptions::new()
        .read(true)
        .open(disk)
        .and_then(|mut file| file.seek(SeekFrom::End(0)))
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    {
        let mut state = control.lock();
        state.stop = false;
        state.serving = true;
    }
    let started = RunningTarget::start(TargetConfig {
        listen,
        target_iqn: params.target_iqn.clone(),
        chap: params.chap.clone(),
        mutual_chap: params.mutual_chap.clone(),
        disk: disk.to_path_buf(),
    });
    let target = match started {
        Ok(target) => target,
        Err(err) => {
            control.lock().serving = false;
            control.changed.notify_all();
            return Err(err.to_string());
        }
    };
    let exported = ExportedDisk {
        portal: target.local_addr().to_string(),
        target_iqn: params.target_iqn.clone(),
        disk: disk.display().to_string(),
        size,
    };
    let result = serde_json::to_value(&exported).map_err(|e| e.to_string())?;
    eprintln!(
        "kiln agent: exporting {} at {}",
        exported.disk, exported.portal
    );
    publish(&result);
    let mut state = control.lock();
    while !state.stop {
        state = control
            .changed
            .wait(state)
            .unwrap_or_else(|e| e.into_inner());
    }
    drop(state);
    let stopped = target.stop();
    control.lock().serving = false;
    control.changed.notify_all();
    let stats = stopped.map_err(|e| e.to_string())?;
    eprintln!(
        "kiln agent: export stopped: {} sessions, {} bytes written",
        stats.sessions, stats.bytes_written
    );
    Ok(result)
}

/// The local address this machine uses to reach the conductor: the deploy
/// network address the target binds to (a connected UDP socket picks the
/// route without sending anything).
fn deploy_address(conductor_base: &str) -> Result<std::net::IpAddr, String> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let authority = conductor_base
        .split_once("://")
        .map_or(conductor_base, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let conductor = with_port
        .to_socket_addrs()
        .map_err(|e| format!("conductor address {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("conductor address {authority} resolves to nothing"))?;
    let unspecified: std::net::SocketAddr = if conductor.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(unspecified).map_err(|e| format!("deploy address: {e}"))?;
    socket
        .connect(conductor)
        .and_then(|_| socket.local_addr())
        .map(|local| local.ip())
        .map_err(|e| format!("no route to the conductor at {conductor}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_address_is_the_route_to_the_conductor() {
        let local = deploy_address("http://127.0.0.1:6385").unwrap();
        assert!(local.is_loopback());
        assert!(deploy_address("http://[::1]:6385").unwrap().is_loopback());
    }
}

//! The `ipmi` power driver: runs `ipmitool -I lanplus` against the node's BMC.
//!
//! The password reaches ipmitool through the IPMI_PASSWORD environment
//! variable (`-E`), never on its command line where `ps` would show it. BMCs
//! drop commands that come too fast, so the driver keeps a minimum interval
//! between two commands to the same BMC and retries failed ones; every
//! command has a timeout, after which ipmitool is killed.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::{BootDevice, PowerDriver, PowerError, PowerState, Result};

/// How to reach a BMC over IPMI 2.0 (RMCP+).
#[derive(Debug, Clone)]
pub struct IpmiSettings {
    pub address: String,
    /// UDP port; 623 unless the BMC listens elsewhere.
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The least time between two commands to this BMC.
    pub min_interval: Duration,
    /// How long one ipmitool run may take before it is killed.
    pub command_timeout: Duration,
    /// How many times a failed command is tried in all (at least once).
    pub attempts: u32,
    /// The ipmitool program (a path or a name looked up in PATH).
    pub ipmitool: PathBuf,
}

impl IpmiSettings {
    /// Settings with the usual defaults: port 623, 1 s between commands,
    /// 30 s per command, 3 attempts.
    pub fn new(address: &str, user: &str, password: &str) -> Self {
        IpmiSettings {
            address: address.to_string(),
            port: 623,
            user: user.to_string(),
            password: password.to_string(),
            min_interval: Duration::from_secs(1),
            command_timeout: Duration::from_secs(30),
            attempts: 3,
            ipmitool: PathBuf::from("ipmitool"),
        }
    }
}

/// A node whose BMC speaks IPMI.
#[derive(Debug)]
pub struct IpmiDriver {
    node: String,
    settings: IpmiSettings,
    /// When the last command to the BMC ended; commands are serialised by it.
    last_command: Mutex<Option<Instant>>,
}

/// What ipmitool printed when it failed.
struct Failure {
    message: String,
    /// Wrong credentials or an unknown command: trying again cannot help.
    permanent: bool,
}

impl IpmiDriver {
    pub fn new(node: &str, settings: IpmiSettings) -> Self {
        IpmiDriver {
            node: node.to_string(),
            settings,
            last_command: Mutex::new(None),
        }
    }

    fn fail(&self, message: String) -> PowerError {
        PowerError::Failed {
            node: self.node.clone(),
            driver: "ipmi",
            message: format!(
                "BMC {}:{}: {message}",
                self.settings.address, self.settings.port
            ),
        }
    }

    /// Runs `ipmitool ... args`, retrying, and returns its standard output.
    fn run(&self, args: &[&str]) -> Result<String> {
        // Holding the lock for the whole run keeps commands to this BMC apart.
        let mut last = self.last_command.lock().unwrap_or_else(|e| e.into_inner());
        let attempts = self.settings.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(at) = *last {
                let since = at.elapsed();
                if since < self.settings.min_interval {
                    thread::sleep(self.settings.min_interval - since);
                }
            }
            let outcome = self.run_once(args);
            *last = Some(Instant::now());
            match outcome {
                Ok(stdout) => return Ok(stdout),
                Err(failure) if failure.permanent || attempt >= attempts => {
                    return Err(self.fail(format!(
                        "ipmitool {} failed{}: {}",
                        args.join(" "),
                        if attempt > 1 {
                            format!(" {attempt} times")
                        } else {
                            String::new()
                        },
                        failure.message
                    )));
                }
                Err(_) => continue,
            }
        }
    }

    fn run_once(&self, args: &[&str]) -> std::result::Result<String, Failure> {
        let s = &self.settings;
        let port = s.port.to_string();
        let mut child = Command::new(&s.ipmitool)
            .args([
                "-I", "lanplus", "-H", &s.address, "-p", &port, "-U", &s.user, "-E",
            ])
            // ipmitool's own retries would multiply ours; one try per run.
            .args(["-R", "1"])
            .args(args)
            .env("IPMI_PASSWORD", &s.password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure {
                message: format!("cannot run {}: {e}", s.ipmitool.display()),
                permanent: true,
            })?;
        let (stdout, stderr) = collect_output(&mut child);
        let status = wait_with_timeout(&mut child, s.command_timeout);
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        match status {
            Some(Ok(status)) if status.success() => Ok(stdout),
            Some(Ok(status)) => {
                let text = if stderr.trim().is_empty() {
                    &stdout
                } else {
                    &stderr
                };
                let text = one_line(text);
                let hint = if text.contains("RMCP+ session") {
                    " (wrong pm_user or pm_password, or the BMC is unreachable?)"
                } else {
                    ""
                };
                Err(Failure {
                    permanent: is_permanent(&text),
                    message: format!("{status}: {text}{hint}"),
                })
            }
            Some(Err(e)) => Err(Failure {
                message: format!("waiting for ipmitool: {e}"),
                permanent: false,
            }),
            None => Err(Failure {
                message: format!(
                    "no answer within {} s (killed); {}",
                    s.command_timeout.as_secs(),
                    one_line(&stderr)
                ),
                permanent: false,
            }),
        }
    }
}

/// Reads stdout and stderr on their own threads so a chatty ipmitool never
/// blocks on a full pipe while we wait for it.
fn collect_output(child: &mut Child) -> (thread::JoinHandle<String>, thread::JoinHandle<String>) {
    fn reader(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    }
    (reader(child.stdout.take()), reader(child.stderr.take()))
}

/// The exit status, or None when `timeout` passed first (the child is then killed).
fn wait_with_timeout(
    child: &mut Child,
    timeout: Duration,
) -> Option<std::io::Result<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(Ok(status)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Some(Err(e)),
        }
    }
}

/// ipmitool's several lines of complaint as one, for log lines and API errors.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// ipmitool's messages for refused credentials and bad requests.
fn is_permanent(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    [
        "rakp",
        "unauthorized name",
        "invalid user",
        "password",
        "insufficient privilege",
        "invalid command",
        "not supported",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// The state in `chassis power status` output ("Chassis Power is on").
pub fn parse_power_status(stdout: &str) -> Option<PowerState> {
    let line = stdout
        .lines()
        .map(|line| line.trim().to_ascii_lowercase())
        .find(|line| line.starts_with("chassis power is"))?;
    match line.trim_start_matches("chassis power is").trim() {
        "on" => Some(PowerState::On),
        "off" => Some(PowerState::Off),
        _ => None,
    }
}

impl PowerDriver for IpmiDriver {
    fn driver_name(&self) -> &'static str {
        "ipmi"
    }

    fn power_state(&self) -> Result<PowerState> {
        let stdout = self.run(&["chassis", "power", "status"])?;
        parse_power_status(&stdout).ok_or_else(|| {
            self.fail(format!(
                "cannot read the power state from ipmitool's answer {:?}",
                stdout.trim()
            ))
        })
    }

    fn power_on(&self) -> Result<()> {
        if self.power_state()? != PowerState::On {
            self.run(&["chassis", "power", "on"])?;
        }
        Ok(())
    }

    fn power_off(&self) -> Result<()> {
        if self.power_state()? != PowerState::Off {
            self.run(&["chassis", "power", "off"])?;
        }
        Ok(())
    }

    fn reboot(&self) -> Result<()> {
        // Off then on rather than `power cycle`: both steps can be retried
        // safely, where a cycle whose answer was lost would be sent twice, and
        // BMCs refuse a cycle while the chassis is off.
        self.power_off()?;
        self.run(&["chassis", "power", "on"])?;
        Ok(())
    }

    fn set_boot_device(&self, device: BootDevice, persistent: bool) -> Result<()> {
        let target = match device {
            BootDevice::Network => "pxe",
            BootDevice::Disk => "disk",
        };
        // kiln deploys UEFI nodes; efiboot keeps the BMC from falling back to legacy.
        let options = if persistent {
            "options=persistent,efiboot"
        } else {
            "options=efiboot"
        };
        self.run(&["chassis", "bootdev", target, options])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_status_lines_are_read_and_others_refused() {
        assert_eq!(
            parse_power_status("Chassis Power is on\n"),
            Some(PowerState::On)
        );
        assert_eq!(
            parse_power_status("  Chassis Power is off  \n"),
            Some(PowerState::Off)
        );
        assert_eq!(parse_power_status("Chassis Power is unknown\n"), None);
        assert_eq!(parse_power_status(""), None);
    }

    #[test]
    fn credential_errors_are_not_retried() {
        assert!(is_permanent(
            "Error: Unable to establish IPMI v2 / RMCP+ session\nRAKP 2 HMAC is invalid"
        ));
        assert!(!is_permanent(
            "Error: Unable to establish IPMI v2 / RMCP+ session"
        ));
    }

    #[test]
    fn a_missing_ipmitool_is_reported_with_node_and_bmc() {
        let mut settings = IpmiSettings::new("192.0.2.1", "admin", "secret");
        settings.ipmitool = PathBuf::from("/nonexistent/ipmitool");
        settings.min_interval = Duration::ZERO;
        let err = IpmiDriver::new("n7", settings)
            .power_state()
            .unwrap_err()
            .to_string();
        assert!(err.contains("n7") && err.contains("192.0.2.1:623"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}

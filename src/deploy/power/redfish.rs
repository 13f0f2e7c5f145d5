//! The `redfish` power driver: a node's BMC spoken to over Redfish (HTTPS + JSON).
//!
//! The driver finds the ComputerSystem (the node's `pm_system_id`, or the only
//! member of /redfish/v1/Systems), switches power with the
//! ComputerSystem.Reset action at the target the system advertises, and sets
//! the boot override with a PATCH that carries the system's ETag when the BMC
//! sends one. BMCs apply power changes a while after accepting them, so power
//! operations poll PowerState until it reads as asked.
//!
//! TLS certificates are verified by default; `redfish_verify_ca` turns that off
//! or names a PEM file of CA certificates to trust instead of the web roots.

use std::path::PathBuf;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use super::{BootDevice, PowerDriver, PowerError, PowerState, Result};

/// How the driver checks the BMC's TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyCa {
    /// Against the well-known web roots.
    WebRoots,
    /// Against the CA certificates in this PEM file.
    CaFile(PathBuf),
    /// Not at all (`redfish_verify_ca: false`): for lab BMCs only.
    Off,
}

impl VerifyCa {
    /// Reads driver_info's `redfish_verify_ca`: absent or "true", "false", or a path.
    pub fn from_driver_info(value: Option<&str>) -> VerifyCa {
        match value {
            None | Some("true") => VerifyCa::WebRoots,
            Some("false") => VerifyCa::Off,
            Some(path) => VerifyCa::CaFile(PathBuf::from(path)),
        }
    }
}

/// How the driver proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedfishAuth {
    /// HTTP basic auth on every request.
    Basic,
    /// A session from /redfish/v1/SessionService/Sessions, its X-Auth-Token on
    /// every request; a new one is made when the BMC forgets it.
    Session,
}

/// How to reach a node's Redfish service.
#[derive(Debug, Clone)]
pub struct RedfishSettings {
    /// The service root's scheme, host and port: "https://bmc.example:8443".
    pub base_url: String,
    /// The ComputerSystem: an id ("1") or a path ("/redfish/v1/Systems/1").
    pub system_id: Option<String>,
    pub user: String,
    pub password: String,
    pub verify: VerifyCa,
    pub auth: RedfishAuth,
    /// How long one HTTP request may take.
    pub request_timeout: Duration,
    /// How long a power change may take to show in PowerState.
    pub power_timeout: Duration,
    /// Time between two PowerState reads while waiting.
    pub poll_interval: Duration,
}

impl RedfishSettings {
    /// Settings from a node's `pm_addr` ("host", "host:port" or a URL; https
    /// unless a scheme is given) and `pm_port`, with basic auth and verification on.
    pub fn new(pm_addr: &str, pm_port: Option<u16>, user: &str, password: &str) -> Self {
        let addr = pm_addr.trim().trim_end_matches('/');
        let mut base_url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("https://{addr}")
        };
        if let Some(port) = pm_port {
            let authority = base_url.split("://").nth(1).unwrap_or_default();
            // A port already in the address wins; an IPv6 literal ends in ']'.
            let has_port = authority
                .rsplit_once(':')
                .is_some_and(|(_, tail)| !tail.contains(']'));
            if !has_port {
                base_url = format!("{base_url}:{port}");
            }
        }
        RedfishSettings {
            base_url,
            system_id: None,
            user: user.to_string(),
            password: password.to_string(),
            verify: VerifyCa::WebRoots,
            auth: RedfishAuth::Basic,
            request_timeout: Duration::from_secs(30),
            power_timeout: Duration::from_secs(120),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// A node whose BMC speaks Redfish.
pub struct RedfishDriver {
    node: String,
    settings: RedfishSettings,
    agent: ureq::Agent,
    /// The system's path, found on first use.
    system: Mutex<Option<String>>,
    /// The session token and the session's path, with session auth.
    session: Mutex<Option<(String, String)>>,
}

impl std::fmt::Debug for RedfishDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishDriver")
            .field("node", &self.node)
            .field("base_url", &self.settings.base_url)
            .finish_non_exhaustive()
    }
}

/// One HTTP answer: status, ETag and body text.
struct Answer {
    status: u16,
    etag: Option<String>,
    location: Option<String>,
    token: Option<String>,
    body: String,
}

impl RedfishDriver {
    /// A driver for `node`; fails when the CA file cannot be read.
    pub fn new(node: &str, settings: RedfishSettings) -> Result<Self> {
        let tls = match &settings.verify {
            VerifyCa::WebRoots => TlsConfig::builder().build(),
            VerifyCa::Off => TlsConfig::builder().disable_verification(true).build(),
            VerifyCa::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|source| PowerError::Io {
                    node: node.to_string(),
                    driver: "redfish",
                    what: format!("reading redfish_verify_ca file {}", path.display()),
                    source,
                })?;
                let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                        _ => None,
                    })
                    .collect();
                if certs.is_empty() {
                    return Err(PowerError::Failed {
                        node: node.to_string(),
                        driver: "redfish",
                        message: format!(
                            "redfish_verify_ca file {} holds no PEM certificate",
                            path.display()
                        ),
                    });
                }
                TlsConfig::builder()
                    .root_certs(RootCerts::new_with_certs(&certs))
                    .build()
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(settings.request_timeout))
            .tls_config(tls)
            .build()
            .new_agent();
        Ok(RedfishDriver {
            node: node.to_string(),
            settings,
            agent,
            system: Mutex::new(None),
            session: Mutex::new(None),
        })
    }

    fn fail(&self, message: String) -> PowerError {
        PowerError::Failed {
            node: self.node.clone(),
            driver: "redfish",
            message: format!("BMC {}: {message}", self.settings.base_url),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.settings.base_url)
        }
    }

    /// One request without authentication handling beyond `auth_header`.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Answer> {
        let url = self.url(path);
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Accept", "application/json")
            .header("OData-Version", "4.0");
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let bad = |e: ureq::http::Error| self.fail(format!("{method} {url}: bad request: {e}"));
        let sent = match body {
            Some(body) => self.agent.run(
                builder
                    .header("Content-Type", "application/json")
                    .body(body.to_string())
                    .map_err(bad)?,
            ),
            None => self.agent.run(builder.body(()).map_err(bad)?),
        };
        let mut response =
            sent.map_err(|e| self.fail(format!("{method} {url}: {}", describe(&e))))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header("ETag");
        let location = header("Location");
        let token = header("X-Auth-Token");
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.fail(format!("{method} {url}: reading the answer: {e}")))?;
        Ok(Answer {
            status,
            etag,
            location,
            token,
            body,
        })
    }

    /// An authenticated request; a session the BMC forgot is made again once.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, String)],
    ) -> Result<Answer> {
        let mut headers: Vec<(&str, String)> = extra.to_vec();
        match self.settings.auth {
            RedfishAuth::Basic => {
                headers.push(("Authorization", self.basic_auth()));
                let answer = self.send(method, path, body, &headers)?;
                self.check(method, path, answer)
            }
            RedfishAuth::Session => {
                headers.push(("X-Auth-Token", self.session_token(false)?));
                let answer = self.send(method, path, body, &headers)?;
                if answer.status != 401 {
                    return self.check(method, path, answer);
                }
                headers.pop();
                headers.push(("X-Auth-Token", self.session_token(true)?));
                let answer = self.send(method, path, body, &headers)?;
                self.check(method, path, answer)
            }
        }
    }

    /// Turns an error status into an error naming the request and the BMC's message.
    fn check(&self, method: &str, path: &str, answer: Answer) -> Result<Answer> {
        if answer.status < 400 {
            return Ok(answer);
        }
        let hint = match answer.status {
            401 => " (wrong pm_user or pm_password?)",
            404 if path.contains("/Systems/") => " (wrong pm_system_id?)",
            _ => "",
        };
        Err(self.fail(format!(
            "{method} {path}: HTTP {}{hint}: {}",
            answer.status,
            redfish_message(&answer.body)
        )))
    }

    fn basic_auth(&self) -> String {
        let pair = format!("{}:{}", self.settings.user, self.settings.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    /// The session token, logging in when there is none or `renew` is asked.
    fn session_token(&self, renew: bool) -> Result<String> {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if let (false, Some((token, _))) = (renew, session.as_ref()) {
            return Ok(token.clone());
        }
        let path = "/redfish/v1/SessionService/Sessions";
        let credentials =
            json!({"UserName": self.settings.user, "Password": self.settings.password});
        let answer = self.send("POST", path, Some(&credentials), &[])?;
        let answer = self.check("POST", path, answer)?;
        let token = answer
            .token
            .ok_or_else(|| self.fail(format!("POST {path}: the BMC sent no X-Auth-Token")))?;
        let location = answer.location.unwrap_or_default();
        *session = Some((token.clone(), location));
        Ok(token)
    }

    fn get_json(&self, path: &str) -> Result<(Value, Option<String>)> {
        let answer = self.request("GET", path, None, &[])?;
        let value = serde_json::from_str(&answer.body)
            .map_err(|e| self.fail(format!("GET {path}: the answer is not JSON: {e}")))?;
        Ok((value, answer.etag))
    }

    /// The ComputerSystem's path, found once.
    fn system_path(&self) -> Result<String> {
        let mut cached = self.system.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = cached.as_ref() {
            return Ok(path.clone());
        }
        let path = match self.settings.system_id.as_deref() {
            Some(id) if id.starts_with('/') => id.trim_end_matches('/').to_string(),
            Some(id) => format!("/redfish/v1/Systems/{id}"),
            None => {
                let (systems, _) = self.get_json("/redfish/v1/Systems")?;
                let members: Vec<&str> = systems["Members"]
                    .as_array()
                    .map(|members| {
                        members
                            .iter()
                            .filter_map(|m| m["@odata.id"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                match members.as_slice() {
                    [only] => only.trim_end_matches('/').to_string(),
                    [] => return Err(self.fail("/redfish/v1/Systems has no members".into())),
                    many => {
                        return Err(self.fail(format!(
                            "/redfish/v1/Systems has {} members ({}); set pm_system_id",
                            many.len(),
                            many.join(", ")
                        )));
                    }
                }
            }
        };
        *cached = Some(path.clone());
        Ok(path)
    }

    fn system(&self) -> Result<(String, Value, Option<String>)> {
        let path = self.system_path()?;
        let (value, etag) = self.get_json(&path)?;
        Ok((path, value, etag))
    }

    /// POSTs ComputerSystem.Reset with `reset_type` to the advertised target.
    fn reset(&self, reset_type: &str) -> Result<()> {
        let (path, system, _) = self.system()?;
        let action = &system["Actions"]["#ComputerSystem.Reset"];
        let target = action["target"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
        if let Some(allowed) = action["ResetType@Redfish.AllowableValues"].as_array()
            && !allowed.iter().any(|v| v.as_str() == Some(reset_type))
        {
            return Err(self.fail(format!(
                "{path} does not allow ResetType {reset_type} (allowed: {})",
                allowed
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.request(
            "POST",
            &target,
            Some(&json!({"ResetType": reset_type})),
            &[],
        )?;
        Ok(())
    }

    /// Polls PowerState until it reads `wanted`.
    fn wait_for(&self, wanted: PowerState) -> Result<()> {
        let deadline = Instant::now() + self.settings.power_timeout;
        loop {
            if self.power_state()? == wanted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.fail(format!(
                    "PowerState did not become {} within {} s",
                    redfish_power_name(wanted),
                    self.settings.power_timeout.as_secs()
                )));
            }
            thread::sleep(self.settings.poll_interval);
        }
    }

    /// Ends the session, if any (BMCs allow only a few at a time).
    pub fn logout(&self) {
        let session = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((token, location)) = session
            && !location.is_empty()
        {
            let _ = self.send("DELETE", &location, None, &[("X-Auth-Token", token)]);
        }
    }
}

impl Drop for RedfishDriver {
    fn drop(&mut self) {
        self.logout();
    }
}

fn redfish_power_name(state: PowerState) -> &'static str {
    match state {
        PowerState::On => "On",
        PowerState::Off => "Off",
    }
}

/// A ureq error in words; certificate problems say how to fix them.
fn describe(error: &ureq::Error) -> String {
    let text = error.to_string();
    let tls = matches!(error, ureq::Error::Rustls(_) | ureq::Error::Tls(_))
        || text.to_ascii_lowercase().contains("certificate");
    if tls {
        format!(
            "TLS: {text} (the BMC's certificate is not trusted; give its CA file \
             in redfish_verify_ca, or redfish_verify_ca: false for a lab BMC)"
        )
    } else {
        text
    }
}

/// The message of a Redfish error body, or the body itself.
fn redfish_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    if let Some(error) = parsed.as_ref().map(|v| &v["error"]) {
        let extended = error["@Message.ExtendedInfo"]
            .as_array()
            .and_then(|info| info.first())
            .and_then(|info| info["Message"].as_str());
        if let Some(message) = extended.or(error["message"].as_str()) {
            return message.to_string();
        }
    }
    let body = body.trim();
    body.chars().take(300).collect()
}

/// PowerState values Redfish defines, folded to on or off: a node powering
/// on or off is reported as where it is going.
pub fn parse_power_state(value: &str) -> Option<PowerState> {
    match value {
        "On" | "PoweringOn" | "Paused" => Some(PowerState::On),
        "Off" | "PoweringOff" => Some(PowerState::Off),
        _ => None,
    }
}

impl PowerDriver for RedfishDriver {
    fn driver_name(&self) -> &'static str {
        "redfish"
    }

    fn power_state(&self) -> Result<PowerState> {
        let (path, system, _) = self.system()?;
        let value = system["PowerState"].as_str().unwrap_or_default();
        parse_power_state(value)
            .ok_or_else(|| self.fail(format!("{path}: unknown PowerState {value:?}")))
    }

    fn power_on(&self) -> Result<()> {
        if self.power_state()? != PowerState::On {
            self.reset("On")?;
            self.wait_for(PowerState::On)?;
        }
        Ok(())
    }

    fn power_off(&self) -> Result<()> {
        if self.power_state()? != PowerState::Off {
            self.reset("ForceOff")?;
            self.wait_for(PowerState::Off)?;
        }
        Ok(())
    }

    fn reboot(&self) -> Result<()> {
        match self.power_state()? {
            PowerState::On => self.reset("ForceRestart")?,
            PowerState::Off => self.reset("On")?,
        }
        self.wait_for(PowerState::On)
    }

    fn set_boot_device(&self, device: BootDevice, persistent: bool) -> Result<()> {
        let (path, _, etag) = self.system()?;
        let target = match device {
            BootDevice::Network => "Pxe",
            BootDevice::Disk => "Hdd",
        };
        let enabled = if persistent { "Continuous" } else { "Once" };
        let body = json!({"Boot": {
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": enabled,
            "BootSourceOverrideMode": "UEFI",
        }});
        // If-Match keeps a concurrent change to the system from being overwritten.
        let headers: Vec<(&str, String)> = etag.into_iter().map(|e| ("If-Match", e)).collect();
        self.request("PATCH", &path, Some(&body), &headers)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_from_pm_addr_and_port() {
        let url = |addr, port| RedfishSettings::new(addr, port, "u", "p").base_url;
        assert_eq!(url("bmc1", None), "https://bmc1");
        assert_eq!(url("bmc1", Some(8443)), "https://bmc1:8443");
        assert_eq!(url("https://bmc1:443/", Some(8443)), "https://bmc1:443");
        assert_eq!(url("http://127.0.0.1", Some(8000)), "http://127.0.0.1:8000");
        assert_eq!(url("[fd00::1]", Some(8443)), "https://[fd00::1]:8443");
    }

    #[test]
    fn verify_ca_values() {
        assert_eq!(VerifyCa::from_driver_info(None), VerifyCa::WebRoots);
        assert_eq!(VerifyCa::from_driver_info(Some("true")), VerifyCa::WebRoots);
        assert_eq!(VerifyCa::from_driver_info(Some("false")), VerifyCa::Off);
        assert_eq!(
            VerifyCa::from_driver_info(Some("/etc/bmc-ca.pem")),
            VerifyCa::CaFile("/etc/bmc-ca.pem".into())
        );
    }

    #[test]
    fn power_states_fold_to_on_or_off() {
        assert_eq!(parse_power_state("PoweringOn"), Some(PowerState::On));
        assert_eq!(parse_power_state("Off"), Some(PowerState::Off));
        assert_eq!(parse_power_state("Exploding"), None);
    }

    #[test]
    fn error_bodies_give_their_message() {
        let body = r#"{"error": {"code": "Base.1.0.GeneralError", "message": "boom",
            "@Message.ExtendedInfo": [{"Message": "The ETag does not match."}]}}"#;
        assert_eq!(redfish_message(body), "The ETag does not match.");
        assert_eq!(redfish_message("plain text"), "plain text");
    }

    #[test]
    fn a_missing_ca_file_names_node_and_file() {
        let mut settings = RedfishSettings::new("127.0.0.1", Some(1), "u", "p");
        settings.verify = VerifyCa::CaFile("/nonexistent/ca.pem".into());
        let err = RedfishDriver::new("n3", settings).unwrap_err().to_string();
        assert!(
            err.contains("n3") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }
}

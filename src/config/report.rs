//! What a node tells the conductor after an apply: configured, or failed
//! with the script that failed, and which conductor metadata it applied.
//! Sent to POST /v1/nodes/{uuid}/config-status with the node's config token.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::apply::{ApplyError, ApplyOutcome};
use super::collect::{error_message, http_agent, kiln_setting, sha256_hex};
use super::value::Value;
use crate::deploy::protocol::{CONFIG_TOKEN_HEADER, ConfigResult, ConfigStatusRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportStatus {
    Configured,
    Failed,
}

/// The body a node sends (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub status: ReportStatus,
    /// The refresh script that failed, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_script: Option<PathBuf>,
    /// The error, for `kiln node show`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `kiln.metadata_sha256` of the metadata applied (the conductor's ETag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_sha256: Option<String>,
}

impl ApplyReport {
    /// Success for `metadata` (applied now or before).
    pub fn configured(metadata: &Value) -> ApplyReport {
        ApplyReport {
            status: ReportStatus::Configured,
            failed_script: None,
            message: None,
            metadata_sha256: kiln_setting(metadata, "metadata_sha256").map(str::to_string),
        }
    }

    /// The report for an apply result; None when there is nothing new to
    /// say (metadata unchanged, or another apply holds the lock).
    pub fn from_result(
        result: &Result<ApplyOutcome, ApplyError>,
        metadata: Option<&Value>,
    ) -> Option<ApplyReport> {
        let metadata_sha256 =
            metadata.and_then(|m| kiln_setting(m, "metadata_sha256").map(str::to_string));
        match result {
            Ok(ApplyOutcome::Unchanged) | Err(ApplyError::Lock(_)) => None,
            Ok(ApplyOutcome::Applied { .. }) => Some(ApplyReport {
                status: ReportStatus::Configured,
                failed_script: None,
                message: None,
                metadata_sha256,
            }),
            Err(e) => Some(ApplyReport {
                status: ReportStatus::Failed,
                failed_script: match e {
                    ApplyError::Refresh(r) => r.script().map(PathBuf::from),
                    _ => None,
                },
                message: Some(e.to_string()),
                metadata_sha256,
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url} refused the config report (HTTP {status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("cannot encode the config report: {0}")]
    Encode(String),
}

/// Somewhere to send reports. `metadata` is what was collected (merged), so a
/// reporter can find its address and credentials there.
pub trait Reporter {
    fn report(&self, report: &ApplyReport, metadata: &Value) -> Result<(), ReportError>;
}

/// POST to the conductor's config-status endpoint.
pub struct HttpReporter {
    /// Status URL; None: `kiln.status_url` of the metadata.
    pub url: Option<String>,
    /// Config token; None: `kiln.config_token` of the metadata.
    pub token: Option<String>,
}

/// `configure.d/20-x` for a refresh script path: phase folder and name.
fn script_label(script: &Path) -> String {
    let name = script.file_name().map(|n| n.to_string_lossy().into_owned());
    let phase = script
        .parent()
        .and_then(Path::file_name)
        .map(|p| p.to_string_lossy().into_owned());
    match (phase, name) {
        (Some(phase), Some(name)) => format!("{phase}/{name}"),
        _ => script.display().to_string(),
    }
}

impl ApplyReport {
    /// The conductor's request body. Without a conductor metadata hash, the
    /// hash of the merged metadata is sent (the conductor then shows the report
    /// as not about its current metadata).
    pub fn to_request(&self, metadata: &Value) -> ConfigStatusRequest {
        ConfigStatusRequest {
            status: match self.status {
                ReportStatus::Configured => ConfigResult::Succeeded,
                ReportStatus::Failed => ConfigResult::Failed,
            },
            script: self.failed_script.as_deref().map(script_label),
            message: self.message.clone(),
            metadata_sha256: self
                .metadata_sha256
                .clone()
                .unwrap_or_else(|| sha256_hex(metadata.to_python_json().as_bytes())),
        }
    }
}

impl Reporter for HttpReporter {
    fn report(&self, report: &ApplyReport, metadata: &Value) -> Result<(), ReportError> {
        let url = match &self.url {
            Some(url) => url.clone(),
            None => match kiln_setting(metadata, "status_url") {
                Some(url) => url.to_string(),
                // No conductor to tell (a node without one).
                None => return Ok(()),
            },
        };
        let token = self
            .token
            .clone()
            .or_else(|| kiln_setting(metadata, "config_token").map(str::to_string));
        let body = serde_json::to_string(&report.to_request(metadata))
            .map_err(|err| ReportError::Encode(err.to_string()))?;
        let mut request = http_agent()
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(token) = &token {
            request = request.header(CONFIG_TOKEN_HEADER, token);
        }
        let mut response = request
            .send(&body)
            .map_err(|err| ReportError::Unreachable {
                url: url.clone(),
                message: err.to_string(),
            })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Err(ReportError::Refused {
            url,
            status,
            message: error_message(&text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reports_name_the_phase_and_script_and_carry_the_metadata_hash() {
        let metadata = Value::from_json(
            r#"{"kiln": {"metadata_sha256": "ab12", "status_url": "http://c/x"}}"#,
        )
        .unwrap();
        let report = ApplyReport {
            status: ReportStatus::Failed,
            failed_script: Some(PathBuf::from(
                "/usr/libexec/os-refresh-config/configure.d/20-x",
            )),
            message: Some("exit 3".into()),
            metadata_sha256: kiln_setting(&metadata, "metadata_sha256").map(str::to_string),
        };
        let wire = serde_json::to_value(report.to_request(&metadata)).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"status": "failed", "script": "configure.d/20-x",
                               "message": "exit 3", "metadata_sha256": "ab12"})
        );
    }

    #[test]
    fn without_a_conductor_hash_the_merged_metadata_is_hashed() {
        let metadata = Value::from_json(r#"{"a": 1}"#).unwrap();
        let report = ApplyReport {
            status: ReportStatus::Configured,
            failed_script: None,
            message: None,
            metadata_sha256: None,
        };
        let request = report.to_request(&metadata);
        // `printf '{"a": 1}' | sha256sum` (python json.dumps form).
        assert_eq!(
            request.metadata_sha256,
            "f9d86028c6e0d64e225186f96acb69338b2c59764df79162107f5c4bb34d1310"
        );
        assert_eq!(request.status, ConfigResult::Succeeded);
    }
}

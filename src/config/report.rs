//! What a node tells the conductor after an apply: configured, or failed
//! with the script that failed. The transport is a seam; the conductor's
//! endpoint comes with issue 6.

use std::path::PathBuf;

use serde::Serialize;

use super::apply::{ApplyError, ApplyOutcome};

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
}

impl ApplyReport {
    /// The report for an apply result; None when there is nothing new to
    /// say (metadata unchanged, or another apply holds the lock).
    pub fn from_result(result: &Result<ApplyOutcome, ApplyError>) -> Option<ApplyReport> {
        match result {
            Ok(ApplyOutcome::Unchanged) | Err(ApplyError::Lock(_)) => None,
            Ok(ApplyOutcome::Applied { .. }) => Some(ApplyReport {
                status: ReportStatus::Configured,
                failed_script: None,
                message: None,
            }),
            Err(e) => Some(ApplyReport {
                status: ReportStatus::Failed,
                failed_script: match e {
                    ApplyError::Refresh(r) => r.script().map(PathBuf::from),
                    _ => None,
                },
                message: Some(e.to_string()),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reporting to {url} is not implemented yet")]
    NotImplemented { url: String },
}

/// Somewhere to send reports.
pub trait Reporter {
    fn report(&self, report: &ApplyReport) -> Result<(), ReportError>;
}

/// POST to the conductor.
// TODO(issue 6): send the report once the conductor has its endpoint.
pub struct HttpReporter {
    pub url: String,
}

impl Reporter for HttpReporter {
    fn report(&self, _report: &ApplyReport) -> Result<(), ReportError> {
        Err(ReportError::NotImplemented {
            url: self.url.clone(),
        })
    }
}

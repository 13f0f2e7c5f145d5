//! The agent's calls to the conductor: lookup, then heartbeats carrying the
//! agent token.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::deploy::protocol::{
    AGENT_TOKEN_HEADER, ErrorBody, HeartbeatRequest, HeartbeatResponse, LookupRequest,
    LookupResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the conductor at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("conductor refused {url} (HTTP {status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("conductor sent an unreadable answer to {url}: {message}")]
    BadAnswer { url: String, message: String },
}

impl ClientError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection to one conductor's API.
#[derive(Clone)]
pub struct ConductorClient {
    base: String,
    agent: ureq::Agent,
}

impl ConductorClient {
    /// `api_url` is the conductor's root (http://HOST:PORT), with or without `/v1`.
    pub fn new(api_url: &str) -> Self {
        let base = api_url
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_string();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        ConductorClient { base, agent }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// An absolute URL for `url`: a path like `/v1/images/x` is the conductor's.
    pub fn resolve(&self, url: &str) -> String {
        if url.starts_with('/') {
            format!("{}{url}", self.base)
        } else {
            url.to_string()
        }
    }

    pub fn lookup(&self, request: &LookupRequest) -> Result<LookupResponse, ClientError> {
        self.post("/v1/agent/lookup", request, None)
    }

    pub fn heartbeat(
        &self,
        node: Uuid,
        token: &str,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.post(&format!("/v1/agent/{node}/heartbeat"), request, Some(token))
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        token: Option<&str>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let text = serde_json::to_string(body).map_err(|err| ClientError::BadAnswer {
            url: url.clone(),
            message: format!("cannot encode the request: {err}"),
        })?;
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(token) = token {
            request = request.header(AGENT_TOKEN_HEADER, token);
        }
        let mut response = request
            .send(text.as_str())
            .map_err(|err| ClientError::Unreachable {
                url: url.clone(),
                message: err.to_string(),
            })?;
        let status = response.status().as_u16();
        let answer =
            response
                .body_mut()
                .read_to_string()
                .map_err(|err| ClientError::Unreachable {
                    url: url.clone(),
                    message: err.to_string(),
                })?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<ErrorBody>(&answer)
                .map(|body| body.error.message)
                .unwrap_or(answer);
            return Err(ClientError::Refused {
                url,
                status,
                message,
            });
        }
        serde_json::from_str(&answer).map_err(|err| ClientError::BadAnswer {
            url,
            message: err.to_string(),
        })
    }
}

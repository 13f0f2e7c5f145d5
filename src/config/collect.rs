//! Metadata sources, in the order their data is merged (later wins): the
//! config drive, the conductor's HTTP endpoint, local JSON files.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::value::{self, Value};
use crate::deploy::protocol::{CONFIG_TOKEN_HEADER, ErrorBody};

/// The key of kiln's own settings in the metadata (the conductor's endpoints
/// and the node's identity).
pub const KILN_KEY: &str = "kiln";

pub use super::drive::{ConfigDrive, DriveLocation};

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config drive {device}: neither an ISO9660 nor a FAT filesystem")]
    UnknownDrive { device: PathBuf },
    #[error("config drive {device}: {source}")]
    Iso {
        device: PathBuf,
        source: crate::format::iso9660::IsoReadError,
    },
    #[error("config drive {device}: {source}")]
    Fat {
        device: PathBuf,
        source: crate::format::fat::read::FatReadError,
    },
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url} refused (HTTP {status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
}

/// One metadata source. `collect` returns None when the source has nothing
/// (no config drive attached, empty folder).
pub trait Collector {
    /// Cache name of the source.
    fn name(&self) -> &str;
    fn collect(&self) -> Result<Option<Value>, CollectError>;

    /// Like `collect`, seeing what the earlier sources gave (merged): a source
    /// may take its address and credentials from there.
    fn collect_after(&self, earlier: &Value) -> Result<Option<Value>, CollectError> {
        let _ = earlier;
        self.collect()
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Option<Value>, CollectError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CollectError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    Value::from_json(&text)
        .map(Some)
        .map_err(|source| CollectError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// os-collect-config's local collector: every `*.json` file of a folder,
/// in name order, deep-merged.
pub struct LocalDir {
    pub dir: PathBuf,
}

impl Collector for LocalDir {
    fn name(&self) -> &str {
        "local"
    }

    fn collect(&self) -> Result<Option<Value>, CollectError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CollectError::Read {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
            .collect();
        paths.sort();
        let mut docs = Vec::new();
        for path in &paths {
            docs.extend(read_json(path)?);
        }
        Ok((!docs.is_empty()).then(|| value::merge_documents(&docs)))
    }
}

/// The conductor's metadata endpoint for this node: GET with the node's
/// config token, remembering the ETag so an unchanged answer (304) costs
/// nothing. URL and token come from the options or, by default, from what the
/// earlier sources (the config drive's `kiln` key) say.
pub struct Http {
    /// Metadata URL; None: `kiln.metadata_url` of the earlier sources.
    pub url: Option<String>,
    /// Config token; None: `kiln.config_token` of the earlier sources.
    pub token: Option<String>,
    /// The last answer: (ETag, metadata), for If-None-Match.
    last: Mutex<Option<(String, Value)>>,
}

impl Http {
    pub fn new(url: Option<String>, token: Option<String>) -> Http {
        Http {
            url,
            token,
            last: Mutex::new(None),
        }
    }
}

/// `kiln.KEY` of metadata, when it is a string.
pub fn kiln_setting<'a>(metadata: &'a Value, key: &str) -> Option<&'a str> {
    match metadata.get(KILN_KEY)?.get(key)? {
        Value::Str(text) if !text.is_empty() => Some(text),
        _ => None,
    }
}

/// `metadata` with `kiln.metadata_sha256` set to `sha` (what the node reports
/// it applied).
fn with_sha(metadata: Value, sha: &str) -> Value {
    let mut doc = metadata;
    let stamp = Value::Map(vec![(
        KILN_KEY.to_string(),
        Value::Map(vec![(
            "metadata_sha256".to_string(),
            Value::Str(sha.to_string()),
        )]),
    )]);
    value::deep_merge(&mut doc, &stamp);
    doc
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// An HTTP client for the conductor: short timeouts (a poll must not hang),
/// statuses handled by the caller.
pub(crate) fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

impl Collector for Http {
    fn name(&self) -> &str {
        "http"
    }

    fn collect(&self) -> Result<Option<Value>, CollectError> {
        self.collect_after(&Value::empty_map())
    }

    fn collect_after(&self, earlier: &Value) -> Result<Option<Value>, CollectError> {
        let url = match &self.url {
            Some(url) => url.clone(),
            None => match kiln_setting(earlier, "metadata_url") {
                Some(url) => url.to_string(),
                None => return Ok(None),
            },
        };
        let token = self
            .token
            .clone()
            .or_else(|| kiln_setting(earlier, "config_token").map(str::to_string));
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut request = http_agent().get(&url);
        if let Some(token) = &token {
            request = request.header(CONFIG_TOKEN_HEADER, token);
        }
        if let Some((etag, _)) = last.as_ref() {
            request = request.header("If-None-Match", format!("\"{etag}\""));
        }
        let mut response = request.call().map_err(|err| CollectError::Unreachable {
            url: url.clone(),
            message: err.to_string(),
        })?;
        let status = response.status().as_u16();
        if status == 304
            && let Some((_, value)) = last.as_ref()
        {
            return Ok(Some(value.clone()));
        }
        let body =
            response
                .body_mut()
                .read_to_string()
                .map_err(|err| CollectError::Unreachable {
                    url: url.clone(),
                    message: format!("reading the answer: {err}"),
                })?;
        if status != 200 {
            return Err(CollectError::Refused {
                url,
                status,
                message: error_message(&body),
            });
        }
        let sha = sha256_hex(body.as_bytes());
        let metadata = Value::from_json(&body).map_err(|source| CollectError::Parse {
            path: PathBuf::from(&url),
            source,
        })?;
        let metadata = with_sha(metadata, &sha);
        *last = Some((sha, metadata.clone()));
        Ok(Some(metadata))
    }
}

/// The conductor's error message from an error body, or the body itself.
pub(crate) fn error_message(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .map(|error| error.error.message)
        .unwrap_or_else(|_| body.trim().chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A metadata server answering like the conductor: the body with its
    /// SHA-256 as ETag, 304 for a matching If-None-Match, 401 without the
    /// token. Records (token, If-None-Match) of every request.
    /// (config token, If-None-Match) of each request.
    type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

    fn server(body: &'static str) -> (String, Seen) {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/meta", server.server_addr().to_ip().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            let etag = sha256_hex(body.as_bytes());
            for request in server.incoming_requests() {
                let get = |name: &'static str| {
                    request
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv(name))
                        .map(|h| h.value.to_string())
                };
                let (token, tag) = (get(CONFIG_TOKEN_HEADER), get("If-None-Match"));
                log.lock().unwrap().push((token.clone(), tag.clone()));
                let response = if token.as_deref() != Some("tok") {
                    tiny_http::Response::from_string(
                        r#"{"error": {"code": 401, "message": "wrong config token"}}"#,
                    )
                    .with_status_code(401)
                } else if tag == Some(format!("\"{etag}\"")) {
                    tiny_http::Response::from_string("").with_status_code(304)
                } else {
                    tiny_http::Response::from_string(body)
                };
                let _ = request.respond(response);
            }
        });
        (url, seen)
    }

    #[test]
    fn http_takes_url_and_token_from_earlier_sources_and_revalidates_with_the_etag() {
        let body = r#"{"motd": "hi", "kiln": {"role": "Compute"}}"#;
        let (url, seen) = server(body);
        let earlier = Value::from_json(&format!(
            r#"{{"kiln": {{"metadata_url": "{url}", "config_token": "tok"}}}}"#
        ))
        .unwrap();
        let http = Http::new(None, None);
        assert_eq!(
            http.collect_after(&Value::empty_map()).unwrap(),
            None,
            "no URL: nothing"
        );
        let first = http.collect_after(&earlier).unwrap().unwrap();
        let second = http.collect_after(&earlier).unwrap().unwrap();
        assert_eq!(first, second);
        assert_eq!(first.get("motd"), Some(&Value::Str("hi".into())));
        let sha = sha256_hex(body.as_bytes());
        assert_eq!(kiln_setting(&first, "metadata_sha256"), Some(sha.as_str()));
        assert_eq!(kiln_setting(&first, "role"), Some("Compute"));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (Some("tok".to_string()), None),
                (Some("tok".to_string()), Some(format!("\"{sha}\""))),
            ]
        );
    }

    #[test]
    fn http_refusals_and_unreachable_conductors_are_told_apart() {
        let (url, _) = server("{}");
        let wrong = Http::new(Some(url.clone()), Some("nope".into()));
        match wrong.collect() {
            Err(CollectError::Refused {
                status: 401,
                message,
                ..
            }) => {
                assert_eq!(message, "wrong config token")
            }
            other => panic!("expected a 401 refusal, got {other:?}"),
        }
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gone = Http::new(Some(format!("http://127.0.0.1:{port}/meta")), None);
        assert!(matches!(
            gone.collect(),
            Err(CollectError::Unreachable { .. })
        ));
    }
}

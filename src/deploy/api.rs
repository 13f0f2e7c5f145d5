//! The conductor's HTTP API (JSON under /v1): routing requests to the
//! [`Conductor`] and turning its answers and errors into responses. One thread
//! per request; the image server streams files in its own handler.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

use crate::deploy::conductor::{Conductor, ConductorError};
use crate::deploy::protocol::{
    AGENT_TOKEN_HEADER, CONFIG_TOKEN_HEADER, ConfigStatusRequest, ErrorBody, ErrorDetail,
    HeartbeatRequest, LookupRequest, PowerRequest, ProvisionRequest,
};
use crate::deploy::status_page;

/// Request bodies larger than this are refused (instackenv files and plans are small).
const MAX_BODY: u64 = 16 << 20;

/// A listening API server.
pub struct ApiServer {
    server: Arc<Server>,
    conductor: Arc<Conductor>,
}

impl ApiServer {
    /// Serves on `listener` (std's listener sets SO_REUSEADDR, so a restarted
    /// conductor gets its port back at once).
    pub fn new(
        listener: std::net::TcpListener,
        conductor: Arc<Conductor>,
    ) -> io::Result<ApiServer> {
        let server = Server::from_listener(listener, None)
            .map_err(|err| io::Error::other(format!("cannot serve: {err}")))?;
        Ok(ApiServer {
            server: Arc::new(server),
            conductor,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.server_addr().to_ip()
    }

    /// Serves requests until the process ends.
    pub fn serve(&self) {
        for request in self.server.incoming_requests() {
            let conductor = Arc::clone(&self.conductor);
            std::thread::spawn(move || handle(&conductor, request));
        }
    }
}

/// An answer: status and JSON body (or no body).
struct Reply {
    status: u16,
    body: Option<Value>,
}

fn ok<T: Serialize>(status: u16, value: &T) -> Result<Reply, ConductorError> {
    let body = serde_json::to_value(value)
        .map_err(|err| ConductorError::BadRequest(format!("cannot encode the answer: {err}")))?;
    Ok(Reply {
        status,
        body: Some(body),
    })
}

fn handle(conductor: &Conductor, mut request: Request) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    if path.starts_with("/v1/images/") {
        if let Err(err) = conductor.images().handle(request) {
            eprintln!("kiln conductor: image request {path}: {err}");
        }
        return;
    }
    let method = request.method().clone();
    if matches!(method, Method::Get | Method::Head)
        && matches!(path.as_str(), "/" | "/status" | "/status/")
    {
        serve_status_page(conductor, request);
        return;
    }
    if method == Method::Get
        && let Some(uuid) = metadata_path(&path)
    {
        serve_metadata(conductor, request, &uuid);
        return;
    }
    let reply = read_body(&mut request).and_then(|body| {
        if let Some(uuid) = config_status_path(&path)
            && method == Method::Post
        {
            let token = header(&request, CONFIG_TOKEN_HEADER);
            let report: ConfigStatusRequest = parse(&body)?;
            return ok(
                200,
                &conductor.config_status(&uuid, token.as_deref(), &report)?,
            );
        }
        let token = header(&request, AGENT_TOKEN_HEADER);
        route(conductor, &method, &path, &body, token.as_deref())
    });
    let (status, body) = match reply {
        Ok(reply) => (reply.status, reply.body),
        Err(err) => {
            let status = err.status();
            if status >= 500 {
                eprintln!("kiln conductor: {method} {path}: {err}");
            }
            let body = ErrorBody {
                error: ErrorDetail {
                    code: status,
                    message: err.to_string(),
                    allowed: err.allowed(),
                },
            };
            (status, serde_json::to_value(body).ok())
        }
    };
    let bytes = body
        .map(|body| serde_json::to_vec(&body).unwrap_or_default())
        .unwrap_or_default();
    respond(request, status, bytes, None);
}

/// Sends a JSON answer (with an ETag when given), logging a failure to send.
fn respond(request: Request, status: u16, bytes: Vec<u8>, etag: Option<&str>) {
    let method = request.method().clone();
    let path = request.url().to_string();
    let mut response = Response::from_data(bytes)
        .with_status_code(StatusCode(status))
        .with_header(json_header());
    if let Some(etag) = etag
        && let Ok(header) = Header::from_bytes(&b"ETag"[..], format!("\"{etag}\"").as_bytes())
    {
        response = response.with_header(header);
    }
    if let Err(err) = request.respond(response) {
        eprintln!("kiln conductor: {method} {path}: cannot answer: {err}");
    }
}

/// `/v1/nodes/{uuid}/metadata` -> uuid.
fn metadata_path(path: &str) -> Option<String> {
    node_subpath(path, "metadata")
}

/// `/v1/nodes/{uuid}/config-status` -> uuid.
fn config_status_path(path: &str) -> Option<String> {
    node_subpath(path, "config-status")
}

fn node_subpath(path: &str, leaf: &str) -> Option<String> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match parts.as_slice() {
        ["v1", "nodes", uuid, last] if *last == leaf => Some(uuid.to_string()),
        _ => None,
    }
}

/// GET /v1/nodes/{uuid}/metadata: the node's metadata with its SHA-256 as the
/// ETag; 304 without a body when If-None-Match names the current one.
fn serve_metadata(conductor: &Conductor, request: Request, uuid: &str) {
    let token = header(&request, CONFIG_TOKEN_HEADER);
    match conductor.node_metadata(uuid, token.as_deref()) {
        Ok(served) => {
            let unchanged = header(&request, "If-None-Match").is_some_and(|tags| {
                tags.split(',').any(|tag| {
                    tag.trim().trim_start_matches("W/").trim_matches('"') == served.sha256
                })
            });
            if unchanged {
                respond(request, 304, Vec::new(), Some(&served.sha256));
            } else {
                respond(request, 200, served.body, Some(&served.sha256));
            }
        }
        Err(err) => {
            let status = err.status();
            let body = ErrorBody {
                error: ErrorDetail {
                    code: status,
                    message: err.to_string(),
                    allowed: err.allowed(),
                },
            };
            respond(
                request,
                status,
                serde_json::to_vec(&body).unwrap_or_default(),
                None,
            );
        }
    }
}

/// GET / and /status: the operators' HTML status page.
fn serve_status_page(conductor: &Conductor, request: Request) {
    let (status, body) = match status_page::gather(conductor) {
        Ok(view) => (200, status_page::html::page(&view)),
        Err(err) => {
            eprintln!("kiln conductor: status page: {err}");
            (
                err.status(),
                format!(
                    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
                     <meta http-equiv=\"refresh\" content=\"5\"><title>kiln conductor status\
                     </title></head><body><p>The status cannot be read: {}</p></body></html>\n",
                    status_page::html::escape(&err.to_string())
                ),
            )
        }
    };
    let method = request.method().clone();
    let response = Response::from_data(body.into_bytes())
        .with_status_code(StatusCode(status))
        .with_header(
            Header::from_bytes(&b"Content-Type"[..], &b"text/html; charset=utf-8"[..])
                .expect("static header is valid"),
        )
        .with_header(
            Header::from_bytes(&b"Cache-Control"[..], &b"no-store"[..])
                .expect("static header is valid"),
        );
    if let Err(err) = request.respond(response) {
        eprintln!("kiln conductor: {method} /status: cannot answer: {err}");
    }
}

fn json_header() -> Header {
    Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("static header is valid")
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
}

fn read_body(request: &mut Request) -> Result<String, ConductorError> {
    let mut body = String::new();
    let mut limited = request.as_reader().take(MAX_BODY + 1);
    limited.read_to_string(&mut body).map_err(|err| {
        ConductorError::BadRequest(format!("cannot read the request body: {err}"))
    })?;
    if body.len() as u64 > MAX_BODY {
        return Err(ConductorError::BadRequest(format!(
            "request body larger than {MAX_BODY} bytes"
        )));
    }
    Ok(body)
}

fn parse<T: DeserializeOwned>(body: &str) -> Result<T, ConductorError> {
    serde_json::from_str(body)
        .map_err(|err| ConductorError::BadRequest(format!("request body: {err}")))
}

fn route(
    conductor: &Conductor,
    method: &Method,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<Reply, ConductorError> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    use Method::{Delete, Get, Post, Put};
    match (method, parts.as_slice()) {
        (Get, ["v1", "status"]) => ok(200, &status_page::gather(conductor)?),
        (Get, ["v1", "nodes"]) => ok(200, &json!({"nodes": conductor.nodes()?})),
        (Post, ["v1", "nodes"]) => ok(201, &json!({"nodes": conductor.create_nodes(body)?})),
        (Get, ["v1", "nodes", id]) => ok(200, &conductor.node_view(id)?),
        (Delete, ["v1", "nodes", id]) => {
            conductor.delete_node(id)?;
            Ok(Reply {
                status: 204,
                body: None,
            })
        }
        (Put, ["v1", "nodes", id, "states", "provision"]) => {
            let request: ProvisionRequest = parse(body)?;
            ok(202, &conductor.provision(id, &request.target)?)
        }
        (Put, ["v1", "nodes", id, "states", "power"]) => {
            let request: PowerRequest = parse(body)?;
            ok(202, &conductor.power(id, &request.target)?)
        }
        (Get, ["v1", "nodes", id, "inventory"]) => ok(200, &conductor.inventory(id)?),
        (Get, ["v1", "nodes", id, "timeline"]) => {
            ok(200, &json!({"events": conductor.timeline(id)?}))
        }
        (Get, ["v1", "rules"]) => ok(200, &conductor.rules()?),
        (Put, ["v1", "rules"]) => ok(200, &conductor.set_rules(body)?),
        (Post, ["v1", "deployments"]) => ok(202, &conductor.create_deployment(body)?),
        (Get, ["v1", "deployments"]) => {
            ok(200, &json!({"deployments": conductor.deployment_names()?}))
        }
        (Get, ["v1", "deployments", name]) => ok(200, &conductor.deployment(name)?),
        (Put, ["v1", "deployments", name]) => ok(200, &conductor.update_deployment(name, body)?),
        (Delete, ["v1", "deployments", name]) => ok(202, &conductor.delete_deployment(name)?),
        (Post, ["v1", "agent", "lookup"]) => {
            let request: LookupRequest = parse(body)?;
            ok(200, &conductor.lookup(&request)?)
        }
        (Post, ["v1", "agent", uuid, "heartbeat"]) => {
            let request: HeartbeatRequest = if body.trim().is_empty() {
                HeartbeatRequest::default()
            } else {
                parse(body)?
            };
            ok(200, &conductor.heartbeat(uuid, token, &request)?)
        }
        _ => Err(ConductorError::NotFound(format!(
            "no API resource {method} {path}"
        ))),
    }
}

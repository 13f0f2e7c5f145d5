//! Login (RFC 7143 §6.3): security stage with CHAP, operational parameter
//! negotiation, then full feature phase. Runs on the bare socket, before the
//! session's threads start.

use std::net::{SocketAddr, TcpStream};

use crate::deploy::protocol::ChapSecret;
use crate::iscsi::chap::{self, Challenge};
use crate::iscsi::pdu::{Digests, Header, LoginRequest, LoginStage, Pdu, login_status};
use crate::iscsi::text::{
    self, DigestKind, LocalParams, Negotiated, Negotiator, Role, SessionType,
};

use super::InitiatorError;

/// The largest login response data we accept (8 KiB is the login default).
const LOGIN_RECV_LIMIT: u32 = 8192;

/// Who logs in to what.
pub(crate) struct LoginPlan<'a> {
    pub initiator_iqn: &'a str,
    /// None for a discovery session.
    pub target_iqn: Option<&'a str>,
    pub chap: &'a ChapSecret,
    pub mutual_chap: Option<&'a ChapSecret>,
    pub digests: bool,
}

/// Where the login left the session.
pub(crate) struct LoggedIn {
    pub negotiated: Negotiated,
    /// Next CmdSN to use and the window the target opened.
    pub cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// A login response: its keys, whether the target transits, and to which stage.
type Reply = (Vec<(String, String)>, bool, LoginStage);

struct Exchange<'a> {
    stream: &'a mut TcpStream,
    peer: SocketAddr,
    target: String,
    isid: [u8; 6],
    tsih: u16,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
}

impl Exchange<'_> {
    fn protocol(&self, detail: impl Into<String>) -> InitiatorError {
        InitiatorError::Protocol {
            peer: self.peer,
            detail: detail.into(),
        }
    }

    fn auth(&self, detail: impl Into<String>) -> InitiatorError {
        InitiatorError::Authentication {
            peer: self.peer,
            target: self.target.clone(),
            detail: detail.into(),
        }
    }

    /// Send one login request and gather the (possibly continued) response.
    /// Returns the response keys, whether the target transits and to which stage.
    fn step(
        &mut self,
        current: LoginStage,
        next: LoginStage,
        transit: bool,
        keys: &[(String, String)],
    ) -> Result<Reply, InitiatorError> {
        let mut data = text::encode(keys);
        let mut received = Vec::new();
        loop {
            let request = Header::LoginRequest(LoginRequest {
                transit,
                continue_: false,
                current_stage: current,
                next_stage: next,
                version_max: 0,
                version_min: 0,
                isid: self.isid,
                tsih: self.tsih,
                itt: 0,
                cid: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            });
            Pdu::new(request, std::mem::take(&mut data))
                .write_to(self.stream, &Digests::NONE)
                .map_err(|source| InitiatorError::Io {
                    peer: self.peer,
                    source,
                })?;
            let pdu =
                Pdu::read_from(self.stream, &Digests::NONE, LOGIN_RECV_LIMIT).map_err(|e| {
                    InitiatorError::ConnectionLost {
                        peer: self.peer,
                        detail: format!("during login: {e}"),
                    }
                })?;
            let Header::LoginResponse(resp) = pdu.header else {
                return Err(self.protocol(format!(
                    "expected a Login Response, got opcode {:?}",
                    pdu.header.opcode()
                )));
            };
            let status = (resp.status_class, resp.status_detail);
            if status != login_status::SUCCESS {
                if status == login_status::AUTHENTICATION_FAILURE
                    || status == login_status::AUTHORIZATION_FAILURE
                {
                    return Err(self.auth(format!(
                        "the target refused our credentials (status {:#04x}/{:#04x})",
                        status.0, status.1
                    )));
                }
                return Err(InitiatorError::LoginRejected {
                    peer: self.peer,
                    target: self.target.clone(),
                    class: status.0,
                    detail: status.1,
                    meaning: login_meaning(status),
                });
            }
            self.exp_stat_sn = resp.stat_sn.wrapping_add(1);
            self.max_cmd_sn = resp.max_cmd_sn;
            self.tsih = resp.tsih;
            received.extend_from_slice(&pdu.data);
            if resp.continue_ {
                continue; // more text to come: ask with an empty request
            }
            let keys = text::decode(&received)
                .map_err(|e| self.protocol(format!("login response text: {e}")))?;
            return Ok((keys, resp.transit, resp.next_stage));
        }
    }
}

fn login_meaning(status: (u8, u8)) -> &'static str {
    match status {
        login_status::NOT_FOUND => "target not found",
        login_status::MISSING_PARAMETER => "missing parameter",
        login_status::UNSUPPORTED_VERSION => "unsupported version",
        login_status::SESSION_DOES_NOT_EXIST => "session does not exist",
        login_status::INVALID_DURING_LOGIN => "invalid request during login",
        login_status::INITIATOR_ERROR => "initiator error",
        (0x01, _) => "redirection (not followed)",
        (0x03, _) => "target error",
        _ => "login failed",
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What kiln asks for as an initiator.
fn local_params(digests: bool) -> LocalParams {
    let kinds = if digests {
        vec![DigestKind::Crc32c]
    } else {
        vec![DigestKind::None]
    };
    LocalParams {
        header_digests: kinds.clone(),
        data_digests: kinds,
        max_recv_data_segment_length: 256 * 1024,
        max_burst_length: 1 << 20,
        first_burst_length: 256 * 1024,
        immediate_data: true,
        initial_r2t: false,
        ..LocalParams::default()
    }
}

/// Log in on `stream` (already connected to `peer`).
pub(crate) fn login(
    stream: &mut TcpStream,
    peer: SocketAddr,
    plan: &LoginPlan,
) -> Result<LoggedIn, InitiatorError> {
    let mut isid = [0u8; 6];
    getrandom::fill(&mut isid[1..]).map_err(|e| InitiatorError::Negotiation {
        peer,
        detail: format!("no random bytes for the ISID: {e}"),
    })?;
    isid[0] = 0x80; // "random" ISID format (RFC 7143 §11.12.5)
    let mut ex = Exchange {
        stream,
        peer,
        target: plan.target_iqn.unwrap_or("discovery").to_string(),
        isid,
        tsih: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        max_cmd_sn: 1,
    };
    chap::check_secret(&plan.chap.user, &plan.chap.secret).map_err(|e| ex.auth(e.to_string()))?;

    // Security stage: declare who we are, insist on CHAP.
    let mut first = pairs(&[("InitiatorName", plan.initiator_iqn)]);
    match plan.target_iqn {
        Some(target) => {
            first.extend(pairs(&[("SessionType", "Normal"), ("TargetName", target)]));
        }
        None => first.extend(pairs(&[("SessionType", "Discovery")])),
    }
    // A normal session insists on CHAP; discovery reveals only names, so a
    // portal that does not authenticate it is accepted.
    let methods = if plan.target_iqn.is_some() {
        "CHAP"
    } else {
        "CHAP,None"
    };
    first.extend(pairs(&[("AuthMethod", methods)]));
    let (keys, _, _) = ex.step(LoginStage::Security, LoginStage::Operational, false, &first)?;
    match text::lookup(&keys, "AuthMethod") {
        Some("CHAP") => {}
        Some("None") if plan.target_iqn.is_none() => {
            let (_, transit, _) =
                ex.step(LoginStage::Security, LoginStage::Operational, true, &[])?;
            if !transit {
                return Err(ex.protocol("the target stayed in the security stage"));
            }
            return operational(ex, plan);
        }
        other => {
            return Err(ex.auth(format!(
                "the target answered AuthMethod={} to our CHAP-only offer",
                other.unwrap_or("(nothing)")
            )));
        }
    }
    let (keys, _, _) = ex.step(
        LoginStage::Security,
        LoginStage::Operational,
        false,
        &pairs(&[("CHAP_A", "5")]),
    )?;
    let algorithm = text::lookup(&keys, "CHAP_A").unwrap_or("");
    chap::offers_md5(algorithm).map_err(|e| ex.auth(e.to_string()))?;
    let theirs = Challenge::from_keys(
        text::lookup(&keys, "CHAP_I").unwrap_or(""),
        text::lookup(&keys, "CHAP_C").unwrap_or(""),
    )
    .map_err(|e| ex.auth(format!("target's challenge: {e}")))?;
    let response = theirs.response(plan.chap.secret.as_bytes());
    let mut answer = pairs(&[("CHAP_N", plan.chap.user.as_str())]);
    answer.push(("CHAP_R".into(), chap::encode_hex(&response)));
    let ours = match plan.mutual_chap {
        Some(mutual) => {
            chap::check_secret(&mutual.user, &mutual.secret).map_err(|e| ex.auth(e.to_string()))?;
            let ours = Challenge::generate().map_err(|e| ex.auth(e.to_string()))?;
            chap::check_not_reflected(&ours, &theirs).map_err(|e| ex.auth(e.to_string()))?;
            answer.extend(ours.to_keys());
            Some((ours, mutual))
        }
        None => None,
    };
    let (keys, transit, next) =
        ex.step(LoginStage::Security, LoginStage::Operational, true, &answer)?;
    if let Some((ours, mutual)) = ours {
        let name = text::lookup(&keys, "CHAP_N");
        let proof = text::lookup(&keys, "CHAP_R")
            .map(|r| chap::decode_binary("CHAP_R", r))
            .transpose()
            .map_err(|e| ex.auth(e.to_string()))?;
        match (name, proof) {
            (Some(name), Some(proof))
                if name == mutual.user && ours.verify(mutual.secret.as_bytes(), &proof) => {}
            (Some(name), Some(_)) if name != mutual.user => {
                return Err(ex.auth(format!(
                    "mutual CHAP: the target named itself {name:?}, expected {:?}",
                    mutual.user
                )));
            }
            (Some(_), Some(_)) => {
                return Err(ex.auth("mutual CHAP: the target's response does not prove the secret"));
            }
            _ => return Err(ex.auth("mutual CHAP: the target sent no CHAP_N/CHAP_R")),
        }
    }
    if !transit {
        return Err(ex.protocol(format!(
            "the target stayed in the security stage after CHAP (next stage {next:?})"
        )));
    }
    operational(ex, plan)
}

fn operational(mut ex: Exchange, plan: &LoginPlan) -> Result<LoggedIn, InitiatorError> {
    let peer = ex.peer;

    // Operational stage: negotiate until both sides are settled and the target
    // lets us into the full feature phase.
    let mut negotiator = Negotiator::new(Role::Initiator, local_params(plan.digests));
    if plan.target_iqn.is_none() {
        negotiator.negotiated.session_type = SessionType::Discovery;
    }
    let mut offer = negotiator.offer();
    for _ in 0..8 {
        let (keys, transit, next) = ex.step(
            LoginStage::Operational,
            LoginStage::FullFeature,
            true,
            &offer,
        )?;
        offer = negotiator
            .receive(&keys)
            .map_err(|e| InitiatorError::Negotiation {
                peer,
                detail: e.to_string(),
            })?;
        if transit && next == LoginStage::FullFeature && offer.is_empty() {
            if !negotiator.complete() {
                return Err(InitiatorError::Negotiation {
                    peer,
                    detail: "the target ended the login with keys unanswered".into(),
                });
            }
            return Ok(LoggedIn {
                negotiated: negotiator.negotiated,
                cmd_sn: ex.cmd_sn,
                max_cmd_sn: ex.max_cmd_sn,
                exp_stat_sn: ex.exp_stat_sn,
            });
        }
    }
    Err(InitiatorError::Negotiation {
        peer,
        detail: "operational negotiation did not finish in 8 exchanges".into(),
    })
}

//! The target's side of the login phase (RFC 7143 §6.3): the security stage
//! with CHAP (required), the operational stage (parameter negotiation), then
//! the switch to the full feature phase.

use std::io::{Read, Write};

use crate::deploy::protocol::ChapSecret;
use crate::iscsi::chap::{self, Challenge};
use crate::iscsi::pdu::{
    Digests, Header, LoginRequest, LoginResponse, LoginStage, Pdu, PduError, login_status,
};
use crate::iscsi::text::{self, LocalParams, Negotiated, Negotiator, Role, SessionType};

use super::TargetShared;

/// Text data accepted during login (the default MaxRecvDataSegmentLength).
const LOGIN_DATA_LIMIT: u32 = 8192;
/// Commands the initiator may have outstanding (MaxCmdSN - ExpCmdSN + 1).
pub const COMMAND_WINDOW: u32 = 32;

/// A completed login.
pub struct LoggedIn {
    pub negotiated: Negotiated,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
}

/// Why a login ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("login PDU: {0}")]
    Pdu(#[from] PduError),
    #[error("sending a login response: {0}")]
    Io(#[from] std::io::Error),
    #[error("login refused ({class:#04x}/{detail:#04x}): {why}")]
    Refused { class: u8, detail: u8, why: String },
}

fn refused((class, detail): (u8, u8), why: impl Into<String>) -> LoginError {
    LoginError::Refused {
        class,
        detail,
        why: why.into(),
    }
}

/// Where the CHAP exchange stands.
enum Auth {
    AwaitMethod,
    AwaitAlgorithm,
    AwaitResponse(Challenge),
    Done,
}

struct Login<'a> {
    shared: &'a TargetShared,
    negotiator: Negotiator,
    auth: Auth,
    stat_sn: u32,
    declared: bool,
}

/// Runs the login on a fresh connection. On a refusal the failure response
/// has already been sent.
pub fn login<S: Read + Write>(
    stream: &mut S,
    shared: &TargetShared,
    tsih: u16,
) -> Result<LoggedIn, LoginError> {
    let mut state = Login {
        shared,
        negotiator: Negotiator::new(
            Role::Target,
            LocalParams {
                max_recv_data_segment_length: super::MAX_RECV_DATA_SEGMENT_LENGTH,
                ..LocalParams::default()
            },
        ),
        auth: Auth::AwaitMethod,
        stat_sn: initial_stat_sn(),
        declared: false,
    };
    let mut pending_text = Vec::new();
    loop {
        let pdu = Pdu::read_from(stream, &Digests::NONE, LOGIN_DATA_LIMIT)?;
        let Header::LoginRequest(request) = pdu.header else {
            return Err(refused(
                login_status::INVALID_DURING_LOGIN,
                format!("{:?} PDU during login", pdu.header.opcode()),
            ));
        };
        pending_text.extend_from_slice(&pdu.data);
        if pending_text.len() > 8 * LOGIN_DATA_LIMIT as usize {
            return state.fail(
                stream,
                &request,
                refused(login_status::INITIATOR_ERROR, "login text too long"),
            );
        }
        if request.continue_ {
            // More text follows: acknowledge with an empty response.
            state.respond(
                stream,
                &request,
                false,
                request.current_stage,
                Vec::new(),
                0,
            )?;
            continue;
        }
        let keys = match text::decode(&pending_text) {
            Ok(keys) => keys,
            Err(err) => {
                return state.fail(
                    stream,
                    &request,
                    refused(login_status::INITIATOR_ERROR, err.to_string()),
                );
            }
        };
        pending_text.clear();
        match state.step(&request, &keys) {
            Ok((answers, transit)) => {
                let next = if transit {
                    request.next_stage
                } else {
                    request.current_stage
                };
                let final_tsih = if next == LoginStage::FullFeature {
                    tsih
                } else {
                    0
                };
                state.respond(
                    stream,
                    &request,
                    transit,
                    request.next_stage,
                    text::encode(&answers),
                    final_tsih,
                )?;
                if transit && request.next_stage == LoginStage::FullFeature {
                    return Ok(LoggedIn {
                        negotiated: state.negotiator.negotiated,
                        stat_sn: state.stat_sn,
                        exp_cmd_sn: request.cmd_sn,
                    });
                }
            }
            Err(err) => return state.fail(stream, &request, err),
        }
    }
}

/// StatSN starts at a random value, as RFC 7143 suggests.
fn initial_stat_sn() -> u32 {
    let mut bytes = [0u8; 4];
    // A fixed start is still correct if the random source fails.
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

impl Login<'_> {
    /// Handles one complete request; returns the answer keys and whether
    /// this response moves to the next stage.
    fn step(
        &mut self,
        request: &LoginRequest,
        keys: &[(String, String)],
    ) -> Result<(Vec<(String, String)>, bool), LoginError> {
        if request.version_min > 0 {
            return Err(refused(
                login_status::UNSUPPORTED_VERSION,
                "only iSCSI version 0 exists",
            ));
        }
        let (security, operational): (Vec<_>, Vec<_>) = keys
            .iter()
            .cloned()
            .partition(|(k, _)| k == "AuthMethod" || k.starts_with("CHAP_"));
        let mut answers = self
            .negotiator
            .receive(&operational)
            .map_err(|err| refused(login_status::INITIATOR_ERROR, err.to_string()))?;
        self.check_names()?;
        match request.current_stage {
            LoginStage::Security => {
                answers.extend(self.authenticate(&security)?);
            }
            LoginStage::Operational => {
                if !matches!(self.auth, Auth::Done) {
                    return Err(refused(
                        login_status::AUTHENTICATION_FAILURE,
                        "the initiator skipped the security stage; CHAP is required",
                    ));
                }
                if !security.is_empty() {
                    return Err(refused(
                        login_status::INITIATOR_ERROR,
                        "security keys in the operational stage",
                    ));
                }
                if !self.declared {
                    answers.extend(self.negotiator.offer());
                    self.declared = true;
                }
            }
            LoginStage::FullFeature => {
                return Err(refused(
                    login_status::INITIATOR_ERROR,
                    "login request in full feature stage",
                ));
            }
        }
        let authenticated = matches!(self.auth, Auth::Done);
        let transit = request.transit && authenticated;
        if transit && request.next_stage == LoginStage::FullFeature && !self.declared {
            // Straight from security to full feature: declare now.
            answers.extend(self.negotiator.offer());
            self.declared = true;
        }
        Ok((answers, transit))
    }

    /// InitiatorName is required; a normal session must name this target.
    fn check_names(&self) -> Result<(), LoginError> {
        let n = &self.negotiator.negotiated;
        if n.initiator_name.is_none() {
            return Err(refused(
                login_status::MISSING_PARAMETER,
                "InitiatorName missing",
            ));
        }
        if n.session_type == SessionType::Normal {
            match &n.target_name {
                None => {
                    return Err(refused(
                        login_status::MISSING_PARAMETER,
                        "TargetName missing",
                    ));
                }
                Some(name) if *name != self.shared.target_iqn => {
                    return Err(refused(
                        login_status::NOT_FOUND,
                        format!("no target named {name}"),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn authenticate(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String)>, LoginError> {
        let auth_failure = |why: String| refused(login_status::AUTHENTICATION_FAILURE, why);
        let mut answers = Vec::new();
        match &self.auth {
            Auth::AwaitMethod => {
                let Some(methods) = text::lookup(keys, "AuthMethod") else {
                    return Err(auth_failure(
                        "no AuthMethod offered; CHAP is required".into(),
                    ));
                };
                if !methods.split(',').any(|m| m == "CHAP") {
                    return Err(auth_failure(format!(
                        "AuthMethod={methods} does not offer CHAP"
                    )));
                }
                answers.push(("AuthMethod".to_string(), "CHAP".to_string()));
                self.auth = Auth::AwaitAlgorithm;
                // Some initiators send CHAP_A along with AuthMethod.
                if text::lookup(keys, "CHAP_A").is_some() {
                    answers.extend(self.authenticate(keys)?);
                }
            }
            Auth::AwaitAlgorithm => {
                let algorithms = text::lookup(keys, "CHAP_A").unwrap_or_default();
                chap::offers_md5(algorithms).map_err(|e| auth_failure(e.to_string()))?;
                let challenge = Challenge::generate()
                    .map_err(|e| refused(login_status::TARGET_ERROR, e.to_string()))?;
                answers.push(("CHAP_A".to_string(), chap::ALGORITHM_MD5.to_string()));
                answers.extend(challenge.to_keys());
                self.auth = Auth::AwaitResponse(challenge);
            }
            Auth::AwaitResponse(challenge) => {
                let name = text::lookup(keys, "CHAP_N").unwrap_or_default();
                let response = text::lookup(keys, "CHAP_R").unwrap_or_default();
                let expected = &self.shared.chap;
                let response = chap::decode_binary("CHAP_R", response)
                    .map_err(|e| auth_failure(e.to_string()))?;
                // Check both, so a wrong user costs the same as a wrong secret.
                let name_ok = chap::constant_time_eq(name.as_bytes(), expected.user.as_bytes());
                let response_ok = challenge.verify(expected.secret.as_bytes(), &response);
                if !(name_ok && response_ok) {
                    return Err(auth_failure(format!(
                        "CHAP response of user {name:?} does not verify"
                    )));
                }
                if let (Some(id), Some(c)) =
                    (text::lookup(keys, "CHAP_I"), text::lookup(keys, "CHAP_C"))
                {
                    answers.extend(self.mutual_response(challenge, id, c)?);
                } else if text::lookup(keys, "CHAP_I").is_some()
                    || text::lookup(keys, "CHAP_C").is_some()
                {
                    return Err(auth_failure(
                        "mutual CHAP needs both CHAP_I and CHAP_C".into(),
                    ));
                }
                self.auth = Auth::Done;
            }
            Auth::Done => {
                if !keys.is_empty() {
                    return Err(auth_failure("CHAP keys after authentication".into()));
                }
            }
        }
        Ok(answers)
    }

    /// The target proves itself to the initiator (mutual CHAP).
    fn mutual_response(
        &self,
        ours: &Challenge,
        id: &str,
        challenge: &str,
    ) -> Result<Vec<(String, String)>, LoginError> {
        let auth_failure = |why: String| refused(login_status::AUTHENTICATION_FAILURE, why);
        let Some(mutual) = &self.shared.mutual_chap else {
            return Err(auth_failure(
                "the initiator asks for mutual CHAP, which is not configured".into(),
            ));
        };
        let theirs =
            Challenge::from_keys(id, challenge).map_err(|e| auth_failure(e.to_string()))?;
        chap::check_not_reflected(ours, &theirs).map_err(|e| auth_failure(e.to_string()))?;
        Ok(vec![
            ("CHAP_N".to_string(), mutual.user.clone()),
            (
                "CHAP_R".to_string(),
                chap::encode_hex(&theirs.response(mutual.secret.as_bytes())),
            ),
        ])
    }

    fn respond<S: Write>(
        &mut self,
        stream: &mut S,
        request: &LoginRequest,
        transit: bool,
        next_stage: LoginStage,
        data: Vec<u8>,
        tsih: u16,
    ) -> Result<(), LoginError> {
        self.send(
            stream,
            request,
            transit,
            next_stage,
            data,
            tsih,
            login_status::SUCCESS,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn send<S: Write>(
        &mut self,
        stream: &mut S,
        request: &LoginRequest,
        transit: bool,
        next_stage: LoginStage,
        data: Vec<u8>,
        tsih: u16,
        (status_class, status_detail): (u8, u8),
    ) -> Result<(), LoginError> {
        let response = LoginResponse {
            transit,
            continue_: false,
            current_stage: request.current_stage,
            next_stage: if transit {
                next_stage
            } else {
                LoginStage::Security
            },
            version_max: 0,
            version_active: 0,
            isid: request.isid,
            tsih,
            itt: request.itt,
            stat_sn: self.stat_sn,
            exp_cmd_sn: request.cmd_sn,
            max_cmd_sn: request.cmd_sn.wrapping_add(COMMAND_WINDOW - 1),
            status_class,
            status_detail,
        };
        self.stat_sn = self.stat_sn.wrapping_add(1);
        Pdu::new(Header::LoginResponse(response), data).write_to(stream, &Digests::NONE)?;
        stream.flush()?;
        Ok(())
    }

    /// Sends the failure status of `err` (when it is a refusal) and returns it.
    fn fail<S: Write>(
        &mut self,
        stream: &mut S,
        request: &LoginRequest,
        err: LoginError,
    ) -> Result<LoggedIn, LoginError> {
        if let LoginError::Refused { class, detail, .. } = &err {
            let status = (*class, *detail);
            self.send(
                stream,
                request,
                false,
                LoginStage::Security,
                Vec::new(),
                0,
                status,
            )?;
        }
        Err(err)
    }
}

/// Refuses secrets too short to be safe before the target starts.
pub fn check_secrets(
    chap: &ChapSecret,
    mutual: Option<&ChapSecret>,
) -> Result<(), chap::ChapError> {
    chap::check_secret(&chap.user, &chap.secret)?;
    if let Some(mutual) = mutual {
        chap::check_secret(&mutual.user, &mutual.secret)?;
    }
    Ok(())
}

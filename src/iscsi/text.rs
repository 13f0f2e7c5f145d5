//! iSCSI text keys (`key=value\0`, RFC 7143 §6) and operational parameter
//! negotiation (§13).
//!
//! One [`Negotiator`] per connection and side: [`Negotiator::offer`] lists
//! what this side proposes or declares, [`Negotiator::receive`] takes the
//! peer's keys, answers its offers and records the outcome in
//! [`Negotiated`], the result both the target and the initiator run with.

use std::collections::BTreeSet;

use thiserror::Error;

/// Longest key name (RFC 7143 §6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value: large binary values (CHAP challenges) may reach 8192 bytes
/// of payload, i.e. 2 + 16384 hex digits.
pub const MAX_VALUE_LEN: usize = 2 + 2 * 8192;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TextError {
    #[error("text data does not end with a NUL byte")]
    Unterminated,
    #[error("text entry {entry:?} has no '='")]
    MissingEquals { entry: String },
    #[error(
        "text key {key:?} is empty, longer than 63 bytes or has a character outside [A-Za-z0-9.+@_-]"
    )]
    BadKey { key: String },
    #[error("value of {key} is {length} bytes, longer than allowed")]
    ValueTooLong { key: String, length: usize },
    #[error("text data is not UTF-8")]
    NotUtf8,
    #[error("key {key} appears twice")]
    Duplicate { key: String },
    #[error("value {value:?} of {key} is not valid ({why})")]
    BadValue {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("the peer answered {key}={value} to an offer this side did not make")]
    Unsolicited { key: String, value: String },
}

/// Decodes `key=value\0...` into pairs in order, refusing duplicates.
pub fn decode(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    decode_entries(data, false)
}

/// Like [`decode`], but keys may repeat, as in a SendTargets answer
/// (one TargetName/TargetAddress group per target, RFC 7143 appendix C).
pub fn decode_repeating(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    decode_entries(data, true)
}

fn decode_entries(data: &[u8], repeats: bool) -> Result<Vec<(String, String)>, TextError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    // Some initiators pad with extra NULs; empty entries are skipped.
    let Some(body) = data.strip_suffix(b"\0") else {
        return Err(TextError::Unterminated);
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for entry in body.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let entry = std::str::from_utf8(entry).map_err(|_| TextError::NotUtf8)?;
        let Some((key, value)) = entry.split_once('=') else {
            return Err(TextError::MissingEquals {
                entry: entry.chars().take(80).collect(),
            });
        };
        if !valid_key(key) {
            return Err(TextError::BadKey {
                key: key.chars().take(80).collect(),
            });
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong {
                key: key.to_string(),
                length: value.len(),
            });
        }
        if !repeats && pairs.iter().any(|(k, _)| k == key) {
            return Err(TextError::Duplicate {
                key: key.to_string(),
            });
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+@_-".contains(&b))
}

/// Encodes pairs as `key=value\0...`.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in pairs {
        out.extend_from_slice(key.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// The value of `key` among decoded pairs.
pub fn lookup<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Parses a Yes/No value.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, TextError> {
    match value {
        "Yes" => Ok(true),
        "No" => Ok(false),
        _ => Err(bad(key, value, "expected Yes or No")),
    }
}

/// Parses a decimal (or 0x hex) number within `min..=max`.
pub fn parse_number(key: &str, value: &str, min: u32, max: u32) -> Result<u32, TextError> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => value.parse(),
    };
    match parsed {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(bad(key, value, "out of range")),
        Err(_) => Err(bad(key, value, "not a number")),
    }
}

fn bad(key: &str, value: &str, why: &'static str) -> TextError {
    TextError::BadValue {
        key: key.to_string(),
        value: value.chars().take(80).collect(),
        why,
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "Yes" } else { "No" }
}

/// Which end of the connection a negotiator speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// Digest choice for HeaderDigest / DataDigest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKind {
    None,
    Crc32c,
}

impl DigestKind {
    fn name(self) -> &'static str {
        match self {
            DigestKind::None => "None",
            DigestKind::Crc32c => "CRC32C",
        }
    }
}

/// What this side wants; numbers are its limits, lists its preference order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalParams {
    pub header_digests: Vec<DigestKind>,
    pub data_digests: Vec<DigestKind>,
    /// What this side can receive in one data segment (declarative).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_connections: u32,
}

impl Default for LocalParams {
    /// What kiln offers: digests if the peer wants them, large bursts,
    /// immediate and unsolicited data, error recovery level 0.
    fn default() -> Self {
        LocalParams {
            header_digests: vec![DigestKind::None, DigestKind::Crc32c],
            data_digests: vec![DigestKind::None, DigestKind::Crc32c],
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 256 * 1024,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 8,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            max_connections: 1,
        }
    }
}

/// The outcome of negotiation, seen from one side. Starts at the RFC 7143
/// defaults, which hold for every key the peers did not negotiate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    /// What this side declared it can receive.
    pub local_max_recv_data_segment_length: u32,
    /// What the peer declared; the most this side may send in one PDU.
    pub peer_max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_connections: u32,
    pub session_type: SessionType,
    pub initiator_name: Option<String>,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub target_alias: Option<String>,
}

impl Default for Negotiated {
    fn default() -> Self {
        Negotiated {
            header_digest: false,
            data_digest: false,
            local_max_recv_data_segment_length: 8192,
            peer_max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            max_connections: 1,
            session_type: SessionType::Normal,
            initiator_name: None,
            initiator_alias: None,
            target_name: None,
            target_alias: None,
        }
    }
}

impl Negotiated {
    /// The digests in effect once the login completes.
    pub fn digests(&self) -> super::pdu::Digests {
        super::pdu::Digests {
            header: self.header_digest,
            data: self.data_digest,
        }
    }
}

/// How a key's outcome is computed from the two sides' values (§13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    List,
    Min,
    Max,
    Or,
    And,
    Declarative,
}

const NEGOTIATED_KEYS: &[(&str, Rule)] = &[
    ("HeaderDigest", Rule::List),
    ("DataDigest", Rule::List),
    ("MaxRecvDataSegmentLength", Rule::Declarative),
    ("MaxBurstLength", Rule::Min),
    ("FirstBurstLength", Rule::Min),
    ("ImmediateData", Rule::And),
    ("InitialR2T", Rule::Or),
    ("MaxOutstandingR2T", Rule::Min),
    ("DataPDUInOrder", Rule::Or),
    ("DataSequenceInOrder", Rule::Or),
    ("ErrorRecoveryLevel", Rule::Min),
    ("DefaultTime2Wait", Rule::Max),
    ("DefaultTime2Retain", Rule::Min),
    ("MaxConnections", Rule::Min),
    ("SessionType", Rule::Declarative),
    ("InitiatorName", Rule::Declarative),
    ("InitiatorAlias", Rule::Declarative),
    ("TargetName", Rule::Declarative),
    ("TargetAlias", Rule::Declarative),
    ("TargetAddress", Rule::Declarative),
    ("TargetPortalGroupTag", Rule::Declarative),
];

/// Keys that only make sense in a normal session; a discovery session
/// answers them `Irrelevant`.
const NORMAL_SESSION_ONLY: &[&str] = &[
    "MaxBurstLength",
    "FirstBurstLength",
    "ImmediateData",
    "InitialR2T",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "MaxConnections",
];

/// Negotiation state of one side of one connection.
#[derive(Debug, Clone)]
pub struct Negotiator {
    pub role: Role,
    pub local: LocalParams,
    pub negotiated: Negotiated,
    /// Keys this side offered and still awaits an answer for.
    pending: BTreeSet<String>,
    /// Keys already settled, so a repeated offer is a protocol error.
    settled: BTreeSet<String>,
}

impl Negotiator {
    pub fn new(role: Role, local: LocalParams) -> Negotiator {
        let negotiated = Negotiated {
            local_max_recv_data_segment_length: local.max_recv_data_segment_length,
            ..Negotiated::default()
        };
        Negotiator {
            role,
            local,
            negotiated,
            pending: BTreeSet::new(),
            settled: BTreeSet::new(),
        }
    }

    /// Keys this side proposes in the operational stage. The initiator offers
    /// everything it wants different from (or as) the defaults; the target
    /// only declares its MaxRecvDataSegmentLength and answers the rest.
    pub fn offer(&mut self) -> Vec<(String, String)> {
        let l = &self.local;
        let list =
            |kinds: &[DigestKind]| kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",");
        let mut keys = vec![(
            "MaxRecvDataSegmentLength".to_string(),
            l.max_recv_data_segment_length.to_string(),
        )];
        if self.role == Role::Initiator {
            let proposals = [
                ("HeaderDigest", list(&l.header_digests)),
                ("DataDigest", list(&l.data_digests)),
                ("MaxBurstLength", l.max_burst_length.to_string()),
                ("FirstBurstLength", l.first_burst_length.to_string()),
                ("ImmediateData", yes_no(l.immediate_data).to_string()),
                ("InitialR2T", yes_no(l.initial_r2t).to_string()),
                ("MaxOutstandingR2T", l.max_outstanding_r2t.to_string()),
                ("DataPDUInOrder", yes_no(l.data_pdu_in_order).to_string()),
                (
                    "DataSequenceInOrder",
                    yes_no(l.data_sequence_in_order).to_string(),
                ),
                ("ErrorRecoveryLevel", l.error_recovery_level.to_string()),
                ("DefaultTime2Wait", l.default_time2wait.to_string()),
                ("DefaultTime2Retain", l.default_time2retain.to_string()),
                ("MaxConnections", l.max_connections.to_string()),
            ];
            for (key, value) in proposals {
                if self.negotiated.session_type == SessionType::Discovery
                    && NORMAL_SESSION_ONLY.contains(&key)
                {
                    continue;
                }
                self.pending.insert(key.to_string());
                keys.push((key.to_string(), value));
            }
        }
        self.settled.insert("MaxRecvDataSegmentLength".to_string());
        keys
    }

    /// True once every key this side offered has been answered.
    pub fn complete(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes the peer's keys (offers or answers) and returns this side's
    /// answers to its offers. Security keys (AuthMethod, CHAP_*) are not
    /// handled here and must be filtered out by the caller.
    pub fn receive(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String)>, TextError> {
        let mut answers = Vec::new();
        for (key, value) in keys {
            let Some(&(_, rule)) = NEGOTIATED_KEYS.iter().find(|(k, _)| k == key) else {
                answers.push((key.clone(), "NotUnderstood".to_string()));
                continue;
            };
            let is_answer = self.pending.remove(key);
            if matches!(value.as_str(), "Reject" | "Irrelevant" | "NotUnderstood") {
                // The peer declined: the default stays in force.
                if !is_answer {
                    return Err(TextError::Unsolicited {
                        key: key.clone(),
                        value: value.clone(),
                    });
                }
                continue;
            }
            if rule == Rule::Declarative {
                self.declare(key, value)?;
                continue;
            }
            if !is_answer
                && self.negotiated.session_type == SessionType::Discovery
                && NORMAL_SESSION_ONLY.contains(&key.as_str())
            {
                answers.push((key.clone(), "Irrelevant".to_string()));
                continue;
            }
            if !is_answer && !self.settled.insert(key.clone()) {
                return Err(bad(key, value, "offered twice"));
            }
            let outcome = self.settle(key, rule, value)?;
            if !is_answer {
                answers.push((key.clone(), outcome));
            }
        }
        Ok(answers)
    }

    /// Records a declarative key.
    fn declare(&mut self, key: &str, value: &str) -> Result<(), TextError> {
        let n = &mut self.negotiated;
        match key {
            "MaxRecvDataSegmentLength" => {
                n.peer_max_recv_data_segment_length = parse_number(key, value, 512, (1 << 24) - 1)?
            }
            "SessionType" => {
                n.session_type = match value {
                    "Normal" => SessionType::Normal,
                    "Discovery" => SessionType::Discovery,
                    _ => return Err(bad(key, value, "expected Normal or Discovery")),
                }
            }
            "InitiatorName" => n.initiator_name = Some(value.to_string()),
            "InitiatorAlias" => n.initiator_alias = Some(value.to_string()),
            "TargetName" => n.target_name = Some(value.to_string()),
            "TargetAlias" => n.target_alias = Some(value.to_string()),
            // TargetAddress / TargetPortalGroupTag are informational here.
            _ => {}
        }
        Ok(())
    }

    /// Computes (for an offer) or checks (for an answer) a negotiated key,
    /// stores the outcome and returns its value.
    fn settle(&mut self, key: &str, rule: Rule, value: &str) -> Result<String, TextError> {
        let l = &self.local;
        let n = &mut self.negotiated;
        if rule == Rule::List {
            let ours = if key == "HeaderDigest" {
                &l.header_digests
            } else {
                &l.data_digests
            };
            // The offerer's order wins; an answer is a one-element list.
            let chosen = value
                .split(',')
                .find_map(|item| ours.iter().copied().find(|k| k.name() == item));
            let Some(chosen) = chosen else {
                return Ok("Reject".to_string());
            };
            let on = chosen == DigestKind::Crc32c;
            if key == "HeaderDigest" {
                n.header_digest = on;
            } else {
                n.data_digest = on;
            }
            return Ok(chosen.name().to_string());
        }
        if matches!(rule, Rule::Or | Rule::And) {
            let theirs = parse_bool(key, value)?;
            let (ours, slot) = match key {
                "ImmediateData" => (l.immediate_data, &mut n.immediate_data),
                "InitialR2T" => (l.initial_r2t, &mut n.initial_r2t),
                "DataPDUInOrder" => (l.data_pdu_in_order, &mut n.data_pdu_in_order),
                _ => (l.data_sequence_in_order, &mut n.data_sequence_in_order),
            };
            *slot = if rule == Rule::Or {
                theirs || ours
            } else {
                theirs && ours
            };
            return Ok(yes_no(*slot).to_string());
        }
        let (range, ours, slot) = match key {
            "MaxBurstLength" => (
                (512, (1 << 24) - 1),
                l.max_burst_length,
                &mut n.max_burst_length,
            ),
            "FirstBurstLength" => (
                (512, (1 << 24) - 1),
                l.first_burst_length,
                &mut n.first_burst_length,
            ),
            "MaxOutstandingR2T" => (
                (1, 65535),
                l.max_outstanding_r2t,
                &mut n.max_outstanding_r2t,
            ),
            "ErrorRecoveryLevel" => ((0, 2), l.error_recovery_level, &mut n.error_recovery_level),
            "DefaultTime2Wait" => ((0, 3600), l.default_time2wait, &mut n.default_time2wait),
            "DefaultTime2Retain" => ((0, 3600), l.default_time2retain, &mut n.default_time2retain),
            _ => ((1, 65535), l.max_connections, &mut n.max_connections),
        };
        let theirs = parse_number(key, value, range.0, range.1)?;
        let outcome = if rule == Rule::Max {
            theirs.max(ours)
        } else {
            theirs.min(ours)
        };
        *slot = outcome;
        // FirstBurstLength never exceeds MaxBurstLength (§13.14).
        n.first_burst_length = n.first_burst_length.min(n.max_burst_length);
        Ok(outcome.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn encode_decode_round_trip() {
        let keys = pairs(&[
            ("InitiatorName", "iqn.2026-11.org.kiln:x"),
            ("AuthMethod", "CHAP,None"),
        ]);
        let wire = encode(&keys);
        assert_eq!(wire.last(), Some(&0));
        assert_eq!(decode(&wire).unwrap(), keys);
        assert_eq!(lookup(&keys, "AuthMethod"), Some("CHAP,None"));
    }

    #[test]
    fn decode_rejects_malformed_text() {
        assert_eq!(decode(b"A=1"), Err(TextError::Unterminated));
        assert!(matches!(
            decode(b"A\0"),
            Err(TextError::MissingEquals { .. })
        ));
        assert!(matches!(
            decode(b"A=1\0A=2\0"),
            Err(TextError::Duplicate { .. })
        ));
        assert!(matches!(decode(b"A B=1\0"), Err(TextError::BadKey { .. })));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert!(matches!(
            decode(long_key.as_bytes()),
            Err(TextError::BadKey { .. })
        ));
        let long_value = format!("K={}\0", "1".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(
            decode(long_value.as_bytes()),
            Err(TextError::ValueTooLong { .. })
        ));
        assert_eq!(decode(b"\xff=1\0"), Err(TextError::NotUtf8));
        // Trailing NUL padding is tolerated.
        assert_eq!(decode(b"A=1\0\0\0").unwrap(), pairs(&[("A", "1")]));
    }

    #[test]
    fn values_parse_strictly() {
        assert_eq!(parse_bool("K", "Yes"), Ok(true));
        assert!(parse_bool("K", "yes").is_err());
        assert_eq!(parse_number("K", "0x10", 0, 100), Ok(16));
        assert!(parse_number("K", "101", 0, 100).is_err());
        assert!(parse_number("K", "-1", 0, 100).is_err());
    }

    #[test]
    fn target_answers_an_initiator_offer() {
        let mut target = Negotiator::new(Role::Target, LocalParams::default());
        let offer = pairs(&[
            ("InitiatorName", "iqn.x"),
            ("SessionType", "Normal"),
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "262144"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "Yes"),
            ("MaxOutstandingR2T", "1"),
            ("DefaultTime2Wait", "0"),
            ("X-com.example.Foo", "1"),
        ]);
        let answers = target.receive(&offer).unwrap();
        let n = &target.negotiated;
        assert!(n.header_digest && !n.data_digest);
        assert_eq!(n.peer_max_recv_data_segment_length, 65536);
        assert_eq!(n.max_burst_length, 1024 * 1024);
        assert_eq!(n.first_burst_length, 256 * 1024);
        assert!(n.initial_r2t && n.immediate_data);
        assert_eq!(n.default_time2wait, 2);
        assert_eq!(n.initiator_name.as_deref(), Some("iqn.x"));
        assert_eq!(lookup(&answers, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(lookup(&answers, "MaxBurstLength"), Some("1048576"));
        assert_eq!(lookup(&answers, "X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(lookup(&answers, "MaxRecvDataSegmentLength"), None);
        // Offering a settled key again is refused.
        assert!(
            target
                .receive(&pairs(&[("MaxBurstLength", "512")]))
                .is_err()
        );
    }

    #[test]
    fn initiator_and_target_agree() {
        let mut initiator = Negotiator::new(
            Role::Initiator,
            LocalParams {
                max_burst_length: 512 * 1024,
                data_digests: vec![DigestKind::Crc32c],
                ..LocalParams::default()
            },
        );
        let mut target = Negotiator::new(Role::Target, LocalParams::default());
        let offer = initiator.offer();
        let mut answers = target.receive(&offer).unwrap();
        answers.extend(target.offer());
        assert!(initiator.receive(&answers).unwrap().is_empty());
        assert!(initiator.complete());
        let (i, t) = (&initiator.negotiated, &target.negotiated);
        assert_eq!(i.max_burst_length, 512 * 1024);
        assert_eq!(i.max_burst_length, t.max_burst_length);
        assert_eq!(i.first_burst_length, t.first_burst_length);
        assert!(i.data_digest && t.data_digest);
        assert_eq!(i.initial_r2t, t.initial_r2t);
        assert_eq!(
            i.peer_max_recv_data_segment_length,
            t.local_max_recv_data_segment_length
        );
        assert_eq!(
            t.peer_max_recv_data_segment_length,
            i.local_max_recv_data_segment_length
        );
    }

    #[test]
    fn discovery_session_answers_irrelevant() {
        let mut target = Negotiator::new(Role::Target, LocalParams::default());
        let answers = target
            .receive(&pairs(&[
                ("SessionType", "Discovery"),
                ("MaxBurstLength", "4096"),
            ]))
            .unwrap();
        assert_eq!(lookup(&answers, "MaxBurstLength"), Some("Irrelevant"));
    }

    #[test]
    fn digest_lists_without_overlap_are_rejected() {
        let mut target = Negotiator::new(
            Role::Target,
            LocalParams {
                header_digests: vec![DigestKind::None],
                ..LocalParams::default()
            },
        );
        let answers = target
            .receive(&pairs(&[("HeaderDigest", "CRC32C")]))
            .unwrap();
        assert_eq!(lookup(&answers, "HeaderDigest"), Some("Reject"));
        assert!(!target.negotiated.header_digest);
    }
}

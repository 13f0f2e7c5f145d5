//! Ironic root device hints: which disk the image goes to.
//!
//! Hints are a map such as `{size: ">= 4", model: "<in> samsung", rotational: false}`.
//! Their syntax follows Ironic's (oslo specs): a hint without an operator means
//! equality; `size` is in GiB and compared as a number (`==`, `!=`, `>=`, `<=`,
//! `>`, `<`, and the legacy `=` meaning `>=`); string hints compare without regard
//! to case and surrounding blanks (`s==`, `s!=`, `s<`, `s<=`, `s>`, `s>=`,
//! `<in> text` for "contains", `<or> a <or> b` for "one of"); `rotational` is a
//! Boolean. All given hints must match.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::inventory::Disk;

/// Without hints the smallest disk of at least this size is chosen (as IPA does).
pub const DEFAULT_MIN_ROOT_SIZE: u64 = 4 << 30;

const GIB: f64 = (1u64 << 30) as f64;

/// The hints a node or role may give, and their kind.
const KNOWN_HINTS: &[(&str, HintKind)] = &[
    ("size", HintKind::Size),
    ("model", HintKind::Text),
    ("vendor", HintKind::Text),
    ("serial", HintKind::Text),
    ("wwn", HintKind::Text),
    ("wwn_with_extension", HintKind::Text),
    ("wwn_vendor_extension", HintKind::Text),
    ("name", HintKind::Text),
    ("hctl", HintKind::Text),
    ("by_path", HintKind::Text),
    ("tran", HintKind::Text),
    ("rotational", HintKind::Bool),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HintKind {
    Size,
    Text,
    Bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HintError {
    #[error("root device hints must be a map of hint names to values, not {0}")]
    NotAMap(String),
    #[error("unknown root device hint {name:?}; known hints: {known}")]
    Unknown { name: String, known: String },
    #[error("root device hint {name:?}: {problem} (value {value})")]
    Invalid {
        name: String,
        value: String,
        problem: String,
    },
    #[error("no disk matches the root device hints {hints}; disks seen: {seen}")]
    NoMatch { hints: String, seen: String },
    #[error("no disk of at least {min} bytes (no root device hints given); disks seen: {seen}")]
    NoDiskLargeEnough { min: u64, seen: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumOp {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One parsed hint.
#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Size(NumOp, f64),
    SizeOneOf(Vec<f64>),
    Text(TextOp, String),
    Contains(String),
    TextOneOf(Vec<String>),
    Bool(bool),
}

/// Parsed, validated root device hints. Deserializes from the hint map (the plan's
/// `root_device:`) and serializes back to the map it was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct RootDeviceHints {
    original: BTreeMap<String, Value>,
    /// Sorted by hint name.
    hints: Vec<(&'static str, Matcher)>,
}

impl TryFrom<Value> for RootDeviceHints {
    type Error = HintError;

    fn try_from(value: Value) -> Result<Self, HintError> {
        RootDeviceHints::parse(&value)
    }
}

impl From<RootDeviceHints> for Value {
    fn from(h: RootDeviceHints) -> Value {
        Value::Object(h.original.into_iter().collect())
    }
}

impl fmt::Display for RootDeviceHints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map: serde_json::Map<String, Value> = self.original.clone().into_iter().collect();
        write!(f, "{}", Value::Object(map))
    }
}

impl RootDeviceHints {
    /// Parse and validate a hint map (`null` or `{}`: no hints). Errors name the hint.
    pub fn parse(value: &Value) -> Result<RootDeviceHints, HintError> {
        let map = match value {
            Value::Null => return Ok(RootDeviceHints::none()),
            Value::Object(map) => map,
            other => return Err(HintError::NotAMap(other.to_string())),
        };
        let mut hints = Vec::with_capacity(map.len());
        let mut original = BTreeMap::new();
        for (name, value) in map {
            let Some(&(known, kind)) = KNOWN_HINTS.iter().find(|(n, _)| n == name) else {
                return Err(HintError::Unknown {
                    name: name.clone(),
                    known: KNOWN_HINTS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let invalid = |problem: &str| HintError::Invalid {
                name: name.clone(),
                value: value.to_string(),
                problem: problem.to_string(),
            };
            let matcher =
                match kind {
                    HintKind::Size => parse_size(value).map_err(|p| invalid(&p))?,
                    HintKind::Text => parse_text(known, value).map_err(|p| invalid(&p))?,
                    HintKind::Bool => Matcher::Bool(parse_bool(value).ok_or_else(|| {
                        invalid("not a Boolean (true/false, yes/no, on/off, 1/0)")
                    })?),
                };
            hints.push((known, matcher));
            original.insert(name.clone(), value.clone());
        }
        hints.sort_by_key(|(n, _)| *n);
        Ok(RootDeviceHints { original, hints })
    }

    /// No hints: [`select_root_device`] takes the smallest disk of at least 4 GiB.
    pub fn none() -> RootDeviceHints {
        RootDeviceHints {
            original: BTreeMap::new(),
            hints: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hints.is_empty()
    }

    /// Whether a root disk of `gib` GiB satisfies the size hint; `None`
    /// without one. The conductor uses it to match nodes whose disks it
    /// knows only by size.
    pub fn size_accepts(&self, gib: u64) -> Option<bool> {
        let (name, matcher) = self.hints.iter().find(|(name, _)| *name == "size")?;
        let disk = Disk {
            size: gib.saturating_mul(GIB as u64),
            ..Disk::default()
        };
        Some(hint_matches(name, matcher, &disk))
    }

    /// The hint as written for `name`, if given.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.original.get(name)
    }

    /// True when `disk` satisfies every hint. A disk without the attribute a
    /// string hint asks about never matches it.
    pub fn matches(&self, disk: &Disk) -> bool {
        self.hints
            .iter()
            .all(|(name, m)| hint_matches(name, m, disk))
    }
}

/// The disk to deploy to: with hints, the first disk (in inventory order) that
/// matches all of them; without, the smallest disk of at least 4 GiB (the first
/// of equal ones). The error lists every disk seen.
pub fn select_root_device<'a>(
    disks: &'a [Disk],
    hints: &RootDeviceHints,
) -> Result<&'a Disk, HintError> {
    let seen = || {
        if disks.is_empty() {
            return "none".to_string();
        }
        disks
            .iter()
            .map(describe_disk)
            .collect::<Vec<_>>()
            .join("; ")
    };
    if hints.is_empty() {
        return disks
            .iter()
            .filter(|d| d.size >= DEFAULT_MIN_ROOT_SIZE)
            .min_by_key(|d| d.size)
            .ok_or_else(|| HintError::NoDiskLargeEnough {
                min: DEFAULT_MIN_ROOT_SIZE,
                seen: seen(),
            });
    }
    disks
        .iter()
        .find(|d| hints.matches(d))
        .ok_or_else(|| HintError::NoMatch {
            hints: hints.to_string(),
            seen: seen(),
        })
}

fn describe_disk(d: &Disk) -> String {
    let mut s = format!("{} ({} bytes", d.name, d.size);
    for (label, v) in [
        ("model", &d.model),
        ("vendor", &d.vendor),
        ("serial", &d.serial),
        ("wwn", &d.wwn),
    ] {
        if let Some(v) = v {
            s.push_str(&format!(", {label} {v:?}"));
        }
    }
    s.push_str(if d.rotational { ", rotational)" } else { ")" });
    s
}

/// Hint values arrive as JSON strings, numbers or Booleans; compare text.
fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Split "<op> rest" into the operator and the rest, for the operators in `ops`
/// (longest first so "<=" is not read as "<").
fn split_operator<'a>(expr: &'a str, ops: &[&'static str]) -> (Option<&'static str>, &'a str) {
    for op in ops {
        if let Some(rest) = expr.strip_prefix(op) {
            return (Some(op), rest.trim());
        }
    }
    (None, expr)
}

/// The `<or>` alternatives of "<or> a <or> b" (or "a <or> b").
fn or_values(expr: &str) -> Vec<String> {
    expr.split("<or>")
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_size(value: &Value) -> Result<Matcher, String> {
    let text = value_text(value).ok_or("not a number or a string")?;
    let expr = text.trim();
    if expr.is_empty() {
        return Err("empty expression".into());
    }
    let positive_int = |v: &str| -> Result<f64, String> {
        match v.parse::<u64>() {
            Ok(0) => Err(format!("size {v:?} must be a positive whole number of GiB")),
            Ok(n) => Ok(n as f64),
            Err(_) => Err(format!("{v:?} is not a whole number of GiB")),
        }
    };
    if expr.contains("<or>") {
        let values = or_values(expr)
            .iter()
            .map(|v| positive_int(v))
            .collect::<Result<Vec<_>, _>>()?;
        if values.is_empty() {
            return Err("<or> without values".into());
        }
        return Ok(Matcher::SizeOneOf(values));
    }
    let (op, rest) = split_operator(expr, &["==", "!=", ">=", "<=", ">", "<", "="]);
    let op = match op {
        None | Some("==") => NumOp::Eq,
        Some("!=") => NumOp::Ne,
        Some(">=") | Some("=") => NumOp::Ge,
        Some("<=") => NumOp::Le,
        Some(">") => NumOp::Gt,
        Some(_) => NumOp::Lt,
    };
    if rest.is_empty() {
        return Err("operator without a value".into());
    }
    Ok(Matcher::Size(op, positive_int(rest)?))
}

/// Text comparisons ignore case and surrounding blanks, as Ironic's normalization does.
fn normalize(s: &str) -> String {
    s.trim().to_lowercase()
}

/// The `name` hint may leave out "/dev/".
fn normalize_hint_value(hint: &str, v: &str) -> String {
    let v = normalize(v);
    if hint == "name" && !v.starts_with("/dev/") {
        format!("/dev/{v}")
    } else {
        v
    }
}

fn parse_text(hint: &str, value: &Value) -> Result<Matcher, String> {
    let Value::String(text) = value else {
        return Err("not a string".into());
    };
    let expr = text.trim();
    if expr.is_empty() {
        return Err("empty expression".into());
    }
    if expr.contains("<or>") {
        let values: Vec<String> = or_values(expr)
            .iter()
            .map(|v| normalize_hint_value(hint, v))
            .collect();
        if values.is_empty() {
            return Err("<or> without values".into());
        }
        return Ok(Matcher::TextOneOf(values));
    }
    let (op, rest) = split_operator(
        expr,
        &["s==", "s!=", "s<=", "s>=", "s<", "s>", "<in>", "<all-in>"],
    );
    if op.is_some() && rest.is_empty() {
        return Err("operator without a value".into());
    }
    let op = match op {
        Some("<in>") | Some("<all-in>") => return Ok(Matcher::Contains(normalize(rest))),
        None | Some("s==") => TextOp::Eq,
        Some("s!=") => TextOp::Ne,
        Some("s<") => TextOp::Lt,
        Some("s<=") => TextOp::Le,
        Some("s>") => TextOp::Gt,
        Some(_) => TextOp::Ge,
    };
    Ok(Matcher::Text(op, normalize_hint_value(hint, rest)))
}

/// Strict Boolean words (oslo's bool_from_string with strict=True).
fn parse_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_u64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
            "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn disk_text<'a>(name: &str, disk: &'a Disk) -> Option<&'a str> {
    let v = match name {
        "name" => Some(&disk.name),
        "model" => disk.model.as_ref(),
        "vendor" => disk.vendor.as_ref(),
        "serial" => disk.serial.as_ref(),
        "wwn" => disk.wwn.as_ref(),
        "wwn_with_extension" => disk.wwn_with_extension.as_ref(),
        "wwn_vendor_extension" => disk.wwn_vendor_extension.as_ref(),
        "hctl" => disk.hctl.as_ref(),
        "by_path" => disk.by_path.as_ref(),
        "tran" => disk.tran.as_ref(),
        _ => None,
    };
    v.map(String::as_str).filter(|s| !s.trim().is_empty())
}

fn hint_matches(name: &str, m: &Matcher, disk: &Disk) -> bool {
    let gib = disk.size as f64 / GIB;
    match m {
        Matcher::Size(op, want) => match op {
            NumOp::Eq => gib == *want,
            NumOp::Ne => gib != *want,
            NumOp::Ge => gib >= *want,
            NumOp::Le => gib <= *want,
            NumOp::Gt => gib > *want,
            NumOp::Lt => gib < *want,
        },
        Matcher::SizeOneOf(values) => values.contains(&gib),
        Matcher::Bool(want) => disk.rotational == *want,
        Matcher::Text(op, want) => {
            let Some(have) = disk_text(name, disk).map(normalize) else {
                return false;
            };
            let have = have.as_str();
            let want = want.as_str();
            match op {
                TextOp::Eq => have == want,
                TextOp::Ne => have != want,
                TextOp::Lt => have < want,
                TextOp::Le => have <= want,
                TextOp::Gt => have > want,
                TextOp::Ge => have >= want,
            }
        }
        Matcher::Contains(want) => {
            disk_text(name, disk).is_some_and(|have| normalize(have).contains(want.as_str()))
        }
        Matcher::TextOneOf(values) => {
            disk_text(name, disk).is_some_and(|have| values.contains(&normalize(have)))
        }
    }
}

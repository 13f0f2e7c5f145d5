//! `.oac` control files next to templates: YAML (or JSON) with `mode`,
//! `owner`, `group` and `allow_empty`, checked as os-apply-config checks them.

use std::ffi::CString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OacError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: header is not a dict")]
    NotAMapping { path: PathBuf },
    #[error("{path}: unrecognised file control key '{key}'")]
    UnknownKey { path: PathBuf, key: String },
    #[error("{path}: allow_empty requires Boolean, got: '{value}'")]
    AllowEmpty { path: PathBuf, value: String },
    #[error("{path}: mode '{value}' is not numeric")]
    ModeNotNumeric { path: PathBuf, value: String },
    #[error("{path}: mode '{value:#o}' out of range")]
    ModeRange { path: PathBuf, value: i64 },
    #[error("{path}: {what} '{value}' not found in {db} database")]
    UnknownId {
        path: PathBuf,
        what: &'static str,
        value: String,
        db: &'static str,
    },
    #[error("{path}: {what} '{value}' must be a string or int")]
    IdType {
        path: PathBuf,
        what: &'static str,
        value: String,
    },
}

/// What a control file asks for; the defaults are os-apply-config's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileControl {
    pub mode: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub allow_empty: bool,
}

impl Default for FileControl {
    fn default() -> Self {
        FileControl {
            mode: None,
            owner: None,
            group: None,
            allow_empty: true,
        }
    }
}

/// Control file of a template: `TEMPLATE.oac`.
pub fn control_path(template: &Path) -> PathBuf {
    let mut name = template.as_os_str().to_owned();
    name.push(".oac");
    PathBuf::from(name)
}

/// Read the control file of `template`; no file means the defaults.
pub fn load_for(template: &Path) -> Result<FileControl, OacError> {
    let path = control_path(template);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileControl::default()),
        Err(source) => return Err(OacError::Read { path, source }),
    };
    parse(&text, &path)
}

fn scalar_text(v: &serde_yaml_ng::Value) -> String {
    match v {
        serde_yaml_ng::Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim_end()
            .to_string(),
    }
}

/// YAML 1.1 booleans, which PyYAML (and so os-apply-config) accepts.
fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => Some(true),
        "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// YAML 1.1 integers as PyYAML reads them: `0755` is octal, `0x1ed` hex.
fn yaml11_int(s: &str) -> Option<i64> {
    let s = s.replace('_', "");
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d.to_string()),
        None => (false, s.strip_prefix('+').unwrap_or(&s).to_string()),
    };
    let n = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(bin) = digits.strip_prefix("0b") {
        i64::from_str_radix(bin, 2).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse().ok()?
    };
    Some(if neg { -n } else { n })
}

/// Scalars are judged by their source text so YAML 1.1 forms (`0644`, `yes`)
/// mean what they meant to os-apply-config. Handles block lines and
/// one-line flow mappings (`{mode: 0644, owner: root}`, JSON).
fn raw_scalars(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.split(" #").next().unwrap_or_default().trim();
        let line = line.strip_prefix('{').unwrap_or(line);
        let line = line.strip_suffix('}').unwrap_or(line);
        for piece in line.split(',') {
            if let Some((k, v)) = piece.split_once(':') {
                let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
                pairs.push((k.to_string(), v.trim().to_string()));
            }
        }
    }
    pairs
}

pub fn parse(text: &str, path: &Path) -> Result<FileControl, OacError> {
    let path_buf = || path.to_path_buf();
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|source| OacError::Yaml {
            path: path_buf(),
            source,
        })?;
    let mut control = FileControl::default();
    let mapping = match doc {
        serde_yaml_ng::Value::Null => return Ok(control),
        serde_yaml_ng::Value::Mapping(m) => m,
        _ => return Err(OacError::NotAMapping { path: path_buf() }),
    };
    let raw = raw_scalars(text);
    let raw_of = |key: &str| raw.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    for (key, value) in &mapping {
        let key = scalar_text(key);
        let quoted = matches!(value, serde_yaml_ng::Value::String(_))
            && raw_of(&key).is_some_and(|r| r.starts_with('"') || r.starts_with('\''));
        let plain = if quoted { None } else { raw_of(&key) };
        match key.as_str() {
            "allow_empty" => {
                let b = match value {
                    serde_yaml_ng::Value::Bool(b) => Some(*b),
                    _ => plain.as_deref().and_then(yaml11_bool),
                };
                control.allow_empty = b.ok_or_else(|| OacError::AllowEmpty {
                    path: path_buf(),
                    value: scalar_text(value),
                })?;
            }
            "mode" => {
                let n = match value {
                    serde_yaml_ng::Value::Number(_) | serde_yaml_ng::Value::String(_) => {
                        plain.as_deref().and_then(yaml11_int)
                    }
                    _ => None,
                };
                let n = n.ok_or_else(|| OacError::ModeNotNumeric {
                    path: path_buf(),
                    value: scalar_text(value),
                })?;
                if !(0..=0o777).contains(&n) {
                    return Err(OacError::ModeRange {
                        path: path_buf(),
                        value: n,
                    });
                }
                // os-apply-config treats mode 0 as "not set" (`obj.mode or mode`).
                control.mode = (n != 0).then_some(n as u32);
            }
            "owner" => control.owner = Some(resolve_id(value, plain, path, IdKind::User)?),
            "group" => control.group = Some(resolve_id(value, plain, path, IdKind::Group)?),
            _ => {
                return Err(OacError::UnknownKey {
                    path: path_buf(),
                    key,
                });
            }
        }
    }
    Ok(control)
}

#[derive(Clone, Copy)]
enum IdKind {
    User,
    Group,
}

fn resolve_id(
    value: &serde_yaml_ng::Value,
    plain: Option<String>,
    path: &Path,
    kind: IdKind,
) -> Result<u32, OacError> {
    let (what, db) = match kind {
        IdKind::User => ("owner", "passwd"),
        IdKind::Group => ("group", "group"),
    };
    let not_found = |value: String| OacError::UnknownId {
        path: path.to_path_buf(),
        what,
        value,
        db,
    };
    let by_number = match value {
        serde_yaml_ng::Value::Number(_) => plain.as_deref().and_then(yaml11_int),
        serde_yaml_ng::Value::String(_) => None,
        other => {
            return Err(OacError::IdType {
                path: path.to_path_buf(),
                what,
                value: scalar_text(other),
            });
        }
    };
    match by_number {
        Some(id) => {
            let id = u32::try_from(id).map_err(|_| not_found(id.to_string()))?;
            id_exists(kind, id)
                .then_some(id)
                .ok_or_else(|| not_found(id.to_string()))
        }
        None => {
            let name = scalar_text(value);
            name_to_id(kind, &name).ok_or_else(|| not_found(name))
        }
    }
}

fn name_to_id(kind: IdKind, name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: the *_r calls write only into the structs and the buffer we pass,
    // with their sizes; the result pointer is checked before use.
    unsafe {
        match kind {
            IdKind::User => {
                let mut pwd: libc::passwd = std::mem::zeroed();
                let mut result = std::ptr::null_mut();
                libc::getpwnam_r(
                    cname.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                );
                (!result.is_null()).then_some(pwd.pw_uid)
            }
            IdKind::Group => {
                let mut grp: libc::group = std::mem::zeroed();
                let mut result = std::ptr::null_mut();
                libc::getgrnam_r(
                    cname.as_ptr(),
                    &mut grp,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                );
                (!result.is_null()).then_some(grp.gr_gid)
            }
        }
    }
}

fn id_exists(kind: IdKind, id: u32) -> bool {
    let mut buf = vec![0u8; 16384];
    // SAFETY: as in name_to_id.
    unsafe {
        match kind {
            IdKind::User => {
                let mut pwd: libc::passwd = std::mem::zeroed();
                let mut result = std::ptr::null_mut();
                libc::getpwuid_r(
                    id,
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                );
                !result.is_null()
            }
            IdKind::Group => {
                let mut grp: libc::group = std::mem::zeroed();
                let mut result = std::ptr::null_mut();
                libc::getgrgid_r(
                    id,
                    &mut grp,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                );
                !result.is_null()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<FileControl, OacError> {
        parse(text, Path::new("t.oac"))
    }

    #[test]
    fn yaml11_modes_and_booleans() {
        assert_eq!(p("mode: 0755\n").unwrap().mode, Some(0o755));
        assert_eq!(p("mode: 420").unwrap().mode, Some(0o644));
        assert!(matches!(p("mode: 755"), Err(OacError::ModeRange { .. })));
        assert!(matches!(
            p("mode: '0755'"),
            Err(OacError::ModeNotNumeric { .. })
        ));
        assert!(!p("allow_empty: no").unwrap().allow_empty);
        assert!(!p("{\"allow_empty\": false}").unwrap().allow_empty);
        assert!(p("").unwrap().allow_empty);
        let flow = p("{mode: 0640, allow_empty: no, group: 0}").unwrap();
        assert_eq!(
            (flow.mode, flow.allow_empty, flow.group),
            (Some(0o640), false, Some(0))
        );
        assert_eq!(p(r#"{"mode": 493}"#).unwrap().mode, Some(0o755));
        assert!(matches!(p("colour: red"), Err(OacError::UnknownKey { .. })));
        assert_eq!(p("owner: root\ngroup: 0").unwrap().group, Some(0));
        assert!(matches!(
            p("owner: no-such-user-kiln"),
            Err(OacError::UnknownId { .. })
        ));
    }
}

//! `os-apply-config --key a.b.0.c --type T --key-default V`: print one value
//! of the merged metadata, checked against a type.

use regex::Regex;

use super::value::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key {key} does not exist in the metadata")]
    Missing { key: String },
    #[error("cannot interpret value '{value}' as type {type_name}")]
    WrongType { value: String, type_name: String },
    #[error("requested validation of unknown type: {0}")]
    UnknownType(String),
}

/// The value types os-apply-config knows and the pattern each must match.
pub const TYPES: &[(&str, &str)] = &[
    ("int", r"^[0-9]+$"),
    ("default", r"^[A-Za-z0-9_]*$"),
    ("netaddress", r"^[A-Za-z0-9/.:-]*$"),
    ("netdevice", r"^[A-Za-z0-9/.:-]*$"),
    (
        "dsn",
        r"^[a-zA-Z0-9]+://([a-zA-Z0-9+_-]+(:[^@]+)?)?(@?[a-zA-Z0-9/_.-]+)?(/[a-zA-Z0-9_-]+)?(\?[a-zA-Z0-9=_-]+)?$",
    ),
    (
        "swiftdevices",
        r"^(r\d+z\d+-[A-Za-z0-9.-_]+:%PORT%/[^,]+,?)+$",
    ),
    ("username", r"^[A-Za-z0-9_-]+$"),
    ("raw", ""),
];

/// Walk `a.b.0.c`: object keys, and list indexes where a part is a number
/// (negative ones count from the end, as in Python). Null counts as missing.
pub fn lookup<'a>(metadata: &'a Value, key: &str) -> Option<&'a Value> {
    let mut current = metadata;
    for part in key.split('.') {
        current = match current {
            Value::Map(_) => current.get(part)?,
            Value::List(items) => {
                let index: i64 = part.trim().parse().ok()?;
                let len = items.len() as i64;
                let index = if index < 0 { index + len } else { index };
                items.get(usize::try_from(index).ok()?)?
            }
            _ => return None,
        };
        if matches!(current, Value::Null) {
            return None;
        }
    }
    Some(current)
}

/// Check a value's text against a type. Python's `re.match` anchors only at
/// the start, so patterns without `$` may match a prefix.
pub fn ensure_type(text: &str, type_name: &str) -> Result<(), KeyError> {
    let (_, pattern) = TYPES
        .iter()
        .find(|(name, _)| *name == type_name)
        .ok_or_else(|| KeyError::UnknownType(type_name.to_string()))?;
    let re = Regex::new(pattern).expect("built-in type patterns are valid");
    // `$` in Python also matches before a final newline.
    let candidate = text.strip_suffix('\n').unwrap_or(text);
    if re.is_match(text) || (pattern.ends_with('$') && re.is_match(candidate)) {
        Ok(())
    } else {
        Err(KeyError::WrongType {
            value: text.to_string(),
            type_name: type_name.to_string(),
        })
    }
}

/// The line `os-apply-config --key` prints (without the newline).
pub fn print_key(
    metadata: &Value,
    key: &str,
    type_name: &str,
    default: Option<&str>,
) -> Result<String, KeyError> {
    let Some(value) = lookup(metadata, key) else {
        return default
            .map(str::to_string)
            .ok_or_else(|| KeyError::Missing {
                key: key.to_string(),
            });
    };
    ensure_type(&value.to_python_str(), type_name)?;
    Ok(match value {
        Value::Map(_) | Value::List(_) | Value::Bool(_) => value.to_python_json(),
        other => other.to_python_str(),
    })
}

/// `os-apply-config --boolean-key`: exit code 0 for true, 1 for false, 255
/// (Python's -1) for anything else.
pub fn boolean_key(metadata: &Value, key: &str) -> u8 {
    match lookup(metadata, key) {
        Some(Value::Bool(true)) => 0,
        Some(Value::Bool(false)) => 1,
        _ => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Value {
        Value::from_json(r#"{"a": {"b": [{"c": "x"}, null, 5]}, "s": "str", "t": true}"#).unwrap()
    }

    #[test]
    fn lookup_walks_objects_and_list_indexes() {
        let m = meta();
        assert_eq!(lookup(&m, "a.b.0.c"), Some(&Value::Str("x".into())));
        assert_eq!(lookup(&m, "a.b.-1"), Some(&Value::Int(5)));
        assert_eq!(lookup(&m, "a.b.1"), None, "null is missing");
        assert_eq!(lookup(&m, "a.b.3"), None);
        assert_eq!(lookup(&m, "s.0"), None, "strings are not indexed");
    }

    #[test]
    fn print_key_types_and_defaults() {
        let m = meta();
        assert_eq!(print_key(&m, "t", "default", None).unwrap(), "true");
        assert_eq!(print_key(&m, "a.b.2", "int", None).unwrap(), "5");
        assert_eq!(print_key(&m, "nope", "int", Some("d d")).unwrap(), "d d");
        assert!(matches!(
            print_key(&m, "s", "int", None),
            Err(KeyError::WrongType { .. })
        ));
        assert!(matches!(
            print_key(&m, "nope", "int", None),
            Err(KeyError::Missing { .. })
        ));
        assert!(matches!(
            print_key(&m, "s", "colour", None),
            Err(KeyError::UnknownType(_))
        ));
        assert_eq!(boolean_key(&m, "t"), 0);
        assert_eq!(boolean_key(&m, "s"), 255);
    }

    #[test]
    fn python_dollar_accepts_a_final_newline() {
        assert!(ensure_type("12\n", "int").is_ok());
        assert!(ensure_type("12\n\n", "int").is_err());
    }
}

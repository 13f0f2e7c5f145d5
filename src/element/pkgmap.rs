//! An element's `pkg-map` file: generic package names mapped to a distribution's
//! names, by release, distro, family or default (most specific wins; an empty
//! name means "nothing to install").
//!
//! The `pkg-map` helper that runs inside the image has no JSON parser, so kiln
//! flattens each file at hooks-assembly time into lines of plain words:
//!
//! ```text
//! default - NAME MAPPED...
//! family FAMILY NAME MAPPED...
//! distro DISTRO NAME MAPPED...
//! release DISTRO/RELEASE NAME MAPPED...
//! ```
//!
//! The helper picks the most specific line matching DISTRO_NAME / DIB_RELEASE (or
//! its --distro / --release), so those need not be known when hooks are built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PkgMapError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid JSON: {source}", .path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {what}", .path.display())]
    Shape { path: PathBuf, what: String },
}

/// name -> mapped name(s); "" means skip.
pub type NameMap = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PkgMap {
    pub default: NameMap,
    pub family: BTreeMap<String, NameMap>,
    pub distro: BTreeMap<String, NameMap>,
    /// distro -> release -> map.
    pub release: BTreeMap<String, BTreeMap<String, NameMap>>,
}

/// What a name maps to for one distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping<'a> {
    /// Install these (usually one) packages.
    To(Vec<&'a str>),
    /// Mapped to nothing: install nothing.
    Skip,
    /// No mapping: the caller decides (`--missing-ok` keeps the name).
    Unmapped,
}

/// DIB's distribution families.
pub fn os_family(distro: &str) -> Option<&'static str> {
    match distro {
        "almalinux" | "fedora" | "rhel" | "centos" | "openeuler" | "rocky" => Some("redhat"),
        "debian" | "ubuntu" => Some("debian"),
        "opensuse" => Some("suse"),
        "gentoo" => Some("gentoo"),
        _ => None,
    }
}

/// DIB maps "8-stream" to release "8".
fn major_release(release: &str) -> &str {
    if release == "8-stream" { "8" } else { release }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && !s.contains(char::is_whitespace)
}

impl PkgMap {
    /// Read `path`; `Ok(None)` when the element has no pkg-map.
    pub fn load(path: &Path) -> Result<Option<PkgMap>, PkgMapError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PkgMapError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        PkgMap::parse(path, &text).map(Some)
    }

    /// Parse pkg-map JSON; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<PkgMap, PkgMapError> {
        let shape = |what: String| PkgMapError::Shape {
            path: path.to_path_buf(),
            what,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| PkgMapError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let top = value
            .as_object()
            .ok_or_else(|| shape("the top level must be an object".into()))?;
        let mut map = PkgMap::default();
        for (section, body) in top {
            match section.as_str() {
                "default" => map.default = name_map(body, "default", &shape)?,
                "family" | "distro" => {
                    let target = if section == "family" {
                        &mut map.family
                    } else {
                        &mut map.distro
                    };
                    for (key, inner) in object(body, section, &shape)? {
                        check_word(key, section, &shape)?;
                        let at = format!("{section}.{key}");
                        target.insert(key.clone(), name_map(inner, &at, &shape)?);
                    }
                }
                "release" => {
                    for (distro, releases) in object(body, "release", &shape)? {
                        check_word(distro, "release", &shape)?;
                        let at = format!("release.{distro}");
                        for (release, inner) in object(releases, &at, &shape)? {
                            check_word(release, &at, &shape)?;
                            let inner = name_map(inner, &format!("{at}.{release}"), &shape)?;
                            map.release
                                .entry(distro.clone())
                                .or_default()
                                .insert(release.clone(), inner);
                        }
                    }
                }
                other => {
                    return Err(shape(format!(
                        "unknown section '{other}' (expected release, distro, family or default)"
                    )));
                }
            }
        }
        Ok(map)
    }

    /// The effective map for `distro` / `release`, most specific section last.
    pub fn resolve(&self, distro: &str, release: Option<&str>) -> NameMap {
        let mut out = self.default.clone();
        if let Some(family) = os_family(distro).and_then(|f| self.family.get(f)) {
            out.extend(family.clone());
        }
        if let Some(d) = self.distro.get(distro) {
            out.extend(d.clone());
        }
        if let Some(r) = release.and_then(|r| self.release.get(distro)?.get(major_release(r))) {
            out.extend(r.clone());
        }
        out
    }

    /// Map one name as the pkg-map helper does.
    pub fn map<'a>(resolved: &'a NameMap, name: &str) -> Mapping<'a> {
        match resolved.get(name) {
            None => Mapping::Unmapped,
            Some(mapped) if mapped.trim().is_empty() => Mapping::Skip,
            Some(mapped) => Mapping::To(mapped.split_whitespace().collect()),
        }
    }

    /// The flattened text the shell helper reads (see the module docs).
    pub fn to_flat_text(&self, element: &str, source: &Path) -> String {
        let mut out = format!(
            "# pkg-map of element {element}, flattened by kiln from {}\n",
            source.display()
        );
        let mut put = |scope: &str, selector: &str, map: &NameMap| {
            for (name, mapped) in map {
                let mapped = mapped.split_whitespace().collect::<Vec<_>>().join(" ");
                out.push_str(&format!("{scope} {selector} {name} {mapped}\n"));
            }
        };
        put("default", "-", &self.default);
        for (family, map) in &self.family {
            put("family", family, map);
        }
        for (distro, map) in &self.distro {
            put("distro", distro, map);
        }
        for (distro, releases) in &self.release {
            for (release, map) in releases {
                put("release", &format!("{distro}/{release}"), map);
            }
        }
        out
    }
}

fn object<'a>(
    value: &'a serde_json::Value,
    at: &str,
    shape: &dyn Fn(String) -> PkgMapError,
) -> Result<&'a serde_json::Map<String, serde_json::Value>, PkgMapError> {
    value
        .as_object()
        .ok_or_else(|| shape(format!("'{at}' must be an object")))
}

fn check_word(
    key: &str,
    at: &str,
    shape: &dyn Fn(String) -> PkgMapError,
) -> Result<(), PkgMapError> {
    // The flattened format separates fields by spaces; '/' joins distro/release.
    if is_word(key) && !key.contains('/') {
        Ok(())
    } else {
        Err(shape(format!(
            "'{at}' has a key with whitespace or '/': {key:?}"
        )))
    }
}

fn name_map(
    value: &serde_json::Value,
    at: &str,
    shape: &dyn Fn(String) -> PkgMapError,
) -> Result<NameMap, PkgMapError> {
    let mut out = NameMap::new();
    for (name, mapped) in object(value, at, shape)? {
        check_word(name, at, shape)?;
        let mapped = match mapped {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => {
                return Err(shape(format!(
                    "'{at}.{name}' must be a string of package names, not {other}"
                )));
            }
        };
        out.insert(name.clone(), mapped);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "release": {"fedora": {"23": {"nova_package": "foo bar"}},
                  "centos": {"8": {"nova_package": "eight"}}},
      "distro": {"fedora": {"nova_package": "openstack-compute", "glance_package": "openstack-image"}},
      "family": {"redhat": {"nova_package": "openstack-nova", "glance_package": "openstack-glance"},
                 "suse": {"nova_package": ""}},
      "default": {"nova_package": "nova", "glance_package": "glance"}
    }"#;

    fn sample() -> PkgMap {
        PkgMap::parse(Path::new("x/pkg-map"), SAMPLE).unwrap()
    }

    fn map_one(distro: &str, release: Option<&str>, name: &str) -> Vec<String> {
        let resolved = sample().resolve(distro, release);
        match PkgMap::map(&resolved, name) {
            Mapping::To(v) => v.into_iter().map(String::from).collect(),
            Mapping::Skip => vec!["<skip>".into()],
            Mapping::Unmapped => vec!["<unmapped>".into()],
        }
    }

    #[test]
    fn most_specific_section_wins() {
        assert_eq!(
            map_one("fedora", Some("22"), "nova_package"),
            ["openstack-compute"]
        );
        assert_eq!(
            map_one("fedora", Some("23"), "nova_package"),
            ["foo", "bar"]
        );
        assert_eq!(
            map_one("fedora", Some("23"), "glance_package"),
            ["openstack-image"]
        );
        assert_eq!(map_one("rhel", None, "nova_package"), ["openstack-nova"]);
        assert_eq!(
            map_one("centos", Some("8-stream"), "nova_package"),
            ["eight"]
        );
        assert_eq!(map_one("ubuntu", None, "nova_package"), ["nova"]);
        assert_eq!(map_one("opensuse", None, "nova_package"), ["<skip>"]);
        assert_eq!(map_one("debian", None, "other"), ["<unmapped>"]);
    }

    #[test]
    fn bad_shapes_name_the_file_and_key() {
        for (text, needle) in [
            (r#"{"defaults": {}}"#, "unknown section 'defaults'"),
            (r#"{"default": {"a": 3}}"#, "'default.a'"),
            (r#"{"distro": {"debian": []}}"#, "'distro.debian'"),
            (r#"{"default": {"a b": "c"}}"#, "whitespace"),
            ("{", "not valid JSON"),
        ] {
            let err = PkgMap::parse(Path::new("el/pkg-map"), text)
                .unwrap_err()
                .to_string();
            assert!(err.contains("el/pkg-map") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn flat_text_has_one_line_per_mapping() {
        let text = sample().to_flat_text("nova", Path::new("/e/nova/pkg-map"));
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(lines.contains(&"default - nova_package nova"));
        assert!(lines.contains(&"family suse nova_package "));
        assert!(lines.contains(&"release fedora/23 nova_package foo bar"));
        assert_eq!(lines.len(), 9);
    }
}

//! `package-installs.yaml` / `.json`: the packages each element wants installed or
//! removed, squashed across all elements of a build into one list per phase, as
//! DIB's package-installs-squash does, then mapped through each element's pkg-map.
//!
//! Entry keys: `phase` (pre-install.d, install.d (default) or post-install.d),
//! `uninstall`, `build-only` (install, then remove at the end of the phase),
//! `installtype`, `arch` / `not-arch` (comma lists), `dib_python_version` and
//! `when` (`VAR=value` / `VAR!=value`, a list means all must hold). An entry may be
//! a list of such maps. Two deliberate differences from DIB: `uninstall: false`
//! means "do not uninstall" (DIB only checks that the key is present), and an
//! entry whose filters exclude it has no effect at all (DIB lets it cancel
//! another element's uninstall first).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::Phase;
use super::pkgmap::{Mapping, PkgMap};
use super::search::Element;

#[derive(Debug, thiserror::Error)]
pub enum PackageInstallsError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: neither JSON nor YAML: {source}", .path.display())]
    Parse {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("{}: package '{package}': {what}", .path.display())]
    Entry {
        path: PathBuf,
        package: String,
        what: String,
    },
    #[error("{}: {what}", .path.display())]
    Shape { path: PathBuf, what: String },
    #[error("{}: package '{package}': 'when' tests {variable}, which is not set", .path.display())]
    UnsetVariable {
        path: PathBuf,
        package: String,
        variable: String,
    },
    #[error("{}: package '{package}' has arch filters but ARCH is not set", .path.display())]
    NoArch { path: PathBuf, package: String },
    #[error(transparent)]
    PkgMap(#[from] super::pkgmap::PkgMapError),
}

/// One `VAR=value` / `VAR!=value` test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct When {
    pub variable: String,
    pub equal: bool,
    pub value: String,
}

impl When {
    /// `^(\w+)\s*(=|!=)\s*(.*)$` as DIB matches it.
    fn parse(text: &str) -> Option<When> {
        let name_end = text
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(text.len());
        if name_end == 0 {
            return None;
        }
        let rest = text[name_end..].trim_start();
        let (equal, rest) = if let Some(r) = rest.strip_prefix("!=") {
            (false, r)
        } else {
            (true, rest.strip_prefix('=')?)
        };
        Some(When {
            variable: text[..name_end].to_string(),
            equal,
            value: rest.trim_start().to_string(),
        })
    }
}

/// One way an element asks for a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub phase: Phase,
    pub uninstall: bool,
    pub build_only: bool,
    pub installtype: Option<String>,
    pub arch: Option<Vec<String>>,
    pub not_arch: Option<Vec<String>>,
    pub python_version: Option<String>,
    pub when: Vec<When>,
}

/// The parsed package-installs file of one element, in file order.
#[derive(Debug, Clone)]
pub struct ElementPackages {
    pub element: String,
    pub file: PathBuf,
    pub packages: Vec<(String, Vec<Spec>)>,
}

/// Read an element's package-installs.json and package-installs.yaml (either,
/// both, or none), as DIB does.
pub fn load_element(element: &Element) -> Result<Vec<ElementPackages>, PackageInstallsError> {
    let mut out = Vec::new();
    for name in ["package-installs.json", "package-installs.yaml"] {
        let path = element.path.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(PackageInstallsError::Io { path, source }),
        };
        out.push(parse(&element.name, &path, &text)?);
    }
    Ok(out)
}

/// Parse one file's text (JSON first, then YAML, like DIB).
pub fn parse(
    element: &str,
    path: &Path,
    text: &str,
) -> Result<ElementPackages, PackageInstallsError> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => serde_yaml_ng::from_str(text).map_err(|source| PackageInstallsError::Parse {
            path: path.to_path_buf(),
            source,
        })?,
    };
    let mut packages = Vec::new();
    let mapping = match &value {
        Value::Mapping(m) => m.clone(),
        Value::Null => Default::default(),
        _ => {
            return Err(PackageInstallsError::Shape {
                path: path.to_path_buf(),
                what: "the top level must map package names to options".into(),
            });
        }
    };
    for (key, params) in &mapping {
        let package = scalar_string(key).ok_or_else(|| PackageInstallsError::Shape {
            path: path.to_path_buf(),
            what: format!("package name {key:?} is not a string"),
        })?;
        let entry_error = |what: String| PackageInstallsError::Entry {
            path: path.to_path_buf(),
            package: package.clone(),
            what,
        };
        let specs = match params {
            Value::Null => vec![parse_spec(&Default::default(), &entry_error)?],
            Value::Mapping(m) => vec![parse_spec(m, &entry_error)?],
            Value::Sequence(items) => items
                .iter()
                .map(|item| match item {
                    Value::Mapping(m) => parse_spec(m, &entry_error),
                    Value::Null => parse_spec(&Default::default(), &entry_error),
                    other => Err(entry_error(format!(
                        "list items must be maps, not {other:?}"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(entry_error(format!(
                    "options must be a map or a list of maps, not {other:?}"
                )));
            }
        };
        packages.push((package, specs));
    }
    Ok(ElementPackages {
        element: element.to_string(),
        file: path.to_path_buf(),
        packages,
    })
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        _ => None,
    }
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Sequence(items) => items.iter().map(scalar_string).collect(),
        other => Some(
            scalar_string(other)?
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
    }
}

fn parse_spec(
    map: &serde_yaml_ng::Mapping,
    entry_error: &dyn Fn(String) -> PackageInstallsError,
) -> Result<Spec, PackageInstallsError> {
    let mut spec = Spec {
        phase: Phase::Install,
        uninstall: false,
        build_only: false,
        installtype: None,
        arch: None,
        not_arch: None,
        python_version: None,
        when: Vec::new(),
    };
    for (key, value) in map {
        let key = key.as_str().unwrap_or_default();
        let bad = |expected: &str| entry_error(format!("'{key}' must be {expected}"));
        match key {
            "phase" => {
                let name = value.as_str().ok_or_else(|| bad("a phase name"))?;
                spec.phase = match Phase::from_name(name) {
                    Some(p @ (Phase::PreInstall | Phase::Install | Phase::PostInstall)) => p,
                    _ => {
                        return Err(entry_error(format!(
                            "phase '{name}' is not one where packages are installed \
                             (pre-install.d, install.d or post-install.d)"
                        )));
                    }
                }
            }
            "uninstall" => spec.uninstall = value.as_bool().ok_or_else(|| bad("true or false"))?,
            "build-only" => {
                spec.build_only = value.as_bool().ok_or_else(|| bad("true or false"))?
            }
            "installtype" => {
                spec.installtype = Some(scalar_string(value).ok_or_else(|| bad("a string"))?)
            }
            "arch" => spec.arch = Some(string_list(value).ok_or_else(|| bad("a comma list"))?),
            "not-arch" => {
                spec.not_arch = Some(string_list(value).ok_or_else(|| bad("a comma list"))?)
            }
            "dib_python_version" => {
                spec.python_version = Some(scalar_string(value).ok_or_else(|| bad("a version"))?)
            }
            "when" => {
                let texts: Vec<String> = match value {
                    Value::Sequence(items) => {
                        items.iter().map(scalar_string).collect::<Option<_>>()
                    }
                    other => scalar_string(other).map(|s| vec![s]),
                }
                .ok_or_else(|| bad("a string or a list of strings"))?;
                for text in texts {
                    spec.when.push(When::parse(&text).ok_or_else(|| {
                        entry_error(format!(
                            "malformed when: '{text}' (expected VAR=value or VAR!=value)"
                        ))
                    })?);
                }
            }
            other => {
                return Err(entry_error(format!(
                    "unknown key '{other}' (expected phase, uninstall, build-only, installtype, arch, not-arch, dib_python_version or when)"
                )));
            }
        }
    }
    if spec.arch.is_some() && spec.not_arch.is_some() {
        return Err(entry_error("both 'arch' and 'not-arch' are given".into()));
    }
    Ok(spec)
}

/// A package in a squashed list and the element that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub package: String,
    pub element: String,
}

/// Install and uninstall requests of one phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseRequests {
    pub install: Vec<Request>,
    pub uninstall: Vec<Request>,
}

/// All requests of a build, by phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Squashed {
    pub phases: BTreeMap<Phase, PhaseRequests>,
}

/// Does `spec` apply to this build?
fn applies(
    spec: &Spec,
    element: &str,
    file: &Path,
    package: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<bool, PackageInstallsError> {
    if let Some(wanted) = &spec.installtype {
        let variable = format!("DIB_INSTALLTYPE_{}", element.replace('-', "_"));
        let actual = env(&variable)
            .or_else(|| env("DIB_DEFAULT_INSTALLTYPE"))
            .unwrap_or_else(|| "source".into());
        if *wanted != actual {
            return Ok(false);
        }
    }
    if spec.arch.is_some() || spec.not_arch.is_some() {
        let arch = env("ARCH").ok_or_else(|| PackageInstallsError::NoArch {
            path: file.to_path_buf(),
            package: package.to_string(),
        })?;
        if let Some(list) = &spec.arch
            && !list.contains(&arch)
        {
            return Ok(false);
        }
        if let Some(list) = &spec.not_arch
            && list.contains(&arch)
        {
            return Ok(false);
        }
    }
    if let Some(version) = &spec.python_version
        && *version != env("DIB_PYTHON_VERSION").unwrap_or_default()
    {
        return Ok(false);
    }
    for test in &spec.when {
        let actual = env(&test.variable).ok_or_else(|| PackageInstallsError::UnsetVariable {
            path: file.to_path_buf(),
            package: package.to_string(),
            variable: test.variable.clone(),
        })?;
        if (actual == test.value) != test.equal {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Squash the files of all elements (in build order) into per-phase lists.
/// `env` looks up the build's environment (ARCH, `when` variables, install types).
pub fn squash(
    files: &[ElementPackages],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Squashed, PackageInstallsError> {
    let mut squashed = Squashed::default();
    for file in files {
        for (package, specs) in &file.packages {
            for spec in specs {
                if !applies(spec, &file.element, &file.file, package, env)? {
                    continue;
                }
                let lists = squashed.phases.entry(spec.phase).or_default();
                let request = Request {
                    package: package.clone(),
                    element: file.element.clone(),
                };
                let installed = lists.install.iter().any(|r| r.package == *package);
                let removed = lists.uninstall.iter().any(|r| r.package == *package);
                if spec.uninstall || spec.build_only {
                    if installed && !removed {
                        // Another element installs it for good: keep it.
                        if spec.build_only {
                            lists.install.push(request);
                        }
                        continue;
                    }
                    if spec.build_only {
                        lists.install.push(request.clone());
                    }
                    lists.uninstall.push(request);
                } else {
                    // A plain install overrides other elements' removals.
                    lists.uninstall.retain(|r| r.package != *package);
                    lists.install.push(request);
                }
            }
        }
    }
    Ok(squashed)
}

/// The package lists of a build: every element's package-installs files squashed
/// (in build order) and mapped through the elements' pkg-maps for `distro` /
/// `release`. The recipe's packages are added with
/// [`PackageLists::add_recipe_packages`].
pub fn lists_for_build(
    resolved: &super::Resolved,
    env: &dyn Fn(&str) -> Option<String>,
    distro: &str,
    release: Option<&str>,
) -> Result<PackageLists, PackageInstallsError> {
    let mut files = Vec::new();
    let mut maps = BTreeMap::new();
    for element in &resolved.elements {
        files.extend(load_element(element)?);
        if let Some(map) = PkgMap::load(&element.path.join("pkg-map"))? {
            maps.insert(element.name.clone(), map);
        }
    }
    Ok(squash(&files, env)?.map_names(&maps, distro, release))
}

/// Final package names per phase, after pkg-map, without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageLists {
    pub phases: BTreeMap<Phase, (Vec<String>, Vec<String>)>,
}

impl Squashed {
    /// Map every request through its element's pkg-map for `distro` / `release`,
    /// keeping unmapped names (DIB calls pkg-map with --missing-ok).
    pub fn map_names(
        &self,
        maps: &BTreeMap<String, PkgMap>,
        distro: &str,
        release: Option<&str>,
    ) -> PackageLists {
        let resolved: BTreeMap<&str, _> = maps
            .iter()
            .map(|(e, m)| (e.as_str(), m.resolve(distro, release)))
            .collect();
        let map_all = |requests: &[Request]| {
            let mut out: Vec<String> = Vec::new();
            for r in requests {
                let names: Vec<String> = match resolved.get(r.element.as_str()) {
                    None => vec![r.package.clone()],
                    Some(map) => match PkgMap::map(map, &r.package) {
                        Mapping::To(v) => v.into_iter().map(String::from).collect(),
                        Mapping::Skip => Vec::new(),
                        Mapping::Unmapped => vec![r.package.clone()],
                    },
                };
                for n in names {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
            out
        };
        PackageLists {
            phases: self
                .phases
                .iter()
                .map(|(phase, lists)| {
                    (*phase, (map_all(&lists.install), map_all(&lists.uninstall)))
                })
                .collect(),
        }
    }
}

impl PackageLists {
    /// A recipe's `packages` (disk-image-create -p): installed in install.d, unmapped.
    pub fn add_recipe_packages(&mut self, packages: &[String]) {
        let (install, _) = self.phases.entry(Phase::Install).or_default();
        for p in packages {
            if !install.contains(p) {
                install.push(p.clone());
            }
        }
    }

    pub fn install(&self, phase: Phase) -> &[String] {
        self.phases
            .get(&phase)
            .map(|l| l.0.as_slice())
            .unwrap_or(&[])
    }

    pub fn uninstall(&self, phase: Phase) -> &[String] {
        self.phases
            .get(&phase)
            .map(|l| l.1.as_slice())
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(element: &str, yaml: &str) -> ElementPackages {
        parse(
            element,
            Path::new(&format!("{element}/package-installs.yaml")),
            yaml,
        )
        .unwrap()
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn names(requests: &[Request]) -> Vec<String> {
        requests
            .iter()
            .map(|r| format!("{}@{}", r.package, r.element))
            .collect()
    }

    #[test]
    fn arch_when_and_phase_filters() {
        let a = file(
            "a",
            "
libxml2:
grub2:
  phase: pre-install.d
linux-image-amd64:
  arch: amd64
dmidecode:
  not-arch: ppc64, ppc64le
lshw:
  arch: ppc64, ppc64le
package-a:
  when: DIB_USE_A = 1
package-b:
  when: DIB_USE_A != 1
kernel:
  - not-arch: arm64
    when: DIB_KERNEL = generic
  - arch: arm64
    when:
      - DIB_RELEASE != xenial
      - DIB_KERNEL = generic
",
        );
        let squashed = squash(
            std::slice::from_ref(&a),
            &env_of(&[
                ("ARCH", "amd64"),
                ("DIB_USE_A", "1"),
                ("DIB_KERNEL", "generic"),
                ("DIB_RELEASE", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(
            names(&squashed.phases[&Phase::Install].install),
            [
                "libxml2@a",
                "linux-image-amd64@a",
                "dmidecode@a",
                "package-a@a",
                "kernel@a"
            ]
        );
        assert_eq!(
            names(&squashed.phases[&Phase::PreInstall].install),
            ["grub2@a"]
        );

        let arm = squash(
            std::slice::from_ref(&a),
            &env_of(&[
                ("ARCH", "ppc64le"),
                ("DIB_USE_A", "0"),
                ("DIB_KERNEL", "generic"),
                ("DIB_RELEASE", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(
            names(&arm.phases[&Phase::Install].install),
            ["libxml2@a", "lshw@a", "package-b@a", "kernel@a"]
        );

        let err = squash(&[a], &env_of(&[("ARCH", "amd64")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a/package-installs.yaml") && err.contains("DIB_USE_A"),
            "{err}"
        );
    }

    #[test]
    fn uninstall_and_build_only_squash_across_elements() {
        let a = file(
            "a",
            "keep:\ntemp:\n  build-only: true\ngone:\n  uninstall: true\n",
        );
        let b = file(
            "b",
            "keep:\n  uninstall: true\ngone:\nother:\n  build-only: true\n",
        );
        let s = squash(&[a, b], &env_of(&[])).unwrap();
        let install = &s.phases[&Phase::Install];
        // b's plain install of "gone" cancels a's removal; a's install of "keep"
        // wins over b's removal.
        assert_eq!(
            names(&install.install),
            ["keep@a", "temp@a", "gone@b", "other@b"]
        );
        assert_eq!(names(&install.uninstall), ["temp@a", "other@b"]);
    }

    #[test]
    fn installtype_follows_element_variable_then_default() {
        let a = file(
            "my-el",
            "src-pkg:\n  installtype: source\npkg-pkg:\n  installtype: package\n",
        );
        let by_default = squash(std::slice::from_ref(&a), &env_of(&[])).unwrap();
        assert_eq!(
            names(&by_default.phases[&Phase::Install].install),
            ["src-pkg@my-el"]
        );
        let by_element = squash(&[a], &env_of(&[("DIB_INSTALLTYPE_my_el", "package")])).unwrap();
        assert_eq!(
            names(&by_element.phases[&Phase::Install].install),
            ["pkg-pkg@my-el"]
        );
    }

    #[test]
    fn json_files_and_pkg_map_mapping() {
        let a = parse(
            "a",
            Path::new("a/package-installs.json"),
            "{\n\t\"generic\": null,\n\t\"skipme\": {\"phase\": \"post-install.d\"}\n}",
        )
        .unwrap();
        let b = file("b", "generic:\nplain:\n");
        let s = squash(&[a, b], &env_of(&[])).unwrap();
        let map = PkgMap::parse(
            Path::new("a/pkg-map"),
            r#"{"family": {"debian": {"generic": "deb-one deb-two", "skipme": ""}}}"#,
        )
        .unwrap();
        let maps = BTreeMap::from([("a".to_string(), map)]);
        let mut lists = s.map_names(&maps, "debian", Some("bookworm"));
        lists.add_recipe_packages(&["vim".into(), "plain".into()]);
        // b has no pkg-map: its names pass through.
        assert_eq!(
            lists.install(Phase::Install),
            ["deb-one", "deb-two", "generic", "plain", "vim"]
        );
        assert!(lists.install(Phase::PostInstall).is_empty());
    }

    #[test]
    fn bad_entries_name_file_package_and_key() {
        for (yaml, needle) in [
            ("p:\n  phase: root.d\n", "phase 'root.d'"),
            (
                "p:\n  arch: amd64\n  not-arch: arm64\n",
                "both 'arch' and 'not-arch'",
            ),
            ("p:\n  when: nonsense\n", "malformed when"),
            ("p:\n  typo: 1\n", "unknown key 'typo'"),
            (
                "p:\n  uninstall: maybe\n",
                "'uninstall' must be true or false",
            ),
        ] {
            let err = parse("e", Path::new("e/package-installs.yaml"), yaml)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("e/package-installs.yaml")
                    && err.contains("'p'")
                    && err.contains(needle),
                "{err}"
            );
        }
    }

    #[test]
    fn when_parsing_matches_dib_regex() {
        assert_eq!(
            When::parse("FOO != bar baz "),
            Some(When {
                variable: "FOO".into(),
                equal: false,
                value: "bar baz ".into()
            })
        );
        assert_eq!(When::parse("X=").unwrap().value, "");
        assert!(When::parse("= 1").is_none());
        assert!(When::parse("FOO > 1").is_none());
    }
}

//! Expanding the requested elements through `element-deps` and `element-provides`
//! into the set a build uses, with diskimage-builder's rules:
//!
//! * `base` is added in front of the request unless `skip-base`;
//! * `vm` without any `block-device-*` element also gets DIB's default layout
//!   element (`block-device-efi` on arm64, `block-device-mbr` elsewhere);
//! * a name some element provides is satisfied by it and not looked up;
//! * two elements providing one name, or a requested element that another
//!   element provides, are errors; something must provide `operating-system`.
//!
//! DIB walks a set, so its order varies from run to run; kiln's result is sorted
//! by name. A name that is not an element is reported only if nothing in the
//! final set provides it, so the outcome does not depend on walk order either.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use super::search::{Catalog, Element};

/// Who asked for an element, for error messages.
const REQUESTED: &str = "the element list of the build";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error(
        "element '{name}' (needed by {needed_by}) is not in the element search path {search_path}"
    )]
    Missing {
        name: String,
        needed_by: String,
        search_path: String,
    },
    #[error("'{name}' is provided by both element '{first}' and element '{second}'")]
    ProvidedTwice {
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "element '{name}' is requested but element '{provider}' already provides it; request only one of them"
    )]
    RequestedButProvided { name: String, provider: String },
    #[error("no element provides 'operating-system'; add one of: {}", if .candidates.is_empty() { "(none on the search path)".to_string() } else { .candidates.join(", ") })]
    NoOperatingSystem { candidates: Vec<String> },
}

/// Options of the expansion that mirror disk-image-create's flags.
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// `-n` / `skip-base`: do not add the `base` element.
    pub skip_base: bool,
    /// Image architecture (DIB's ARCH); picks the default block-device element.
    pub arch: String,
    /// Elements every build gets, added after the request (kiln's `dib-helpers`).
    pub implicit: Vec<String>,
}

impl ResolveOptions {
    /// The options of an image build: DIB's `skip-base` and ARCH, with kiln's
    /// helper element always included.
    pub fn for_build(skip_base: bool, arch: &str) -> Self {
        ResolveOptions {
            skip_base,
            arch: arch.to_string(),
            implicit: vec![super::HELPERS_ELEMENT.to_string()],
        }
    }
}

/// The elements of one build.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The request after DIB's additions (`base`, the default block device,
    /// implicit elements), in order.
    pub requested: Vec<String>,
    /// Every element of the build, sorted by name.
    pub elements: Vec<Element>,
    /// Provided name -> element providing it.
    pub provided: BTreeMap<String, String>,
}

/// The request as DIB's arg_to_elements rewrites it.
fn complete_request(requested: &[String], options: &ResolveOptions) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if !options.skip_base {
        out.push("base".into());
    }
    out.extend(requested.iter().cloned());
    let has_vm = requested.iter().any(|e| e == "vm");
    let has_block_device = requested.iter().any(|e| e.starts_with("block-device-"));
    if has_vm && !has_block_device {
        let default = match options.arch.as_str() {
            "arm64" | "aarch64" => "block-device-efi",
            _ => "block-device-mbr",
        };
        out.push(default.into());
    }
    out.extend(options.implicit.iter().cloned());
    let mut seen = BTreeSet::new();
    out.retain(|e| seen.insert(e.clone()));
    out
}

/// Expand `requested` over `catalog`.
pub fn resolve(
    catalog: &Catalog,
    requested: &[String],
    options: &ResolveOptions,
) -> Result<Resolved, GraphError> {
    let requested = complete_request(requested, options);
    let mut wanted: BTreeSet<String> = requested.iter().cloned().collect();
    let mut needed_by: BTreeMap<String, String> = requested
        .iter()
        .map(|e| (e.clone(), REQUESTED.to_string()))
        .collect();
    let mut provided: BTreeMap<String, String> = BTreeMap::new();
    let mut queue: VecDeque<String> = requested.iter().cloned().collect();
    let mut expanded: BTreeSet<String> = BTreeSet::new();

    while let Some(name) = queue.pop_front() {
        if provided.contains_key(&name) || !expanded.insert(name.clone()) {
            continue;
        }
        // Unknown names may still be provided by an element found later.
        let Some(element) = catalog.get(&name) else {
            continue;
        };
        for virtual_name in &element.provides {
            if let Some(first) = provided.get(virtual_name) {
                return Err(GraphError::ProvidedTwice {
                    name: virtual_name.clone(),
                    first: first.clone(),
                    second: name.clone(),
                });
            }
            provided.insert(virtual_name.clone(), name.clone());
        }
        for dep in &element.depends {
            if !wanted.contains(dep) && !provided.contains_key(dep) {
                queue.push_back(dep.clone());
                needed_by.insert(dep.clone(), format!("element '{name}'"));
            }
            wanted.insert(dep.clone());
        }
    }

    for name in &requested {
        if let Some(provider) = provided.get(name) {
            return Err(GraphError::RequestedButProvided {
                name: name.clone(),
                provider: provider.clone(),
            });
        }
    }
    if !provided.contains_key("operating-system") {
        return Err(GraphError::NoOperatingSystem {
            candidates: catalog
                .providers_of("operating-system")
                .into_iter()
                .map(str::to_string)
                .collect(),
        });
    }
    let mut elements = Vec::new();
    for name in wanted.iter().filter(|n| !provided.contains_key(*n)) {
        match catalog.get(name) {
            Some(element) => elements.push(element.clone()),
            None => {
                return Err(GraphError::Missing {
                    name: name.clone(),
                    needed_by: needed_by.get(name).cloned().unwrap_or_default(),
                    search_path: catalog.search_path.to_env_value(),
                });
            }
        }
    }
    Ok(Resolved {
        requested,
        elements,
        provided,
    })
}

impl Resolved {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.elements.iter().map(|e| e.name.as_str())
    }

    pub fn get(&self, name: &str) -> Option<&Element> {
        self.elements.iter().find(|e| e.name == name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The variables DIB's element-info exports to every script: `IMAGE_ELEMENT`
    /// (all elements of the build, space separated), `IMAGE_ELEMENT_YAML` (name ->
    /// folder) and the bash function `get_image_element_array`, passed the way
    /// bash imports exported functions (`BASH_FUNC_name%%`).
    pub fn environment(&self) -> Vec<(String, String)> {
        let names: Vec<&str> = self.names().collect();
        let yaml_map: BTreeMap<&str, String> = self
            .elements
            .iter()
            .map(|e| (e.name.as_str(), e.path.display().to_string()))
            .collect();
        let yaml = serde_yaml_ng::to_string(&yaml_map).unwrap_or_default();
        let mut array = String::new();
        for e in &self.elements {
            array.push_str(&format!("[{}]={} ", e.name, e.path.display()));
        }
        vec![
            ("IMAGE_ELEMENT".into(), names.join(" ")),
            ("IMAGE_ELEMENT_YAML".into(), yaml),
            (
                "BASH_FUNC_get_image_element_array%%".into(),
                format!("() {{  echo \"{}\"\n}}", escape_double_quoted(&array)),
            ),
        ]
    }

    /// Folders of the elements, in build order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.elements.iter().map(|e| e.path.clone()).collect()
    }
}

fn escape_double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::search::SearchPath;
    use std::fs;
    use std::path::Path;

    /// Elements as (name, deps, provides) in one folder.
    fn tree(dir: &Path, elements: &[(&str, &[&str], &[&str])]) {
        for (name, deps, provides) in elements {
            let d = dir.join(name);
            fs::create_dir_all(&d).unwrap();
            if !deps.is_empty() {
                fs::write(d.join("element-deps"), deps.join("\n")).unwrap();
            }
            if !provides.is_empty() {
                fs::write(d.join("element-provides"), provides.join("\n")).unwrap();
            }
        }
    }

    fn catalog(elements: &[(&str, &[&str], &[&str])]) -> (tempfile::TempDir, Catalog) {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path(), elements);
        let catalog = SearchPath::new(&[tmp.path().to_path_buf()], None, None)
            .scan()
            .unwrap();
        (tmp, catalog)
    }

    fn request(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn skip_base() -> ResolveOptions {
        ResolveOptions {
            skip_base: true,
            ..Default::default()
        }
    }

    const OS: (&str, &[&str], &[&str]) = ("os", &[], &["operating-system"]);

    #[test]
    fn transitive_deps_are_sorted_and_base_is_added() {
        let (_t, cat) = catalog(&[
            OS,
            ("base", &["helpers"], &[]),
            ("helpers", &[], &[]),
            ("app", &["lib", "os"], &[]),
            ("lib", &["zlib"], &[]),
            ("zlib", &[], &[]),
            ("unused", &[], &[]),
        ]);
        let r = resolve(&cat, &request(&["app"]), &ResolveOptions::default()).unwrap();
        assert_eq!(r.requested, ["base", "app"]);
        assert_eq!(
            r.names().collect::<Vec<_>>(),
            ["app", "base", "helpers", "lib", "os", "zlib"]
        );
        let no_base = resolve(&cat, &request(&["app"]), &skip_base()).unwrap();
        assert!(!no_base.contains("base") && !no_base.contains("helpers"));
    }

    #[test]
    fn provided_names_satisfy_deps_without_lookup() {
        // "block-device" is not an element; block-device-gpt provides it.
        let (_t, cat) = catalog(&[
            OS,
            ("vm", &["block-device"], &[]),
            ("block-device-gpt", &[], &["block-device"]),
            ("block-device", &["should-not-be-pulled"], &[]),
        ]);
        let r = resolve(
            &cat,
            &request(&["os", "vm", "block-device-gpt"]),
            &skip_base(),
        )
        .unwrap();
        assert_eq!(
            r.names().collect::<Vec<_>>(),
            ["block-device-gpt", "os", "vm"]
        );
        assert_eq!(r.provided["block-device"], "block-device-gpt");
    }

    #[test]
    fn vm_without_block_device_gets_dibs_default() {
        let (_t, cat) = catalog(&[
            OS,
            ("vm", &[], &[]),
            ("block-device-mbr", &[], &["block-device"]),
            ("block-device-efi", &[], &["block-device"]),
        ]);
        let r = resolve(&cat, &request(&["os", "vm"]), &skip_base()).unwrap();
        assert!(r.contains("block-device-mbr"));
        let arm = ResolveOptions {
            arch: "arm64".into(),
            ..skip_base()
        };
        let r = resolve(&cat, &request(&["os", "vm"]), &arm).unwrap();
        assert!(r.contains("block-device-efi") && !r.contains("block-device-mbr"));
    }

    #[test]
    fn missing_element_names_who_needed_it_and_the_path() {
        let (tmp, cat) = catalog(&[OS, ("app", &["ghost"], &[])]);
        let err = resolve(&cat, &request(&["os", "app"]), &skip_base()).unwrap_err();
        let GraphError::Missing {
            name,
            needed_by,
            search_path,
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(name, "ghost");
        assert_eq!(needed_by, "element 'app'");
        assert_eq!(search_path, &tmp.path().display().to_string());
        let err = resolve(&cat, &request(&["os", "typo"]), &skip_base()).unwrap_err();
        assert!(err.to_string().contains(REQUESTED), "{err}");
    }

    #[test]
    fn two_providers_of_one_name_conflict() {
        let (_t, cat) = catalog(&[OS, ("a", &[], &["thing"]), ("b", &[], &["thing"])]);
        let err = resolve(&cat, &request(&["os", "a", "b"]), &skip_base()).unwrap_err();
        assert_eq!(
            err,
            GraphError::ProvidedTwice {
                name: "thing".into(),
                first: "a".into(),
                second: "b".into()
            }
        );
    }

    #[test]
    fn requested_element_provided_by_another_conflicts() {
        let (_t, cat) = catalog(&[OS, ("a", &[], &["b"]), ("b", &[], &[])]);
        let err = resolve(&cat, &request(&["os", "a", "b"]), &skip_base()).unwrap_err();
        assert_eq!(
            err,
            GraphError::RequestedButProvided {
                name: "b".into(),
                provider: "a".into()
            }
        );
    }

    #[test]
    fn an_operating_system_is_required_and_candidates_are_listed() {
        let (_t, cat) = catalog(&[OS, ("app", &[], &[])]);
        let err = resolve(&cat, &request(&["app"]), &skip_base()).unwrap_err();
        assert_eq!(
            err,
            GraphError::NoOperatingSystem {
                candidates: vec!["os".into()]
            }
        );
    }

    #[test]
    fn result_does_not_depend_on_request_order() {
        let (_t, cat) = catalog(&[
            OS,
            ("a", &["c", "virtual"], &[]),
            ("b", &["d"], &[]),
            ("c", &[], &[]),
            ("d", &["p"], &[]),
            ("p", &[], &["virtual"]),
        ]);
        let one = resolve(&cat, &request(&["a", "b", "os"]), &skip_base()).unwrap();
        let two = resolve(&cat, &request(&["os", "b", "a"]), &skip_base()).unwrap();
        assert_eq!(one.paths(), two.paths());
        assert_eq!(
            one.names().collect::<Vec<_>>(),
            ["a", "b", "c", "d", "os", "p"]
        );
    }

    #[test]
    fn search_path_override_picks_the_earlier_element() {
        let tmp = tempfile::tempdir().unwrap();
        let (mine, shipped) = (tmp.path().join("mine"), tmp.path().join("shipped"));
        tree(&mine, &[("app", &[], &[])]);
        tree(&shipped, &[OS, ("app", &["ghost"], &[])]);
        let cat = SearchPath::new(std::slice::from_ref(&mine), None, Some(shipped))
            .scan()
            .unwrap();
        let r = resolve(&cat, &request(&["os", "app"]), &skip_base()).unwrap();
        assert_eq!(
            r.get("app").unwrap().path,
            mine.join("app").canonicalize().unwrap()
        );
    }

    #[test]
    fn environment_lists_every_element_with_its_folder() {
        let (tmp, cat) = catalog(&[OS, ("app", &[], &[])]);
        let r = resolve(&cat, &request(&["app", "os"]), &skip_base()).unwrap();
        let env: BTreeMap<String, String> = r.environment().into_iter().collect();
        assert_eq!(env["IMAGE_ELEMENT"], "app os");
        let yaml: BTreeMap<String, String> =
            serde_yaml_ng::from_str(&env["IMAGE_ELEMENT_YAML"]).unwrap();
        let root = tmp.path().canonicalize().unwrap();
        assert_eq!(yaml["os"], root.join("os").display().to_string());
        // bash must be able to import the function and rebuild the array.
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg("eval declare -A a=($(get_image_element_array)); echo ${a[app]}")
            .env(
                "BASH_FUNC_get_image_element_array%%",
                &env["BASH_FUNC_get_image_element_array%%"],
            )
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            root.join("app").display().to_string()
        );
    }
}

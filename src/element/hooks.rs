//! The hooks folder of a build (DIB's TMP_HOOKS_PATH): the files of every element
//! merged into one tree, plus what kiln generates for the shell helpers.
//!
//! As in DIB, each sub-folder of an element (phase folders, `environment.d`,
//! `bin/`, `static/`, `init-scripts/`, ...) except `tests`, `test-elements` and
//! `__pycache__` is merged into the same-named folder of the hooks; the same name
//! from two elements is an error naming both. DIB only checks the first level and
//! lets deeper files overwrite each other in whatever order it walked the
//! elements; kiln checks every level, so the result never depends on order.
//! Files at the top of an element (`source-repository-*`, README, ...) are copied
//! to the top of the hooks, the later element in name order winning, as DIB does.
//!
//! Per-element files that would collide there are not used from the hooks:
//! kiln writes each element's pkg-map, flattened, to `kiln/pkg-map/ELEMENT`, and
//! the squashed package lists to `kiln/package-installs/PHASE.{install,uninstall}`
//! ([`KILN_DIR`]). Symlinks inside merged folders are kept as links (cp -a).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::Phase;
use super::graph::Resolved;
use super::package_installs::PackageLists;
use super::pkgmap::{PkgMap, PkgMapError};
use super::runparts::{self, Skipped};

/// kiln's own folder inside the hooks; no element may ship one.
pub const KILN_DIR: &str = "kiln";

/// Element folders DIB does not copy into the hooks.
const NOT_COPIED: [&str; 3] = ["tests", "test-elements", "__pycache__"];

#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is in both element '{first}' and element '{second}'; rename one of them")]
    Duplicate {
        path: String,
        first: String,
        second: String,
    },
    #[error(
        "element '{element}' has a top-level '{KILN_DIR}', a name kiln reserves in the hooks folder"
    )]
    Reserved { element: String },
    #[error("{}: not a regular file, directory or symlink", .0.display())]
    FileType(PathBuf),
    #[error("hooks folder {} already exists", .0.display())]
    Exists(PathBuf),
    #[error(transparent)]
    PkgMap(#[from] PkgMapError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> HooksError + '_ {
    move |source| HooksError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A script of a phase, in run order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The element that shipped it; `None` for a file a script created later.
    pub element: Option<String>,
    pub name: String,
    /// Relative to the hooks folder, e.g. `install.d/50-foo`.
    pub path_in_hooks: PathBuf,
}

/// An assembled hooks folder.
#[derive(Debug, Clone)]
pub struct Hooks {
    root: PathBuf,
    /// Relative path -> element that supplied it.
    owners: BTreeMap<PathBuf, String>,
}

impl Hooks {
    /// Merge the elements of `resolved` into the new folder `dest`. On error the
    /// folder is removed again.
    pub fn assemble(resolved: &Resolved, dest: &Path) -> Result<Hooks, HooksError> {
        if fs::symlink_metadata(dest).is_ok() {
            return Err(HooksError::Exists(dest.to_path_buf()));
        }
        fs::create_dir_all(dest).map_err(io_error(dest))?;
        let mut hooks = Hooks {
            root: dest.to_path_buf(),
            owners: BTreeMap::new(),
        };
        let result = hooks.merge_all(resolved);
        if let Err(e) = result {
            let _ = fs::remove_dir_all(dest);
            return Err(e);
        }
        Ok(hooks)
    }

    fn merge_all(&mut self, resolved: &Resolved) -> Result<(), HooksError> {
        for element in &resolved.elements {
            for name in sorted_entries(&element.path)? {
                let src = element.path.join(&name);
                if name == KILN_DIR {
                    return Err(HooksError::Reserved {
                        element: element.name.clone(),
                    });
                }
                // Top-level entries are followed like DIB's find -follow.
                let meta = fs::metadata(&src).map_err(io_error(&src))?;
                if meta.is_dir() {
                    if !NOT_COPIED.contains(&name.as_str()) {
                        self.merge_dir(&src, Path::new(&name), &element.name)?;
                    }
                } else if meta.is_file() && !name.ends_with(".pyc") {
                    let dst = self.root.join(&name);
                    copy_file(&src, &dst)?;
                    self.owners
                        .insert(PathBuf::from(&name), element.name.clone());
                }
            }
            self.write_pkg_map(&element.name, &element.path)?;
        }
        Ok(())
    }

    /// Merge folder `src` into `rel` inside the hooks, refusing any clash.
    fn merge_dir(&mut self, src: &Path, rel: &Path, element: &str) -> Result<(), HooksError> {
        let dst = self.root.join(rel);
        match fs::symlink_metadata(&dst) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(self.duplicate(rel, element)),
            Err(_) => {
                fs::create_dir(&dst).map_err(io_error(&dst))?;
                copy_metadata(src, &dst)?;
                self.owners.insert(rel.to_path_buf(), element.to_string());
            }
        }
        for name in sorted_entries(src)? {
            let from = src.join(&name);
            let rel_child = rel.join(&name);
            let to = self.root.join(&rel_child);
            let meta = fs::symlink_metadata(&from).map_err(io_error(&from))?;
            if meta.is_dir() {
                self.merge_dir(&from, &rel_child, element)?;
                continue;
            }
            if fs::symlink_metadata(&to).is_ok() {
                return Err(self.duplicate(&rel_child, element));
            }
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&from).map_err(io_error(&from))?;
                std::os::unix::fs::symlink(&target, &to).map_err(io_error(&to))?;
            } else if meta.is_file() {
                copy_file(&from, &to)?;
            } else {
                return Err(HooksError::FileType(from));
            }
            self.owners.insert(rel_child, element.to_string());
        }
        Ok(())
    }

    fn duplicate(&self, rel: &Path, element: &str) -> HooksError {
        HooksError::Duplicate {
            path: rel.display().to_string(),
            first: self.owners.get(rel).cloned().unwrap_or_default(),
            second: element.to_string(),
        }
    }

    fn write_pkg_map(&mut self, element: &str, element_dir: &Path) -> Result<(), HooksError> {
        let source = element_dir.join("pkg-map");
        let Some(map) = PkgMap::load(&source)? else {
            return Ok(());
        };
        let dir = self.root.join(KILN_DIR).join("pkg-map");
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let path = dir.join(element);
        fs::write(&path, map.to_flat_text(element, &source)).map_err(io_error(&path))?;
        Ok(())
    }

    /// Write the squashed package lists the dib-helpers package scripts read.
    pub fn write_package_lists(&self, lists: &PackageLists) -> Result<(), HooksError> {
        let dir = self.root.join(KILN_DIR).join("package-installs");
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        for phase in [Phase::PreInstall, Phase::Install, Phase::PostInstall] {
            for (suffix, names) in [
                ("install", lists.install(phase)),
                ("uninstall", lists.uninstall(phase)),
            ] {
                let path = dir.join(format!("{}.{suffix}", phase.dir_name()));
                let mut text = names.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                fs::write(&path, text).map_err(io_error(&path))?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The helper commands folder; phases put it first on PATH.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// The element that supplied `path_in_hooks`, if an element did.
    pub fn element_of(&self, path_in_hooks: &Path) -> Option<&str> {
        self.owners.get(path_in_hooks).map(String::as_str)
    }

    /// The scripts `phase` runs, in order, read from the folder now (scripts of
    /// earlier phases may have changed it, as in DIB), and the files skipped.
    pub fn listing(&self, phase: Phase) -> Result<(Vec<Script>, Vec<Skipped>), HooksError> {
        let dir = self.root.join(phase.dir_name());
        let listing = runparts::list_scripts(&dir).map_err(io_error(&dir))?;
        let scripts = listing
            .run
            .into_iter()
            .map(|name| {
                let path_in_hooks = Path::new(phase.dir_name()).join(&name);
                Script {
                    element: self.element_of(&path_in_hooks).map(str::to_string),
                    name,
                    path_in_hooks,
                }
            })
            .collect();
        Ok((scripts, listing.skipped))
    }

    /// The scripts `phase` runs, in order.
    pub fn scripts(&self, phase: Phase) -> Result<Vec<Script>, HooksError> {
        Ok(self.listing(phase)?.0)
    }

    /// environment.d files in sourcing order, relative to the hooks folder.
    pub fn environment_files(&self) -> Result<Vec<PathBuf>, HooksError> {
        let dir = self.root.join("environment.d");
        Ok(runparts::list_environment(&dir)
            .map_err(io_error(&dir))?
            .into_iter()
            .map(|name| Path::new("environment.d").join(name))
            .collect())
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<String>, HooksError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        names.push(
            name.into_string()
                .map_err(|n| HooksError::FileType(dir.join(n)))?,
        );
    }
    names.sort();
    Ok(names)
}

/// Copy content, permission bits and modification time.
fn copy_file(src: &Path, dst: &Path) -> Result<(), HooksError> {
    fs::copy(src, dst).map_err(io_error(src))?;
    copy_metadata(src, dst)
}

fn copy_metadata(src: &Path, dst: &Path) -> Result<(), HooksError> {
    let meta = fs::metadata(src).map_err(io_error(src))?;
    fs::set_permissions(dst, meta.permissions()).map_err(io_error(dst))?;
    if let Ok(mtime) = meta.modified() {
        let file = fs::File::open(dst).map_err(io_error(dst))?;
        file.set_modified(mtime).map_err(io_error(dst))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::graph::{ResolveOptions, resolve};
    use crate::element::search::SearchPath;
    use std::os::unix::fs::PermissionsExt;

    fn put(root: &Path, rel: &str, text: &str, mode: u32) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn resolved(root: &Path, request: &[&str]) -> Resolved {
        let catalog = SearchPath::new(&[root.to_path_buf()], None, None)
            .scan()
            .unwrap();
        let request: Vec<String> = request.iter().map(|s| s.to_string()).collect();
        let options = ResolveOptions {
            skip_base: true,
            ..Default::default()
        };
        resolve(&catalog, &request, &options).unwrap()
    }

    #[test]
    fn merges_phases_and_indexes_scripts_by_element() {
        let tmp = tempfile::tempdir().unwrap();
        let el = tmp.path().join("elements");
        put(&el, "os/element-provides", "operating-system\n", 0o644);
        put(&el, "os/root.d/10-root", "#!/bin/sh\n", 0o755);
        put(&el, "os/install.d/50-os", "#!/bin/sh\n", 0o755);
        put(&el, "os/environment.d/10-os.bash", "export A=1\n", 0o644);
        put(&el, "os/static/etc/os.conf", "os\n", 0o644);
        put(&el, "app/install.d/05-app", "#!/bin/sh\n", 0o755);
        put(&el, "app/install.d/data.conf", "x\n", 0o644);
        put(&el, "app/install.d/sub/helper", "x\n", 0o755);
        put(&el, "app/environment.d/02-app", "export B=1\n", 0o644);
        put(&el, "app/static/etc/app.conf", "app\n", 0o644);
        put(&el, "app/tests/test-thing", "x\n", 0o755);
        put(&el, "app/source-repository-app", "app git url\n", 0o644);
        put(&el, "app/pkg-map", r#"{"default": {"a": "b"}}"#, 0o644);
        std::os::unix::fs::symlink("../bin/tool", el.join("app/install.d/60-linked")).unwrap();
        put(&el, "app/bin/tool", "#!/bin/sh\n", 0o755);

        let r = resolved(&el, &["os", "app"]);
        let hooks = Hooks::assemble(&r, &tmp.path().join("hooks")).unwrap();
        let scripts = hooks.scripts(Phase::Install).unwrap();
        let got: Vec<(Option<&str>, &str)> = scripts
            .iter()
            .map(|s| (s.element.as_deref(), s.name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Some("app"), "05-app"),
                (Some("os"), "50-os"),
                (Some("app"), "60-linked")
            ]
        );
        assert_eq!(scripts[0].path_in_hooks, Path::new("install.d/05-app"));
        let h = hooks.root();
        assert!(
            fs::symlink_metadata(h.join("install.d/60-linked"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::read_to_string(h.join("static/etc/os.conf")).unwrap(),
            "os\n"
        );
        assert_eq!(
            fs::read_to_string(h.join("static/etc/app.conf")).unwrap(),
            "app\n"
        );
        assert!(h.join("source-repository-app").is_file());
        assert!(!h.join("tests").exists());
        assert_eq!(
            fs::metadata(h.join("install.d/05-app"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            hooks.environment_files().unwrap(),
            [
                PathBuf::from("environment.d/02-app"),
                PathBuf::from("environment.d/10-os.bash")
            ]
        );
        assert_eq!(
            hooks.scripts(Phase::Root).unwrap()[0].element.as_deref(),
            Some("os")
        );
        assert!(hooks.scripts(Phase::Cleanup).unwrap().is_empty());
        let flat = fs::read_to_string(h.join("kiln/pkg-map/app")).unwrap();
        assert!(flat.contains("\ndefault - a b\n"), "{flat}");
        // A script written into the hooks later has no element.
        put(h, "install.d/70-late", "#!/bin/sh\n", 0o755);
        assert_eq!(hooks.scripts(Phase::Install).unwrap()[3].element, None);
    }

    #[test]
    fn same_script_from_two_elements_is_an_error_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let el = tmp.path().join("elements");
        put(&el, "os/element-provides", "operating-system\n", 0o644);
        put(&el, "os/install.d/50-same", "#!/bin/sh\n", 0o755);
        put(&el, "zz/install.d/50-same", "#!/bin/sh\n", 0o755);
        let dest = tmp.path().join("hooks");
        let err = Hooks::assemble(&resolved(&el, &["os", "zz"]), &dest).unwrap_err();
        assert_eq!(
            err.to_string(),
            "install.d/50-same is in both element 'os' and element 'zz'; rename one of them"
        );
        assert!(!dest.exists());
    }

    #[test]
    fn nested_static_clash_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let el = tmp.path().join("elements");
        put(&el, "os/element-provides", "operating-system\n", 0o644);
        put(&el, "os/static/etc/x.conf", "1", 0o644);
        put(&el, "other/static/etc/x.conf", "2", 0o644);
        let err =
            Hooks::assemble(&resolved(&el, &["os", "other"]), &tmp.path().join("h")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("static/etc/x.conf is in both element 'os' and element 'other'"),
            "{err}"
        );
    }

    #[test]
    fn package_lists_are_written_per_phase() {
        let tmp = tempfile::tempdir().unwrap();
        let el = tmp.path().join("elements");
        put(&el, "os/element-provides", "operating-system\n", 0o644);
        let hooks = Hooks::assemble(&resolved(&el, &["os"]), &tmp.path().join("h")).unwrap();
        let mut lists = PackageLists::default();
        lists.add_recipe_packages(&["vim".into(), "curl".into()]);
        hooks.write_package_lists(&lists).unwrap();
        let dir = hooks.root().join("kiln/package-installs");
        assert_eq!(
            fs::read_to_string(dir.join("install.d.install")).unwrap(),
            "vim\ncurl\n"
        );
        assert_eq!(
            fs::read_to_string(dir.join("pre-install.d.uninstall")).unwrap(),
            ""
        );
    }
}

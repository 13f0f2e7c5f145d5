//! Finding elements: the search path and the catalog of every element on it.
//!
//! The search path is the `--elements-path` folders, then `ELEMENTS_PATH` (a colon
//! list), then kiln's shipped `elements/` folder. An element is a folder inside a
//! search-path folder; when two folders hold an element of the same name, the
//! earlier one wins, as in DIB.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("element search path entry {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not UTF-8 text", .0.display())]
    NotUtf8(PathBuf),
    #[error("{}: element name {name:?} has characters kiln cannot pass to scripts (whitespace or ':')", .path.display())]
    BadName { path: PathBuf, name: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SearchError + '_ {
    move |source| SearchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One element: its folder and what its `element-deps` / `element-provides` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    /// Canonical folder of the element.
    pub path: PathBuf,
    pub depends: BTreeSet<String>,
    pub provides: BTreeSet<String>,
    /// Folders of same-named elements later on the search path, hidden by this one.
    pub shadows: Vec<PathBuf>,
}

impl Element {
    /// Read the element in `path`, naming it `name`.
    pub fn load(name: &str, path: &Path) -> Result<Element, SearchError> {
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ':') {
            return Err(SearchError::BadName {
                path: path.to_path_buf(),
                name: name.to_string(),
            });
        }
        let path = path.canonicalize().map_err(io_error(path))?;
        Ok(Element {
            name: name.to_string(),
            depends: read_name_list(&path.join("element-deps"))?,
            provides: read_name_list(&path.join("element-provides"))?,
            path,
            shadows: Vec::new(),
        })
    }
}

/// One name per line, blanks ignored; a missing file is an empty list.
fn read_name_list(path: &Path) -> Result<BTreeSet<String>, SearchError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(io_error(path)(e)),
    };
    let text = String::from_utf8(bytes).map_err(|_| SearchError::NotUtf8(path.to_path_buf()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// The folder of kiln's shipped elements: `$KILN_ELEMENTS_DIR`, else
/// `../share/kiln/elements` next to the running binary when it exists, else the
/// source tree's `elements/`.
pub fn shipped_elements_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_ELEMENTS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(bin_dir) = exe.parent()
    {
        let installed = bin_dir.join("../share/kiln/elements");
        if installed.is_dir() {
            return installed;
        }
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/elements"))
}

/// The ordered list of folders elements are looked up in; earlier wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// `explicit` folders, then the entries of `elements_path` (colon list, empty
    /// entries ignored), then `shipped`.
    pub fn new(
        explicit: &[PathBuf],
        elements_path: Option<&str>,
        shipped: Option<PathBuf>,
    ) -> Self {
        let mut dirs: Vec<PathBuf> = explicit.to_vec();
        if let Some(list) = elements_path {
            dirs.extend(list.split(':').filter(|e| !e.is_empty()).map(PathBuf::from));
        }
        dirs.extend(shipped);
        SearchPath { dirs }
    }

    /// The search path of a build: `explicit`, `$ELEMENTS_PATH`, the shipped folder.
    pub fn from_env(explicit: &[PathBuf]) -> Self {
        let env = std::env::var("ELEMENTS_PATH").ok();
        SearchPath::new(explicit, env.as_deref(), Some(shipped_elements_dir()))
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The value scripts see as `ELEMENTS_PATH`.
    pub fn to_env_value(&self) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        dirs.join(":")
    }

    /// Read every element on the path.
    pub fn scan(&self) -> Result<Catalog, SearchError> {
        let mut elements: BTreeMap<String, Element> = BTreeMap::new();
        for dir in &self.dirs {
            if !dir.is_dir() {
                return Err(SearchError::NotADirectory(dir.clone()));
            }
            let mut names = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
                let entry = entry.map_err(io_error(dir))?;
                if entry.path().is_dir() {
                    names.push(entry.file_name());
                }
            }
            names.sort();
            for name in names {
                let path = dir.join(&name);
                let name = name
                    .into_string()
                    .map_err(|_| SearchError::NotUtf8(path.clone()))?;
                match elements.get_mut(&name) {
                    // An earlier folder already supplied this element.
                    Some(winner) => winner.shadows.push(path),
                    None => {
                        let element = Element::load(&name, &path)?;
                        elements.insert(name, element);
                    }
                }
            }
        }
        Ok(Catalog {
            elements,
            search_path: self.clone(),
        })
    }
}

/// Every element on a search path, by name.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub elements: BTreeMap<String, Element>,
    pub search_path: SearchPath,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Element> {
        self.elements.get(name)
    }

    /// Names of the elements that provide `virtual_name`.
    pub fn providers_of(&self, virtual_name: &str) -> Vec<&str> {
        self.elements
            .values()
            .filter(|e| e.provides.contains(virtual_name))
            .map(|e| e.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn search_path_order_and_empty_entries() {
        let sp = SearchPath::new(
            &[PathBuf::from("/x")],
            Some("/a::/b:"),
            Some(PathBuf::from("/shipped")),
        );
        assert_eq!(sp.to_env_value(), "/x:/a:/b:/shipped");
    }

    #[test]
    fn earlier_folder_overrides_later_and_records_the_shadowed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let first = tmp.path().join("first");
        let second = tmp.path().join("second");
        fs::create_dir_all(first.join("common")).unwrap();
        fs::create_dir_all(second.join("common")).unwrap();
        fs::create_dir_all(second.join("only-second")).unwrap();
        fs::write(first.join("common/element-deps"), "one\n\n  two  \n").unwrap();
        fs::write(second.join("common/element-deps"), "other\n").unwrap();
        fs::write(second.join("not-an-element"), "").unwrap();
        let catalog = SearchPath::new(std::slice::from_ref(&first), None, Some(second.clone()))
            .scan()
            .unwrap();
        let common = catalog.get("common").unwrap();
        assert_eq!(common.path, first.join("common").canonicalize().unwrap());
        assert_eq!(common.depends.iter().collect::<Vec<_>>(), ["one", "two"]);
        assert_eq!(common.shadows, [second.join("common")]);
        assert_eq!(
            catalog.elements.keys().collect::<Vec<_>>(),
            ["common", "only-second"]
        );
    }

    #[test]
    fn missing_search_dir_is_named() {
        let err = SearchPath::new(&[PathBuf::from("/nonexistent-kiln-dir")], None, None)
            .scan()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent-kiln-dir"), "{err}");
    }
}

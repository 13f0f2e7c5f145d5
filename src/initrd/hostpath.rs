//! Walk a path inside a root directory the way the guest would see it, and record
//! what the walk went through: every symbolic link on the way (so the initrd gets
//! the same links) and every real directory (so the links have somewhere to point).
//!
//! The walk is confined to the root: `..` stops at the root and absolute link
//! targets are taken relative to the root (what `openat2(RESOLVE_IN_ROOT)` does),
//! so a link in an image never sends kiln to a host file.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::staging::{Content, Staged, StagedKind};

/// Symbolic links followed before the walk gives up (the kernel's limit is 40).
const MAX_LINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: too many levels of symbolic links")]
    Loop(PathBuf),
    #[error("{0}: a component on the way is not a directory")]
    NotDir(PathBuf),
    #[error("{0}: the name is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("{path}: symbolic link to {target:?} leaves {root}")]
    Escapes {
        path: PathBuf,
        target: String,
        root: PathBuf,
    },
}

/// The end of a walk: where the path really is, and what was passed on the way.
#[derive(Debug, Clone)]
pub struct Walk {
    /// Canonical path inside the root ("/usr/lib/x86_64-linux-gnu/libc.so.6").
    pub path: String,
    /// Host path of the final object (`root` + `path`).
    pub host: PathBuf,
    /// Metadata of the final object (not a symlink).
    pub meta: fs::Metadata,
    /// Links passed: (path inside the root, target as stored).
    pub links: Vec<(String, String)>,
    /// Real directories passed, with their metadata, outermost first.
    pub dirs: Vec<(String, fs::Metadata)>,
}

/// How absolute link targets map into the root. `Some(rest)` is a path inside the
/// root, `None` means the link leaves what the caller is willing to follow.
pub type AbsMap<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Absolute targets are paths inside the root (a system root, "/" or an image).
pub fn abs_in_root(target: &str) -> Option<String> {
    Some(target.to_string())
}

/// The host path of `inner` (an absolute path inside `root`).
pub fn host_path(root: &Path, inner: &str) -> PathBuf {
    root.join(inner.trim_start_matches('/'))
}

/// Walk `inner` (absolute or relative to the root) inside `root`.
pub fn walk(root: &Path, inner: &str, abs: AbsMap<'_>) -> Result<Walk, WalkError> {
    let mut todo: Vec<String> = components(inner).rev().collect();
    let mut cur: Vec<String> = Vec::new();
    let mut links = Vec::new();
    let mut dirs: Vec<(String, fs::Metadata)> = Vec::new();
    let mut followed = 0usize;
    let mut last_meta: Option<fs::Metadata> = None;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                cur.pop();
                last_meta = None;
                continue;
            }
            _ => {}
        }
        cur.push(part);
        let inner_path = join(&cur);
        let host = host_path(root, &inner_path);
        let meta = fs::symlink_metadata(&host).map_err(|source| WalkError::Io {
            path: host.clone(),
            source,
        })?;
        if meta.file_type().is_symlink() {
            followed += 1;
            if followed > MAX_LINKS {
                return Err(WalkError::Loop(host));
            }
            let target = fs::read_link(&host).map_err(|source| WalkError::Io {
                path: host.clone(),
                source,
            })?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| WalkError::NotUtf8(host.clone()))?;
            links.push((inner_path, target.clone()));
            cur.pop();
            let rest = if target.starts_with('/') {
                cur.clear();
                abs(&target).ok_or_else(|| WalkError::Escapes {
                    path: host.clone(),
                    target: target.clone(),
                    root: root.to_path_buf(),
                })?
            } else {
                target
            };
            todo.extend(components(&rest).rev());
            last_meta = None;
        } else {
            if !todo.iter().all(|p| p.is_empty() || p == ".") && !meta.is_dir() {
                return Err(WalkError::NotDir(host));
            }
            if meta.is_dir() && !dirs.iter().any(|(p, _)| *p == inner_path) {
                dirs.push((inner_path, meta.clone()));
            }
            last_meta = Some(meta);
        }
    }
    let path = join(&cur);
    let meta = match last_meta {
        Some(m) => m,
        None => {
            let host = host_path(root, &path);
            fs::metadata(&host).map_err(|source| WalkError::Io { path: host, source })?
        }
    };
    // The final object is not "a directory on the way".
    if dirs.last().is_some_and(|(p, _)| *p == path) {
        dirs.pop();
    }
    // Directories left behind by ".." or by a link jumping elsewhere are still
    // directories the initrd needs only if they lead to the result.
    dirs.retain(|(p, _)| path.starts_with(&format!("{p}/")));
    Ok(Walk {
        host: host_path(root, &path),
        path,
        meta,
        links,
        dirs,
    })
}

fn components(p: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    p.split('/').filter(|c| !c.is_empty()).map(str::to_string)
}

fn join(parts: &[String]) -> String {
    if parts.is_empty() {
        return "/".to_string();
    }
    let mut s = String::new();
    for p in parts {
        s.push('/');
        s.push_str(p);
    }
    s
}

/// Turn a walk into initrd items: its links, its directories and the final file,
/// each placed by `place` (which maps a path inside the root to a guest path, or
/// drops it with `None`).
pub fn staged_from_walk(w: &Walk, place: &dyn Fn(&str) -> Option<String>) -> Vec<Staged> {
    let mut out = Vec::new();
    for (p, meta) in &w.dirs {
        if let Some(g) = place(p) {
            out.push(Staged {
                path: g,
                kind: StagedKind::Dir,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
    }
    for (p, target) in &w.links {
        if let Some(g) = place(p) {
            out.push(Staged {
                path: g,
                kind: StagedKind::Symlink(target.clone()),
                mode: 0o777,
                uid: 0,
                gid: 0,
            });
        }
    }
    if let Some(g) = place(&w.path) {
        out.push(file_item(g, &w.host, &w.meta));
    }
    out
}

/// A regular file copied from the host, with its mode and owner.
pub fn file_item(guest: String, host: &Path, meta: &fs::Metadata) -> Staged {
    Staged {
        path: guest,
        kind: StagedKind::File(Content::Host(host.to_path_buf())),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    }
}

/// Add `items` to `out`, keeping the first item for each guest path.
pub fn merge(out: &mut std::collections::BTreeMap<String, Staged>, items: Vec<Staged>) {
    for s in items {
        out.entry(s.path.clone()).or_insert(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_and_dirs_on_the_way_are_recorded() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("usr/lib/x")).unwrap();
        fs::write(r.join("usr/lib/x/libfoo.so.1.2.3"), b"x").unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("libfoo.so.1.2.3", r.join("usr/lib/x/libfoo.so.1")).unwrap();
        // An absolute link is taken inside the root, ".." stops at the root.
        symlink("/../../lib/x/libfoo.so.1", r.join("abs")).unwrap();
        let w = walk(r, "/abs", &abs_in_root).unwrap();
        assert_eq!(w.path, "/usr/lib/x/libfoo.so.1.2.3");
        let links: Vec<_> = w.links.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(links, ["/abs", "/lib", "/usr/lib/x/libfoo.so.1"]);
        let dirs: Vec<_> = w.dirs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(dirs, ["/usr", "/usr/lib", "/usr/lib/x"]);
    }

    #[test]
    fn loops_and_escapes_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        symlink("b", r.join("a")).unwrap();
        symlink("a", r.join("b")).unwrap();
        assert!(matches!(
            walk(r, "/a", &abs_in_root),
            Err(WalkError::Loop(_))
        ));
        symlink("/etc/passwd", r.join("c")).unwrap();
        assert!(matches!(
            walk(r, "/c", &|_| None),
            Err(WalkError::Escapes { .. })
        ));
        // Inside the root, /etc/passwd does not exist: the host file is not read.
        assert!(matches!(
            walk(r, "/c", &abs_in_root),
            Err(WalkError::Io { .. })
        ));
    }
}

//! `kiln initrd add --binary`: a program with its interpreter and every shared
//! library it loads, found the way the dynamic loader (ld.so) finds them:
//!
//! 1. a DT_NEEDED name that an already loaded object carries as DT_SONAME (or
//!    was found under) is that object;
//! 2. a name containing '/' is a path;
//! 3. otherwise, when the object has no DT_RUNPATH: the DT_RPATH of the object,
//!    then of the object that loaded it, and so on up to the program;
//!    (LD_LIBRARY_PATH is deliberately not used: the initrd does not have it)
//! 4. the object's own DT_RUNPATH;
//! 5. the directories of /etc/ld.so.conf (with its `include` globs), in order;
//! 6. the trusted directories for the object's machine, unless DF_1_NODEFLIB.
//!
//! Candidates of the wrong class, byte order or machine are skipped. `$ORIGIN`,
//! `$LIB` and `$PLATFORM` (also `${...}`) are expanded in RPATH/RUNPATH.
//! Everything is looked up inside `sysroot`, confined to it, and the symlinks
//! on each path (library version links, merged-/usr directory links) are
//! reproduced in the initrd.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::elfparse::{self, DF_1_NODEFLIB, Dynamic, Elf, Ident, ParseError};
use super::glob;
use super::hostpath::{self, WalkError, abs_in_root, merge, staged_from_walk, walk};
use super::staging::Staged;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error("{name} (needed by {needed_by}) not found in {root}")]
    NotFound {
        name: String,
        needed_by: String,
        root: PathBuf,
    },
    #[error("{0}: a relative program path needs the host root \"/\"")]
    Relative(PathBuf),
    #[error("{0}: the path is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("{path}: ld.so.conf includes nest deeper than {MAX_INCLUDE_DEPTH}")]
    IncludeDepth { path: String },
}

const MAX_INCLUDE_DEPTH: usize = 16;

/// One object the loader would map: the program, its interpreter or a library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The name it was asked for (DT_NEEDED, PT_INTERP or the program path).
    pub name: String,
    /// Where it was found, inside the root, before following symlinks.
    pub path: String,
    /// The same, with every symlink followed.
    pub canonical: String,
}

/// The program, its interpreter and its libraries as initrd items: files at
/// their canonical paths plus the symlinks and directories leading to them.
pub fn binary_with_deps(sysroot: &Path, binary: &Path) -> Result<Vec<Staged>, ElfError> {
    let loaded = resolve(sysroot, binary)?;
    let mut out = BTreeMap::new();
    for l in &loaded {
        let w = walk(sysroot, &l.path, &abs_in_root)?;
        merge(&mut out, staged_from_walk(&w, &|p| Some(p.to_string())));
    }
    Ok(out.into_values().collect())
}

struct Obj {
    loaded: Loaded,
    /// Directory for $ORIGIN.
    origin: String,
    dynamic: Dynamic,
    /// Index of the object whose DT_NEEDED brought this one in.
    loader: Option<usize>,
    soname: Option<String>,
    file_id: (u64, u64),
}

struct Search<'a> {
    root: &'a Path,
    ident: Ident,
    lib: String,
    platform: &'static str,
    system_dirs: Vec<String>,
}

/// Every object the loader maps for `binary`, in load (breadth-first) order.
pub fn resolve(sysroot: &Path, binary: &Path) -> Result<Vec<Loaded>, ElfError> {
    let bin = program_path(sysroot, binary)?;
    let w = walk(sysroot, &bin, &abs_in_root)?;
    let bytes = read_all(&w.host)?;
    let elf = Elf::parse(&bytes).map_err(|source| ElfError::Parse {
        path: w.host.clone(),
        source,
    })?;
    let ident = elf.ident;
    let interp = elf.interp().map_err(|source| ElfError::Parse {
        path: w.host.clone(),
        source,
    })?;
    let search = Search::new(sysroot, ident)?;
    let mut objs: Vec<Obj> = Vec::new();
    // The program's $ORIGIN is its real directory (the kernel hands ld.so the
    // resolved path).
    objs.push(make_obj(
        bin.clone(),
        bin,
        &w,
        &bytes,
        dir_of(&w.path),
        None,
    )?);
    if let Some(interp) = interp {
        let w = walk(sysroot, &interp, &abs_in_root)?;
        let bytes = read_all(&w.host)?;
        let dir = dir_of(&interp);
        objs.push(make_obj(interp.clone(), interp, &w, &bytes, dir, None)?);
    }
    let mut i = 0;
    while i < objs.len() {
        let needed = objs[i].dynamic.needed.clone();
        for name in needed {
            if objs.iter().any(|o| {
                o.soname.as_deref() == Some(name.as_str())
                    || o.loaded.name == name
                    || o.loaded.path == name
            }) {
                continue;
            }
            let Some((path, w, bytes)) = search.find(&name, &objs, i)? else {
                return Err(ElfError::NotFound {
                    name,
                    needed_by: objs[i].loaded.path.clone(),
                    root: sysroot.to_path_buf(),
                });
            };
            let id = file_id(&w.meta);
            if objs.iter().any(|o| o.file_id == id) {
                continue;
            }
            let dir = dir_of(&path);
            objs.push(make_obj(name, path, &w, &bytes, dir, Some(i))?);
        }
        i += 1;
    }
    Ok(objs.into_iter().map(|o| o.loaded).collect())
}

fn make_obj(
    name: String,
    path: String,
    w: &hostpath::Walk,
    bytes: &[u8],
    origin: String,
    loader: Option<usize>,
) -> Result<Obj, ElfError> {
    let perr = |source| ElfError::Parse {
        path: w.host.clone(),
        source,
    };
    let elf = Elf::parse(bytes).map_err(perr)?;
    let dynamic = elf.dynamic().map_err(perr)?.unwrap_or_default();
    Ok(Obj {
        soname: dynamic.soname.clone(),
        dynamic,
        origin,
        loader,
        file_id: file_id(&w.meta),
        loaded: Loaded {
            name,
            path,
            canonical: w.path.clone(),
        },
    })
}

fn file_id(m: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

fn program_path(sysroot: &Path, binary: &Path) -> Result<String, ElfError> {
    let p = if binary.is_absolute() {
        binary.to_path_buf()
    } else if sysroot == Path::new("/") {
        std::env::current_dir()
            .map_err(|source| ElfError::Read {
                path: binary.to_path_buf(),
                source,
            })?
            .join(binary)
    } else {
        return Err(ElfError::Relative(binary.to_path_buf()));
    };
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| ElfError::NotUtf8(binary.to_path_buf()))
}

fn dir_of(p: &str) -> String {
    match p.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => p[..i].to_string(),
    }
}

fn read_all(p: &Path) -> Result<Vec<u8>, ElfError> {
    fs::read(p).map_err(|source| ElfError::Read {
        path: p.to_path_buf(),
        source,
    })
}

/// Debian multiarch triplet, the 64/32-bit directory suffix and AT_PLATFORM.
fn machine_info(id: Ident) -> (Option<&'static str>, &'static str, &'static str) {
    const EM_386: u16 = 3;
    const EM_ARM: u16 = 40;
    const EM_X86_64: u16 = 62;
    const EM_PPC64: u16 = 21;
    const EM_S390: u16 = 22;
    const EM_AARCH64: u16 = 183;
    const EM_RISCV: u16 = 243;
    match (id.machine, id.class) {
        (EM_X86_64, 2) => (Some("x86_64-linux-gnu"), "lib64", "x86_64"),
        (EM_X86_64, _) => (Some("x86_64-linux-gnux32"), "libx32", "x86_64"),
        (EM_386, _) => (Some("i386-linux-gnu"), "lib32", "i686"),
        (EM_AARCH64, _) => (Some("aarch64-linux-gnu"), "lib64", "aarch64"),
        (EM_ARM, _) => (Some("arm-linux-gnueabihf"), "lib", "v7l"),
        (EM_PPC64, _) if id.data == 1 => (Some("powerpc64le-linux-gnu"), "lib64", "powerpc64le"),
        (EM_S390, 2) => (Some("s390x-linux-gnu"), "lib64", "s390x"),
        (EM_RISCV, 2) => (Some("riscv64-linux-gnu"), "lib64", "riscv64"),
        (_, 2) => (None, "lib64", ""),
        _ => (None, "lib", ""),
    }
}

impl<'a> Search<'a> {
    fn new(root: &'a Path, ident: Ident) -> Result<Self, ElfError> {
        let (triplet, suffix, platform) = machine_info(ident);
        let mut trusted = Vec::new();
        if let Some(t) = triplet {
            trusted.push(format!("/lib/{t}"));
            trusted.push(format!("/usr/lib/{t}"));
        }
        if suffix != "lib" {
            trusted.push(format!("/{suffix}"));
            trusted.push(format!("/usr/{suffix}"));
        }
        trusted.push("/lib".to_string());
        trusted.push("/usr/lib".to_string());
        let multiarch = triplet.filter(|t| {
            ["/lib", "/usr/lib"]
                .iter()
                .any(|d| hostpath::host_path(root, &format!("{d}/{t}")).is_dir())
        });
        let lib = match multiarch {
            Some(t) => format!("lib/{t}"),
            None => suffix.to_string(),
        };
        let mut conf = Vec::new();
        read_ld_so_conf(root, "/etc/ld.so.conf", 0, &mut conf)?;
        let mut system_dirs: Vec<String> = Vec::new();
        for d in conf.into_iter().chain(trusted) {
            if !system_dirs.contains(&d) {
                system_dirs.push(d);
            }
        }
        Ok(Search {
            root,
            ident,
            lib,
            platform,
            system_dirs,
        })
    }

    /// Split a DT_RPATH/DT_RUNPATH value and expand its dynamic string tokens.
    fn expand(&self, list: &str, origin: &str) -> Vec<String> {
        list.split(':')
            .filter(|e| !e.is_empty())
            .filter_map(|e| {
                let mut s = e.to_string();
                for (tok, val) in [
                    ("ORIGIN", origin),
                    ("LIB", self.lib.as_str()),
                    ("PLATFORM", self.platform),
                ] {
                    s = s.replace(&format!("${{{tok}}}"), val);
                    s = s.replace(&format!("${tok}"), val);
                }
                // An unknown token makes ld.so drop the entry.
                (!s.contains('$') && s.starts_with('/')).then_some(s)
            })
            .collect()
    }

    /// The directories to search for a DT_NEEDED of `objs[who]`.
    fn dirs(&self, objs: &[Obj], who: usize) -> Vec<String> {
        let me = &objs[who];
        let mut dirs = Vec::new();
        if me.dynamic.runpath.is_none() {
            let mut cur = Some(who);
            while let Some(k) = cur {
                let o = &objs[k];
                if let Some(rp) = &o.dynamic.rpath {
                    dirs.extend(self.expand(rp, &o.origin));
                }
                cur = o.loader;
            }
            // The program's RPATH applies even when the chain does not reach it
            // (an interpreter's dependencies).
            if let Some(rp) = objs[0].dynamic.rpath.as_ref().filter(|_| who != 0) {
                let mut k = who;
                let mut reaches_main = false;
                while let Some(l) = objs[k].loader {
                    if l == 0 {
                        reaches_main = true;
                        break;
                    }
                    k = l;
                }
                if !reaches_main {
                    dirs.extend(self.expand(rp, &objs[0].origin));
                }
            }
        }
        if let Some(rp) = &me.dynamic.runpath {
            dirs.extend(self.expand(rp, &me.origin));
        }
        let nodeflib = me.dynamic.flags_1 & DF_1_NODEFLIB != 0;
        if nodeflib {
            // The ld.so.conf directories still apply (through the cache); only
            // the built-in trusted ones are skipped.
            let (t, s, _) = machine_info(self.ident);
            let builtin = |d: &String| {
                d == "/lib"
                    || d == "/usr/lib"
                    || *d == format!("/{s}")
                    || *d == format!("/usr/{s}")
                    || t.is_some_and(|t| *d == format!("/lib/{t}") || *d == format!("/usr/lib/{t}"))
            };
            dirs.extend(self.system_dirs.iter().filter(|d| !builtin(d)).cloned());
        } else {
            dirs.extend(self.system_dirs.iter().cloned());
        }
        dirs
    }

    /// Find `name` for `objs[who]`: the path inside the root, its walk and bytes.
    #[allow(clippy::type_complexity)]
    fn find(
        &self,
        name: &str,
        objs: &[Obj],
        who: usize,
    ) -> Result<Option<(String, hostpath::Walk, Vec<u8>)>, ElfError> {
        let cands: Vec<String> = if name.contains('/') {
            if name.starts_with('/') {
                vec![name.to_string()]
            } else {
                vec![format!("{}/{name}", objs[who].origin)]
            }
        } else {
            self.dirs(objs, who)
                .into_iter()
                .map(|d| format!("{}/{name}", d.trim_end_matches('/')))
                .collect()
        };
        for c in cands {
            let Ok(w) = walk(self.root, &c, &abs_in_root) else {
                continue;
            };
            if !w.meta.is_file() || !self.same_kind(&w.host) {
                continue;
            }
            let bytes = read_all(&w.host)?;
            return Ok(Some((c, w, bytes)));
        }
        Ok(None)
    }

    fn same_kind(&self, host: &Path) -> bool {
        let mut head = [0u8; 20];
        let ok = fs::File::open(host).and_then(|mut f| f.read_exact(&mut head));
        ok.is_ok() && elfparse::ident(&head).is_ok_and(|(id, _)| id == self.ident)
    }
}

/// Append the directories of an ld.so.conf file (inside the root) to `out`.
/// A missing file adds nothing.
fn read_ld_so_conf(
    root: &Path,
    path: &str,
    depth: usize,
    out: &mut Vec<String>,
) -> Result<(), ElfError> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(ElfError::IncludeDepth {
            path: path.to_string(),
        });
    }
    let Ok(w) = walk(root, path, &abs_in_root) else {
        return Ok(());
    };
    let Ok(text) = fs::read_to_string(&w.host) else {
        return Ok(());
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("include") => {
                for pat in words {
                    let pat = if pat.starts_with('/') {
                        pat.to_string()
                    } else {
                        format!("{}/{pat}", dir_of(path))
                    };
                    for f in glob::glob_in_root(root, &pat) {
                        read_ld_so_conf(root, &f, depth + 1, out)?;
                    }
                }
            }
            Some("hwcap") => {}
            _ => {
                for d in line.split([' ', '\t', ':', ',']).filter(|d| !d.is_empty()) {
                    // Old "dir=libtype" syntax.
                    let d = d.split('=').next().unwrap_or(d);
                    if d.starts_with('/') {
                        let d = d.trim_end_matches('/');
                        let d = if d.is_empty() { "/" } else { d };
                        out.push(d.to_string());
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ld_so_conf_includes_and_comments() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("etc/ld.so.conf.d")).unwrap();
        fs::write(
            r.join("etc/ld.so.conf"),
            "# c\ninclude ld.so.conf.d/*.conf\n/opt/a:/opt/b # x\nhwcap 1 foo\n",
        )
        .unwrap();
        fs::write(r.join("etc/ld.so.conf.d/2.conf"), "/two\n").unwrap();
        fs::write(
            r.join("etc/ld.so.conf.d/1.conf"),
            "/one/\ninclude /etc/ld.so.conf.d/none*\n",
        )
        .unwrap();
        let mut out = Vec::new();
        read_ld_so_conf(r, "/etc/ld.so.conf", 0, &mut out).unwrap();
        assert_eq!(out, ["/one", "/two", "/opt/a", "/opt/b"]);
        // An include loop is an error, not a stack overflow.
        fs::write(
            r.join("etc/ld.so.conf.d/3.conf"),
            "include /etc/ld.so.conf\n",
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(read_ld_so_conf(r, "/etc/ld.so.conf", 0, &mut out).is_err());
    }

    #[test]
    fn dynamic_string_tokens() {
        let t = tempfile::tempdir().unwrap();
        let id = Ident {
            class: 2,
            data: 1,
            machine: 62,
        };
        let s = Search::new(t.path(), id).unwrap();
        assert_eq!(
            s.expand(
                "$ORIGIN/../lib:${LIB}/x::/p/$PLATFORM:$BAD/y:rel",
                "/opt/bin"
            ),
            ["/opt/bin/../lib", "/p/x86_64"]
        );
        fs::create_dir_all(t.path().join("usr/lib/x86_64-linux-gnu")).unwrap();
        let s = Search::new(t.path(), id).unwrap();
        assert_eq!(s.expand("/$LIB", "/"), ["/lib/x86_64-linux-gnu"]);
    }
}

//! `kiln initrd add --module NAME`: a kernel module with everything modprobe
//! would load with it, and the module indexes the initrd's modprobe needs.
//!
//! A name is looked up like modprobe does: a module name ('-' and '_' alike),
//! else every module with a matching alias (modules.alias, wildcards allowed),
//! else a built-in module (nothing to add). Then, recursively: the module's
//! dependencies (modules.dep), its soft dependencies (`pre:` and `post:` from
//! modules.softdep and from its own `.modinfo` `softdep=` lines; every line,
//! not only the last one kmod keeps) and the firmware it declares (`firmware=`).
//!
//! The indexes (modules.dep, .alias, .softdep, .symbols, their .bin forms, ...)
//! are regenerated for the modules the initrd will hold, old and new, by the
//! host's `depmod -b` on a scratch tree of links to exactly those modules plus
//! the kernel's modules.builtin, modules.builtin.modinfo and filtered
//! modules.order.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::firmware::{self, FirmwareError};
use super::glob;
use super::hostpath::{file_item, merge};
use super::modinfo::{self, ModinfoError, module_name, normalize};
use super::staging::{Content, Staged, StagedKind};

/// Where modules live in the initrd: /lib/modules/VERSION.
pub const GUEST_DIR: &str = "/lib/modules";

/// Index files depmod reads and the initrd keeps as they are on the host.
const COPIED: [&str; 2] = ["modules.builtin", "modules.builtin.modinfo"];

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("no modules for kernel {kernel}: {dir} does not exist")]
    NoKernelDir { kernel: String, dir: PathBuf },
    #[error("kernel version {0:?} is not a plain directory name")]
    BadKernel(String),
    #[error("cannot tell the running kernel: {0}")]
    Uname(io::Error),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}:{line}: {msg}")]
    Syntax {
        file: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("module {name:?} not found in {dir} (no module, alias or built-in of that name)")]
    NotFound { name: String, dir: PathBuf },
    #[error("module path {0:?} must be relative to lib/modules/VERSION, without '..'")]
    BadPath(String),
    #[error("module {path} is in the initrd but not in {dir}; its index entries cannot be made")]
    PresentMissing { path: String, dir: PathBuf },
    #[error(transparent)]
    Modinfo(#[from] ModinfoError),
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    #[error("depmod: {0}")]
    Depmod(String),
}

/// What `--module` adds, with what could not be added.
#[derive(Debug, Clone, Default)]
pub struct ModuleSet {
    /// Module files, firmware, and the regenerated index files.
    pub staged: Vec<Staged>,
    /// The new modules, relative to lib/modules/VERSION, sorted.
    pub modules: Vec<String>,
    /// Firmware that modules declare but the host does not have: (module, name).
    pub missing_firmware: Vec<(String, String)>,
}

/// The modules `names` with their dependencies, soft dependencies and firmware,
/// and index files covering them and `already_present`.
pub fn modules_with_deps(
    modules_dir: &Path,
    kernel: &str,
    names: &[String],
    already_present: &[String],
) -> Result<Vec<Staged>, ModuleError> {
    Ok(resolve(modules_dir, kernel, names, already_present)?.staged)
}

/// The kernel to use when none is given: the running one, provided
/// `modules_dir` has its modules.
pub fn default_kernel(modules_dir: &Path) -> Result<String, ModuleError> {
    let v = fs::read_to_string("/proc/sys/kernel/osrelease").map_err(ModuleError::Uname)?;
    let v = v.trim().to_string();
    kernel_dir(modules_dir, &v)?;
    Ok(v)
}

fn kernel_dir(modules_dir: &Path, kernel: &str) -> Result<PathBuf, ModuleError> {
    if kernel.is_empty() || kernel.contains('/') || kernel == "." || kernel == ".." {
        return Err(ModuleError::BadKernel(kernel.to_string()));
    }
    let dir = modules_dir.join(kernel);
    if !dir.is_dir() {
        return Err(ModuleError::NoKernelDir {
            kernel: kernel.to_string(),
            dir,
        });
    }
    Ok(dir)
}

/// The full answer: see [`ModuleSet`].
pub fn resolve(
    modules_dir: &Path,
    kernel: &str,
    names: &[String],
    already_present: &[String],
) -> Result<ModuleSet, ModuleError> {
    let dir = kernel_dir(modules_dir, kernel)?;
    let idx = Index::load(&dir)?;
    let present: Vec<String> = already_present
        .iter()
        .map(|p| clean_rel(p, kernel))
        .collect::<Result<_, _>>()?;
    for p in &present {
        if !dir.join(p).is_file() {
            return Err(ModuleError::PresentMissing {
                path: p.clone(),
                dir: dir.clone(),
            });
        }
    }

    // Closure over dependencies and soft dependencies.
    let mut todo: Vec<String> = Vec::new();
    for n in names {
        match idx.lookup(n) {
            Lookup::Modules(m) => todo.extend(m),
            Lookup::Builtin => {}
            Lookup::None => {
                return Err(ModuleError::NotFound {
                    name: n.clone(),
                    dir: dir.clone(),
                });
            }
        }
    }
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    let mut fw_wanted: Vec<(String, String)> = Vec::new();
    while let Some(m) = todo.pop() {
        if !chosen.insert(m.clone()) {
            continue;
        }
        let Some(entry) = idx.deps.get(&m) else {
            continue;
        };
        todo.extend(entry.deps.iter().map(|d| module_name(d)));
        let info = modinfo::read(&dir.join(&entry.path))?;
        let mut soft: Vec<String> = idx.softdeps.get(&m).cloned().unwrap_or_default();
        for (k, v) in &info {
            match k.as_str() {
                "softdep" => soft.extend(softdep_names(v)),
                "firmware" => fw_wanted.push((m.clone(), v.clone())),
                _ => {}
            }
        }
        for s in soft {
            if let Lookup::Modules(ms) = idx.lookup(&s) {
                todo.extend(ms);
            }
        }
    }

    let mut out = BTreeMap::new();
    let mut new_paths = Vec::new();
    for m in &chosen {
        let Some(entry) = idx.deps.get(m) else {
            continue;
        };
        let host = dir.join(&entry.path);
        let meta = fs::metadata(&host).map_err(|source| ModuleError::Read {
            path: host.clone(),
            source,
        })?;
        let guest = format!("{GUEST_DIR}/{kernel}/{}", entry.path);
        merge(&mut out, vec![file_item(guest, &host, &meta)]);
        new_paths.push(entry.path.clone());
    }

    // Firmware the modules ask for, from the firmware directory next to the
    // modules directory.
    let mut missing_firmware = Vec::new();
    if !fw_wanted.is_empty() {
        let fw_dir = modules_dir
            .parent()
            .map_or_else(|| PathBuf::from("/lib/firmware"), |p| p.join("firmware"));
        let names: Vec<String> = fw_wanted.iter().map(|(_, f)| f.clone()).collect();
        let set = firmware::firmware_in(&fw_dir, &names)?;
        merge(&mut out, set.staged);
        for (m, f) in fw_wanted {
            if set.missing.contains(&f) && !missing_firmware.contains(&(m.clone(), f.clone())) {
                missing_firmware.push((m, f));
            }
        }
    }

    let mut all: Vec<String> = present.clone();
    all.extend(new_paths.iter().cloned());
    all.sort();
    all.dedup();
    for (name, bytes) in regenerate_indexes(&dir, kernel, &all)? {
        let item = Staged {
            path: format!("{GUEST_DIR}/{kernel}/{name}"),
            kind: StagedKind::File(Content::Bytes(bytes)),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        out.insert(item.path.clone(), item);
    }
    new_paths.sort();
    Ok(ModuleSet {
        staged: out.into_values().collect(),
        modules: new_paths,
        missing_firmware,
    })
}

/// A module path relative to lib/modules/VERSION; an absolute one is accepted
/// when it is under /lib/modules/VERSION (old modules.dep files have those).
fn clean_rel(p: &str, kernel: &str) -> Result<String, ModuleError> {
    let bad = || ModuleError::BadPath(p.to_string());
    let rel = if p.starts_with('/') {
        ["/lib/modules/", "/usr/lib/modules/"]
            .iter()
            .find_map(|pre| p.strip_prefix(pre)?.strip_prefix(kernel)?.strip_prefix('/'))
            .ok_or_else(bad)?
    } else {
        p
    };
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(bad());
    }
    Ok(parts.join("/"))
}

/// The module names of a softdep value: "pre: a b post: c" (the markers dropped).
fn softdep_names(v: &str) -> Vec<String> {
    v.split_whitespace()
        .filter(|w| *w != "pre:" && *w != "post:")
        .map(str::to_string)
        .collect()
}

/// Alias patterns compare with '-' as '_', except inside `[...]` classes.
fn alias_normalize(a: &str) -> String {
    let mut out = String::with_capacity(a.len());
    let mut in_class = false;
    for c in a.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

struct DepEntry {
    path: String,
    deps: Vec<String>,
}

enum Lookup {
    Modules(Vec<String>),
    Builtin,
    None,
}

/// The host's text indexes for one kernel.
struct Index {
    deps: BTreeMap<String, DepEntry>,
    aliases: Vec<(String, String)>,
    softdeps: BTreeMap<String, Vec<String>>,
    builtin: BTreeSet<String>,
    builtin_aliases: Vec<(String, String)>,
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, ModuleError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModuleError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Index {
    fn load(dir: &Path) -> Result<Self, ModuleError> {
        let kernel = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dep_file = dir.join("modules.dep");
        let dep_text = read_opt(&dep_file)?.ok_or_else(|| ModuleError::Read {
            path: dep_file.clone(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        let mut deps = BTreeMap::new();
        for (i, line) in String::from_utf8_lossy(&dep_text).lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |msg: &str| ModuleError::Syntax {
                file: dep_file.clone(),
                line: i + 1,
                msg: msg.to_string(),
            };
            let (m, rest) = line.split_once(':').ok_or_else(|| syntax("no ':'"))?;
            let path = clean_rel(m.trim(), &kernel).map_err(|_| syntax("bad module path"))?;
            let dl = rest
                .split_whitespace()
                .map(|d| clean_rel(d, &kernel).map_err(|_| syntax("bad dependency path")))
                .collect::<Result<Vec<_>, _>>()?;
            deps.entry(module_name(&path))
                .or_insert(DepEntry { path, deps: dl });
        }

        let mut aliases = Vec::new();
        if let Some(t) = read_opt(&dir.join("modules.alias"))? {
            for line in String::from_utf8_lossy(&t).lines() {
                let mut w = line.split_whitespace();
                if let (Some("alias"), Some(a), Some(m)) = (w.next(), w.next(), w.next()) {
                    aliases.push((alias_normalize(a), normalize(m)));
                }
            }
        }

        let mut softdeps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(t) = read_opt(&dir.join("modules.softdep"))? {
            for line in String::from_utf8_lossy(&t).lines() {
                let mut w = line.split_whitespace();
                if let (Some("softdep"), Some(m)) = (w.next(), w.next()) {
                    let rest: Vec<&str> = w.collect();
                    softdeps
                        .entry(normalize(m))
                        .or_default()
                        .extend(softdep_names(&rest.join(" ")));
                }
            }
        }

        let mut builtin = BTreeSet::new();
        if let Some(t) = read_opt(&dir.join("modules.builtin"))? {
            for line in String::from_utf8_lossy(&t).lines() {
                if !line.trim().is_empty() {
                    builtin.insert(module_name(line.trim()));
                }
            }
        }
        let mut builtin_aliases = Vec::new();
        if let Some(t) = read_opt(&dir.join("modules.builtin.modinfo"))? {
            for (k, v) in modinfo::parse(&t) {
                if let Some((m, "alias")) = k.split_once('.') {
                    builtin_aliases.push((alias_normalize(&v), normalize(m)));
                }
            }
        }
        Ok(Index {
            deps,
            aliases,
            softdeps,
            builtin,
            builtin_aliases,
        })
    }

    fn lookup(&self, name: &str) -> Lookup {
        let n = normalize(name);
        if self.deps.contains_key(&n) {
            return Lookup::Modules(vec![n]);
        }
        let a = alias_normalize(name);
        let mut found: Vec<String> = Vec::new();
        for (pat, m) in &self.aliases {
            if glob::matches(pat, &a) && self.deps.contains_key(m) && !found.contains(m) {
                found.push(m.clone());
            }
        }
        if !found.is_empty() {
            return Lookup::Modules(found);
        }
        if self.builtin.contains(&n)
            || self
                .builtin_aliases
                .iter()
                .any(|(pat, _)| glob::matches(pat, &a))
        {
            return Lookup::Builtin;
        }
        Lookup::None
    }
}

/// Run depmod on a scratch tree holding exactly `modules` (relative paths) and
/// return the index files it wrote, with the copied builtin files and the
/// filtered modules.order, as (file name, bytes), sorted by name.
fn regenerate_indexes(
    dir: &Path,
    kernel: &str,
    modules: &[String],
) -> Result<Vec<(String, Vec<u8>)>, ModuleError> {
    let base = scratch_base();
    let scratch = tempfile::Builder::new()
        .prefix("kiln-depmod-")
        .tempdir_in(&base)
        .map_err(|source| ModuleError::Read { path: base, source })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModuleError::Read { path, source }
    };
    let kdir = scratch.path().join("lib/modules").join(kernel);
    fs::create_dir_all(&kdir).map_err(io(&kdir))?;
    let conf = scratch.path().join("depmod.d");
    fs::create_dir_all(&conf).map_err(io(&conf))?;
    for m in modules {
        let link = kdir.join(m);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::os::unix::fs::symlink(dir.join(m), &link).map_err(io(&link))?;
    }
    for name in COPIED {
        if let Some(b) = read_opt(&dir.join(name))? {
            let p = kdir.join(name);
            fs::write(&p, b).map_err(io(&p))?;
        }
    }
    let wanted: BTreeSet<String> = modules.iter().map(|m| module_name(m)).collect();
    let mut order = String::new();
    if let Some(b) = read_opt(&dir.join("modules.order"))? {
        for line in String::from_utf8_lossy(&b).lines() {
            if wanted.contains(&module_name(line.trim())) {
                order.push_str(line);
                order.push('\n');
            }
        }
    }
    let p = kdir.join("modules.order");
    fs::write(&p, &order).map_err(io(&p))?;

    let depmod = find_depmod().ok_or_else(|| {
        ModuleError::Depmod("not found in PATH, /usr/sbin or /sbin (install kmod)".into())
    })?;
    let res = Command::new(&depmod)
        .arg("-C")
        .arg(&conf)
        .arg("-b")
        .arg(scratch.path())
        .arg(kernel)
        .output()
        .map_err(|e| ModuleError::Depmod(format!("{}: {e}", depmod.display())))?;
    if !res.status.success() {
        return Err(ModuleError::Depmod(format!(
            "{} exited with {}: {}",
            depmod.display(),
            res.status,
            String::from_utf8_lossy(&res.stderr).trim()
        )));
    }
    let mut files = Vec::new();
    let rd = fs::read_dir(&kdir).map_err(io(&kdir))?;
    for e in rd {
        let e = e.map_err(io(&kdir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("modules.") && e.file_type().map_err(io(&kdir))?.is_file() {
            let b = fs::read(e.path()).map_err(io(&e.path()))?;
            files.push((name, b));
        }
    }
    files.sort();
    Ok(files)
}

/// Where the scratch tree goes: TMPDIR when the user chose one, else a memory
/// filesystem, where creating a few thousand links and directories costs next to
/// nothing (on ext4 it took a fifth of `kiln initrd add`).
fn scratch_base() -> PathBuf {
    if std::env::var_os("TMPDIR").is_none() {
        let shm = Path::new("/dev/shm");
        let writable = std::ffi::CString::new("/dev/shm")
            // SAFETY: `c` is a NUL-terminated path that lives through the call.
            .map(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0)
            .unwrap_or(false);
        if shm.is_dir() && writable {
            return shm.to_path_buf();
        }
    }
    std::env::temp_dir()
}

fn find_depmod() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("depmod"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_names_and_aliases() {
        assert_eq!(clean_rel("kernel//a/./b.ko", "v").unwrap(), "kernel/a/b.ko");
        assert_eq!(
            clean_rel("/lib/modules/v/kernel/a.ko", "v").unwrap(),
            "kernel/a.ko"
        );
        assert!(clean_rel("/etc/x.ko", "v").is_err());
        assert!(clean_rel("kernel/../../x.ko", "v").is_err());
        assert_eq!(alias_normalize("crypto-crc32c"), "crypto_crc32c");
        assert_eq!(alias_normalize("pci:v[0-9]*-x"), "pci:v[0-9]*_x");
        assert_eq!(softdep_names("pre: a b post: c"), ["a", "b", "c"]);
    }

    #[test]
    fn missing_kernel_dir_is_named() {
        let t = tempfile::tempdir().unwrap();
        let e = resolve(t.path(), "9.9.9", &["x".into()], &[]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&t.path().join("9.9.9").display().to_string()),
            "{msg}"
        );
        assert!(resolve(t.path(), "../etc", &[], &[]).is_err());
    }
}

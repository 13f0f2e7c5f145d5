//! `kiln initrd add`: gather files, programs with their libraries, kernel modules
//! with their dependencies, firmware and package payloads, then repack once.

use std::path::{Path, PathBuf};

use super::repack::{Edits, RepackOptions, repack_into};
use std::collections::HashSet;

use super::{InitrdError, Staged, StagedKind, list, read_initrd};
use crate::format::cpio::FileType;

/// What to add. Paths on the host; `sysroot` is where programs and firmware are
/// looked up ("/" normally).
#[derive(Debug, Clone, Default)]
pub struct AddRequest {
    /// `HOST:GUEST` specs.
    pub files: Vec<String>,
    pub binaries: Vec<PathBuf>,
    pub packages: Vec<PathBuf>,
    pub modules: Vec<String>,
    pub firmware: Vec<String>,
    pub modules_dir: PathBuf,
    /// None: the single kernel whose modules the initrd holds, else the running one.
    pub kernel_version: Option<String>,
    pub sysroot: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    #[error("--file {0}")]
    File(#[from] super::files::FileError),
    #[error("--binary {path}: {source}")]
    Binary {
        path: PathBuf,
        source: super::elf::ElfError,
    },
    #[error(transparent)]
    Package(#[from] super::package::PackageError),
    #[error("--module: {0}")]
    Module(#[from] super::modules::ModuleError),
    #[error("--firmware: {0}")]
    Firmware(#[from] super::firmware::FirmwareError),
    #[error("the initrd holds modules for several kernels ({0}); choose one with --kernel-version")]
    WhichKernel(String),
}

/// Warnings worth showing: firmware that modules want but the host lacks, notes
/// from package payloads.
#[derive(Debug, Default)]
pub struct AddReport {
    pub added: usize,
    pub warnings: Vec<String>,
}

/// Read `input`, add what `req` names, write `output` (only when complete).
pub fn add(
    input: &Path,
    output: &Path,
    req: &AddRequest,
    opts: &RepackOptions,
) -> Result<AddReport, AddError> {
    let initrd = read_initrd(input)?;
    let entries: Vec<(String, FileType)> = list(&initrd)
        .segments
        .into_iter()
        .flat_map(|s| s.entries.into_iter())
        .map(|e| {
            let p = e.path.trim_start_matches("./").trim_start_matches('/');
            (p.to_string(), e.file_type)
        })
        .collect();
    let paths: Vec<String> = entries.iter().map(|(p, _)| p.clone()).collect();
    let real_dirs: HashSet<String> = entries
        .iter()
        .filter(|(_, t)| *t == FileType::Dir)
        .map(|(p, _)| format!("/{p}"))
        .collect();
    let mut report = AddReport::default();
    let mut staged: Vec<Staged> = Vec::new();
    for spec in &req.files {
        staged.extend(super::files::host_file(spec)?);
    }
    for binary in &req.binaries {
        staged.extend(
            super::elf::binary_with_deps(&req.sysroot, binary).map_err(|source| {
                AddError::Binary {
                    path: binary.clone(),
                    source,
                }
            })?,
        );
    }
    for package in &req.packages {
        let payload = super::package::package_contents(package, 4 << 30)?;
        report.warnings.extend(payload.notes);
        staged.extend(payload.items);
    }
    if !req.modules.is_empty() {
        let kernel = match &req.kernel_version {
            Some(v) => v.clone(),
            None => kernel_in_initrd(&paths)?
                .map(Ok)
                .unwrap_or_else(|| super::modules::default_kernel(&req.modules_dir))?,
        };
        let present = modules_present(&paths, &kernel);
        let set = super::modules::resolve(&req.modules_dir, &kernel, &req.modules, &present)?;
        report.warnings.extend(
            set.missing_firmware.iter().map(|(m, f)| {
                format!("module {m} wants firmware {f}, which the host does not have")
            }),
        );
        staged.extend(set.staged);
    }
    if !req.firmware.is_empty() {
        staged.extend(super::firmware::firmware(&req.sysroot, &req.firmware)?);
    }
    let staged = keep_real_directories(staged, &real_dirs);
    report.added = staged.len();
    let edits = Edits {
        remove: Vec::new(),
        add: staged,
    };
    super::pack::write_output(output, |sink| repack_into(&initrd, &edits, opts, sink))?;
    Ok(report)
}

/// The host's merged-/usr links (/lib -> usr/lib) must not replace real
/// directories of the initrd. Where the initrd has a real directory S and the
/// host a link S -> T, drop the link and move what was staged under T to S, so
/// every path the host reached through S still resolves inside the initrd.
fn keep_real_directories(staged: Vec<Staged>, real_dirs: &HashSet<String>) -> Vec<Staged> {
    let mut moves: Vec<(String, String)> = Vec::new();
    let mut kept = Vec::with_capacity(staged.len());
    for item in staged {
        if let StagedKind::Symlink(target) = &item.kind
            && real_dirs.contains(&item.path)
            && let Some(resolved) = resolve_link(&item.path, target)
        {
            moves.push((resolved, item.path.clone()));
            continue;
        }
        kept.push(item);
    }
    for item in &mut kept {
        for (from, to) in &moves {
            if item.path == *from {
                item.path = to.clone();
            } else if let Some(rest) = item.path.strip_prefix(&format!("{from}/")) {
                item.path = format!("{to}/{rest}");
            }
        }
    }
    kept
}

/// Absolute, normalized target of the link at `link` pointing to `target`.
fn resolve_link(link: &str, target: &str) -> Option<String> {
    let joined = if target.starts_with('/') {
        target.to_string()
    } else {
        let parent = link.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        format!("{parent}/{target}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| format!("/{}", parts.join("/")))
}

/// Where kernel modules live in an initrd (merged-/usr or not).
fn module_roots(path: &str) -> Option<&str> {
    path.strip_prefix("lib/modules/")
        .or_else(|| path.strip_prefix("usr/lib/modules/"))
}

/// The one kernel version with a modules directory in the initrd, if any.
fn kernel_in_initrd(paths: &[String]) -> Result<Option<String>, AddError> {
    let mut versions: Vec<&str> = paths
        .iter()
        .filter_map(|p| module_roots(p))
        .filter_map(|rest| rest.split('/').next())
        .filter(|v| !v.is_empty())
        .collect();
    versions.sort_unstable();
    versions.dedup();
    match versions.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.to_string())),
        many => Err(AddError::WhichKernel(many.join(", "))),
    }
}

/// Module files already in the initrd, relative to lib/modules/KERNEL.
fn modules_present(paths: &[String], kernel: &str) -> Vec<String> {
    let ext = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];
    paths
        .iter()
        .filter_map(|p| module_roots(p))
        .filter_map(|rest| rest.strip_prefix(kernel)?.strip_prefix('/'))
        .filter(|rel| ext.iter().any(|e| rel.ends_with(e)))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn item(path: &str, kind: StagedKind) -> Staged {
        Staged {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn host_merged_usr_links_yield_to_real_initrd_directories() {
        let staged = vec![
            item("/lib", StagedKind::Symlink("usr/lib".into())),
            item("/bin", StagedKind::Symlink("usr/bin".into())),
            item("/usr/lib/x86_64-linux-gnu/libc.so.6", StagedKind::Dir),
            item("/usr/bin/ls", StagedKind::Dir),
            item("/lib64", StagedKind::Symlink("usr/lib64".into())),
        ];
        let real: HashSet<String> = ["/lib".to_string()].into();
        let out: Vec<String> = keep_real_directories(staged, &real)
            .into_iter()
            .map(|s| s.path)
            .collect();
        assert_eq!(
            out,
            [
                "/bin",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/bin/ls",
                "/lib64"
            ]
        );
        assert_eq!(resolve_link("/a/b", "../c/./d").as_deref(), Some("/c/d"));
        assert_eq!(
            resolve_link("/lib64", "/usr/lib64").as_deref(),
            Some("/usr/lib64")
        );
    }

    #[test]
    fn kernel_and_modules_are_found_in_both_layouts() {
        let p = paths(&[
            "usr/lib/modules/6.1.0-9-amd64/kernel/fs/ext4/ext4.ko",
            "usr/lib/modules/6.1.0-9-amd64/modules.dep",
            "lib/modules/6.1.0-9-amd64/kernel/crypto/crc32c.ko.xz",
            "etc/modprobe.d/x.conf",
        ]);
        assert_eq!(
            kernel_in_initrd(&p).unwrap().as_deref(),
            Some("6.1.0-9-amd64")
        );
        assert_eq!(
            modules_present(&p, "6.1.0-9-amd64"),
            paths(&["kernel/fs/ext4/ext4.ko", "kernel/crypto/crc32c.ko.xz"])
        );
        let two = paths(&["lib/modules/a/x.ko", "lib/modules/b/y.ko"]);
        assert!(kernel_in_initrd(&two).is_err());
        assert_eq!(kernel_in_initrd(&paths(&["bin/sh"])).unwrap(), None);
    }
}

//! Running element scripts by hand, busybox trees and tree snapshots.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::element::{Hooks, ResolveOptions, SearchPath, resolve, shipped_elements_dir};

/// PATH for scripts: the host's, so bash finds the build tools.
pub fn host_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
}

pub fn element_script(element: &str, rel: &str) -> PathBuf {
    let path = shipped_elements_dir().join(element).join(rel);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// Run a host-phase script with bash, a clean environment plus `env`, after
/// sourcing the element's environment.d files like the build does.
pub fn run_host(element: &str, rel: &str, env: &[(&str, &str)]) -> Output {
    run_host_wrapped(&[], element, rel, env)
}

/// [`run_host`] under a wrapper command such as `unshare --net`.
pub fn run_host_wrapped(
    wrapper: &[&str],
    element: &str,
    rel: &str,
    env: &[(&str, &str)],
) -> Output {
    let script = element_script(element, rel);
    let env_dir = shipped_elements_dir().join(element).join("environment.d");
    let mut sources = String::new();
    if env_dir.is_dir() {
        let mut files: Vec<_> = fs::read_dir(&env_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            sources.push_str(&format!(". '{}'\n", f.display()));
        }
    }
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg("bash");
            c
        }
        None => Command::new("bash"),
    };
    cmd.arg("-c")
        .arg(format!(
            "set -a\n{sources}set +a\nexec '{}'",
            script.display()
        ))
        .env_clear()
        .env("PATH", host_path())
        .env("HOME", "/nonexistent-home")
        .env("KILN", env!("CARGO_BIN_EXE_kiln"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

/// The script failed and said something containing every needle.
#[track_caller]
pub fn assert_fails_with(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure\n{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in needles {
        assert!(
            err.contains(needle),
            "stderr lacks {needle:?}\n{}",
            text(out)
        );
    }
}

pub fn which(program: &str) -> PathBuf {
    for dir in host_path().split(':') {
        let candidate = Path::new(dir).join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{program} is not installed");
}

#[track_caller]
pub fn sh(script: &str) -> Output {
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert_ok(&out);
    out
}

pub fn put(root: &Path, rel: &str, content: &str, mode: u32) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A root of busybox-static with its applets linked, /etc/passwd and
/// /etc/group, like busybox-minimal makes (without kernel and initramfs).
pub fn busybox_root(root: &Path) {
    let busybox = which("busybox");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "home",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(&busybox).arg("--list-full").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet == "bin/busybox" {
            continue;
        }
        let link = root.join(applet);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        let up = "../".repeat(applet.matches('/').count());
        let _ = std::os::unix::fs::symlink(format!("{up}bin/busybox"), link);
    }
    put(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    put(
        root,
        "etc/group",
        "root:x:0:\ndisk:x:6:\nwheel:x:10:\nnogroup:x:65534:\n",
        0o644,
    );
    put(root, "etc/shadow", "root::0:0:99999:7:::\n", 0o640);
    // The build mounts /dev in the chroot; these tests run without mounts.
    fs::create_dir_all(root.join("dev")).unwrap();
    sh(&format!(
        "mknod -m 0666 '{d}/null' c 1 3 && mknod -m 0666 '{d}/zero' c 1 5 && mknod -m 0666 '{d}/urandom' c 1 9",
        d = root.join("dev").display()
    ));
}

/// Assemble the hooks of the named elements (and their dependencies) from the
/// shipped folder plus `extra` (test elements); returns the hooks folder.
pub fn assemble_hooks(scratch: &Path, extra: Option<&Path>, elements: &[&str]) -> PathBuf {
    let dirs: Vec<PathBuf> = extra.into_iter().map(Path::to_path_buf).collect();
    let catalog = SearchPath::new(&dirs, None, Some(shipped_elements_dir()))
        .scan()
        .unwrap();
    let request: Vec<String> = elements.iter().map(|s| s.to_string()).collect();
    let resolved = resolve(
        &catalog,
        &request,
        &ResolveOptions::for_build(true, "amd64"),
    )
    .unwrap();
    let hooks_dir = scratch.join("hooks");
    Hooks::assemble(&resolved, &hooks_dir).unwrap();
    hooks_dir
}

/// Copy the hooks into the root (cp -a keeps links and modes).
pub fn install_hooks(hooks: &Path, root: &Path) {
    let dest = root.join("tmp/in_target.d");
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(root.join("tmp")).unwrap();
    sh(&format!("cp -a '{}' '{}'", hooks.display(), dest.display()));
}

/// Run a chroot-phase script of the hooks inside ROOT with /bin/sh, after
/// sourcing the hooks' environment.d, with `env` and the helpers on PATH.
pub fn run_chroot(root: &Path, phase_script: &str, env: &[(&str, &str)]) -> Output {
    let script = format!(
        "for f in /tmp/in_target.d/environment.d/*; do [ -f \"$f\" ] && . \"$f\"; done; \
         exec /tmp/in_target.d/{phase_script}"
    );
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(["/bin/sh", "-c", &script])
        .env_clear()
        .env(
            "PATH",
            "/tmp/in_target.d/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// What a tree holds, per relative path: type, mode, owner, link target,
/// device number, content digest, extended attributes, and which paths share
/// an inode.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub owner: (u32, u32),
    pub target: Option<PathBuf>,
    pub rdev: u64,
    pub content: Option<Vec<u8>>,
    pub xattrs: Vec<(std::ffi::OsString, Vec<u8>)>,
    /// Index of the first path (in sorted order) with the same inode.
    pub link_group: usize,
}

pub fn snapshot(root: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Entry> {
    let mut paths = Vec::new();
    collect(root, Path::new(""), skip, &mut paths);
    paths.sort();
    let mut inodes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (index, rel) in paths.into_iter().enumerate() {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_symlink() {
            "symlink"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let link_group = if kind == "file" {
            *inodes.entry((meta.dev(), meta.ino())).or_insert(index)
        } else {
            index
        };
        let content = (kind == "file").then(|| {
            let mut data = Vec::new();
            fs::File::open(&path)
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            data
        });
        out.insert(
            rel.clone(),
            Entry {
                kind,
                mode: meta.mode() & 0o7777,
                owner: (meta.uid(), meta.gid()),
                target: ft.is_symlink().then(|| fs::read_link(&path).unwrap()),
                rdev: meta.rdev(),
                content,
                xattrs: kiln::fs::xattr::list(&path).unwrap(),
                link_group,
            },
        );
    }
    out
}

fn collect(root: &Path, rel: &Path, skip: &[&str], out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let child = rel.join(entry.file_name());
        if skip.iter().any(|s| Path::new(s) == child) {
            continue;
        }
        out.push(child.clone());
        if entry.file_type().unwrap().is_dir() {
            collect(root, &child, skip, out);
        }
    }
}

/// Assert two snapshots are equal, naming the first differing path.
#[track_caller]
pub fn assert_same_tree(want: &BTreeMap<PathBuf, Entry>, got: &BTreeMap<PathBuf, Entry>) {
    for (path, entry) in want {
        match got.get(path) {
            None => panic!("{} is missing from the result", path.display()),
            Some(g) => assert_eq!(entry, g, "{} differs", path.display()),
        }
    }
    for path in got.keys() {
        assert!(
            want.contains_key(path),
            "{} is extra in the result",
            path.display()
        );
    }
}

/// A source tree with what root filesystems hold and copies get wrong:
/// owners, set-id and sticky bits, a relative symlink owned by a user, a hard
/// link, device nodes, a FIFO, extended attributes in several namespaces
/// (file capabilities among them), names with spaces.
pub fn tricky_tree(root: &Path) {
    put(root, "etc/hostname", "tricky\n", 0o644);
    put(root, "etc/shadow", "root:*:1::::::\n", 0o640);
    put(root, "usr/bin/su", "#!/bin/sh\n", 0o4755);
    put(root, "usr/bin/wall", "#!/bin/sh\n", 0o2755);
    put(root, "usr/bin/ping", "#!/bin/sh\n", 0o755);
    put(root, "home/user/notes with space.txt", "hello\n", 0o600);
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::hard_link(root.join("usr/bin/su"), root.join("usr/bin/su-link")).unwrap();
    std::os::unix::fs::symlink("../usr/bin/ping", root.join("home/user/ping")).unwrap();
    sh(&format!(
        "cd '{r}'
         chown 0:42 etc/shadow
         chown -R 1000:1000 home/user
         chown -h 1000:100 home/user/ping
         chmod 4755 usr/bin/su
         chown 0:5 usr/bin/wall && chmod 2755 usr/bin/wall
         mknod -m 0666 dev/null c 1 3
         mknod -m 0660 dev/vda b 254 0
         mkfifo -m 0600 dev/initctl",
        r = root.display()
    ));
    let set = |rel: &str, name: &str, value: &[u8]| {
        kiln::fs::xattr::set(&root.join(rel), OsStr::new(name), value).unwrap()
    };
    // cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2).
    set(
        "usr/bin/ping",
        "security.capability",
        &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    set("etc/hostname", "user.origin", b"kiln test");
    set(
        "home/user",
        "user.binary",
        &[0, 1, 2, 255, 254, b'"', b'\n'],
    );
    set("etc/shadow", "trusted.kiln", b"x");
}

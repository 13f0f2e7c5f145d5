//! Guest roots for the customize tests: a busybox-static tree made in a
//! moment, and a Debian minbase tree from mmdebstrap (made once, cached).

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("start command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busybox-static root with passwd/shadow, rc.d and a home for `alice`.
pub fn busybox_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for d in [
        "bin",
        "sbin",
        "etc/rc.d",
        "root",
        "home/alice",
        "tmp",
        "var/log",
        "usr/bin",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "mkdir", "cat", "echo", "mv", "touch", "ls", "false", "true", "id",
    ] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        r.join("etc/shadow"),
        "root:*:19000:0:99999:7:::\nalice:!:19000:0:99999:7:::\n",
    )
    .unwrap();
    std::fs::write(r.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    dir
}

const CACHE: &str = "/var/tmp/kiln-test-cache/debian-bookworm-minbase";

/// A private copy of a cached Debian bookworm minbase root.
pub fn debian_root() -> tempfile::TempDir {
    let cache = Path::new(CACHE);
    if !cache.exists() {
        let tmp = PathBuf::from(format!("{CACHE}.tmp{}", std::process::id()));
        std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
        run(Command::new("mmdebstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&tmp));
        // Another test process may have won the race; either copy is fine.
        if std::fs::rename(&tmp, cache).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{CACHE}/."))
        .arg(dir.path()));
    dir
}

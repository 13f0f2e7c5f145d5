//! The Debian VM image of recipes/debian-vm.yaml, built once and shared by the
//! test binaries that need a real Debian guest.
//!
//! The image is cached under `<target>/kiln-test-fixtures/<profile>/` in a
//! folder named after a sha256 of everything that decides its content: the
//! kiln binary, the recipe and every file under elements/. Any change to kiln therefore builds
//! it again (the build stays tested on every change); an unchanged kiln reuses
//! it. An exclusive flock(2) on one lock file makes concurrent test binaries
//! (and the parallel tests of one binary) wait for a single build instead of
//! building twice. Folders of other keys are stale and removed under the lock.
//!
//! Callers must not change the returned image: copy it, or boot it with qemu's
//! snapshot mode.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const RECIPE: &str = "recipes/debian-vm.yaml";
const IMAGE_NAME: &str = "debian-vm.qcow2";
const PREFIX: &str = "debian-vm-";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<target>/kiln-test-fixtures/<profile>`: `<target>` is two levels above the
/// kiln binary (`<target>/debug/kiln`, following CARGO_TARGET_DIR wherever it
/// points). One folder per profile, so debug and release runs (CI tests with
/// --release) each keep their image instead of evicting each other's.
fn fixtures_dir() -> PathBuf {
    let profile_dir = Path::new(KILN)
        .parent()
        .expect("the kiln binary lives in <target>/<profile>/");
    let profile = profile_dir.file_name().expect("a profile folder");
    profile_dir
        .parent()
        .expect("the kiln binary lives in <target>/<profile>/")
        .join("kiln-test-fixtures")
        .join(profile)
}

/// The path of the cached Debian VM qcow2, built first if kiln, the recipe or
/// an element changed since the last build.
pub fn debian_vm_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(build_or_reuse).clone()
}

fn build_or_reuse() -> PathBuf {
    let dir = fixtures_dir();
    fs::create_dir_all(&dir).unwrap();
    let lock = File::create(dir.join("debian-vm.lock")).unwrap();
    // Released when `lock` is dropped (or the process dies).
    lock.lock().expect("flock the Debian fixture");
    let key = content_key();
    let keyed = dir.join(format!("{PREFIX}{key}"));
    remove_stale(&dir, &keyed);
    let image = keyed.join(IMAGE_NAME);
    if image.is_file() {
        return image;
    }
    // Built beside, renamed into place when complete: an interrupted build
    // never looks like a cached image.
    let partial = dir.join(format!("partial-{PREFIX}{key}"));
    let _ = fs::remove_dir_all(&partial);
    let out = Command::new(KILN)
        .args(["image", "build"])
        .arg(repo().join(RECIPE))
        .arg("-o")
        .arg(&partial)
        .output()
        .expect("run kiln image build");
    assert!(
        out.status.success(),
        "kiln image build {RECIPE} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        partial.join(IMAGE_NAME).is_file(),
        "kiln image build {RECIPE} wrote no {IMAGE_NAME}"
    );
    fs::rename(&partial, &keyed).unwrap();
    image
}

/// Every `debian-vm-*` folder but `keep`, and any partial build left by an
/// interrupted run.
fn remove_stale(dir: &Path, keep: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let ours = name.starts_with(PREFIX) || name.starts_with(&format!("partial-{PREFIX}"));
        if ours && path.is_dir() && path != keep {
            fs::remove_dir_all(&path).unwrap();
        }
    }
}

/// sha256 over the kiln binary, the recipe and each file under elements/
/// (relative path, mode and content, in sorted order).
fn content_key() -> String {
    let mut hasher = Sha256::new();
    for (label, path) in [
        ("kiln", PathBuf::from(KILN)),
        ("recipe", repo().join(RECIPE)),
    ] {
        hasher.update(label.as_bytes());
        hash_file(&mut hasher, &path);
    }
    let elements = repo().join("elements");
    let mut files = Vec::new();
    list_files(&elements, &mut files);
    files.sort();
    for file in files {
        let rel = file.strip_prefix(&elements).unwrap();
        hasher.update(rel.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        let meta = fs::symlink_metadata(&file).unwrap();
        // Modes matter: an element script that loses its x bit stops running.
        hasher.update(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()).to_le_bytes());
        match meta.file_type().is_symlink() {
            true => hasher.update(fs::read_link(&file).unwrap().as_os_str().as_encoded_bytes()),
            false => hash_file(&mut hasher, &file),
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hash_file(hasher: &mut Sha256, path: &Path) {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    // The length ends each file's bytes, so two files cannot run together.
    hasher.update(len.to_le_bytes());
}

/// Files and symlinks under `dir`, recursively (symlinks are not followed).
fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            list_files(&entry.path(), out);
        } else {
            out.push(entry.path());
        }
    }
}

//! `--binary`: the resolved set equals what ldd (the real ld.so) loads, the
//! parsed dynamic entries equal readelf's, and the staged tree runs in a chroot.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::initrd::elf::{ElfError, binary_with_deps, resolve};
use kiln::initrd::elfparse::Elf;
use kiln::initrd::staging::StagedKind;

use crate::util::{canon, host_files, materialize, run};

/// The real programs the brief names; all come from .ci/packages.
const PROGRAMS: [&str; 3] = ["/bin/bash", "/usr/bin/ssh", "/usr/bin/qemu-img"];

/// What ldd says `bin` loads (canonical host paths), plus `bin` itself.
/// Panics if ldd reports a missing library.
fn ldd_set(bin: &Path) -> BTreeSet<PathBuf> {
    let (ok, out, err) = run(Command::new("ldd").arg(bin));
    assert!(ok, "ldd {}: {err}", bin.display());
    let mut set = BTreeSet::from([canon(bin)]);
    for line in out.lines() {
        assert!(!line.contains("not found"), "ldd {}: {line}", bin.display());
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            set.insert(canon(Path::new(p)));
        }
    }
    set
}

fn our_set(root: &Path, bin: &Path) -> BTreeSet<PathBuf> {
    let items = binary_with_deps(root, bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    host_files(&items).iter().map(|p| canon(p)).collect()
}

#[test]
fn real_programs_resolve_like_ldd() {
    for prog in PROGRAMS {
        let bin = Path::new(prog);
        assert!(bin.exists(), "{prog} missing: install .ci/packages");
        let expected = ldd_set(bin);
        assert!(expected.len() > 2, "{prog}: ldd found almost nothing");
        assert_eq!(our_set(Path::new("/"), bin), expected, "{prog}");
    }
}

/// Our ELF reader against `readelf -dW` / `-lW` on every object of every program.
#[test]
fn dynamic_entries_match_readelf() {
    let mut seen = BTreeSet::new();
    for prog in PROGRAMS {
        for f in ldd_set(Path::new(prog)) {
            if !seen.insert(f.clone()) {
                continue;
            }
            let bytes = fs::read(&f).unwrap();
            let elf = Elf::parse(&bytes).unwrap();
            let d = elf.dynamic().unwrap().unwrap_or_default();
            let (ok, out, err) = run(Command::new("readelf").arg("-dlW").arg(&f));
            assert!(ok, "readelf {}: {err}", f.display());
            let bracket = |l: &str| {
                let a = l.find('[').unwrap() + 1;
                let b = l.rfind(']').unwrap();
                l[a..b].to_string()
            };
            let mut needed = Vec::new();
            let (mut soname, mut rpath, mut runpath, mut interp) = (None, None, None, None);
            for l in out.lines() {
                if l.contains("(NEEDED)") {
                    needed.push(bracket(l));
                } else if l.contains("(SONAME)") {
                    soname = Some(bracket(l));
                } else if l.contains("(RPATH)") {
                    rpath = Some(bracket(l));
                } else if l.contains("(RUNPATH)") {
                    runpath = Some(bracket(l));
                } else if l.contains("Requesting program interpreter") {
                    interp = Some(
                        l.split(": ")
                            .nth(1)
                            .unwrap()
                            .trim_end_matches(']')
                            .to_string(),
                    );
                }
            }
            let f = f.display();
            assert_eq!(d.needed, needed, "{f}");
            assert_eq!(d.soname, soname, "{f}");
            assert_eq!(d.rpath, rpath, "{f}");
            assert_eq!(d.runpath, runpath, "{f}");
            assert_eq!(elf.interp().unwrap(), interp, "{f}");
        }
    }
    assert!(seen.len() > 10);
}

/// The staged tree alone is enough to run each program (chroot into it), and
/// the host's symlinks (merged /usr, /lib64 loader link, library version links)
/// are reproduced.
#[test]
fn staged_programs_run_in_a_chroot() {
    for (prog, args) in [
        ("/bin/bash", &["-c", "echo kiln-ok"][..]),
        ("/usr/bin/ssh", &["-V"][..]),
        ("/usr/bin/qemu-img", &["--version"][..]),
    ] {
        let items = binary_with_deps(Path::new("/"), Path::new(prog)).unwrap();
        // Every host symlink on the way is a symlink in the list too.
        for l in resolve(Path::new("/"), Path::new(prog)).unwrap() {
            let mut cur = PathBuf::from("/");
            for c in Path::new(&l.path).components().skip(1) {
                cur.push(c);
                let is_link = fs::symlink_metadata(&cur).unwrap().file_type().is_symlink();
                let staged = items.iter().find(|s| Path::new(&s.path) == cur);
                if is_link {
                    let target = fs::read_link(&cur).unwrap();
                    assert_eq!(
                        staged.map(|s| &s.kind),
                        Some(&StagedKind::Symlink(target.to_string_lossy().into_owned())),
                        "{}",
                        cur.display()
                    );
                    cur = canon(&cur);
                }
            }
        }
        let t = tempfile::tempdir().unwrap();
        materialize(t.path(), &items);
        // ssh insists on /dev/null; an initrd has devtmpfs for that.
        fs::create_dir(t.path().join("dev")).unwrap();
        let (ok, _, err) = run(Command::new("mknod")
            .arg(t.path().join("dev/null"))
            .args(["c", "1", "3"]));
        assert!(ok, "mknod: {err}");
        // ... and on a passwd entry for its user (glibc's built-in "files" NSS).
        fs::create_dir(t.path().join("etc")).unwrap();
        fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n",
        )
        .unwrap();
        let (ok, out, err) = run(Command::new("chroot").arg(t.path()).arg(prog).args(args));
        assert!(ok, "{prog} in chroot: {out}{err}");
        assert!(!(out.clone() + &err).trim().is_empty(), "{prog}: no output");
    }
}

/// A program built here: RPATH through the loader chain, RUNPATH that is not
/// inherited, $ORIGIN, a version symlink, and a wrong-machine library that
/// must be skipped. ldd is the oracle for each variant.
#[test]
fn rpath_runpath_origin_and_wrong_machine() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for sub in ["bin", "lib", "lib2", "bad"] {
        fs::create_dir_all(d.join(sub)).unwrap();
    }
    fs::write(d.join("baz.c"), "int baz(void){return 2;}\n").unwrap();
    fs::write(
        d.join("bar.c"),
        "int baz(void); int bar(void){return baz()+1;}\n",
    )
    .unwrap();
    fs::write(
        d.join("app.c"),
        "#include <stdio.h>\nint bar(void); int main(void){printf(\"%d\\n\", bar()); return 0;}\n",
    )
    .unwrap();
    let gcc = |args: &[&str]| {
        let (ok, out, err) = run(Command::new("gcc").current_dir(d).args(args));
        assert!(ok, "gcc {args:?}: {out}{err}");
    };
    gcc(&[
        "-shared",
        "-fPIC",
        "-Wl,-soname,libbaz.so",
        "-o",
        "lib2/libbaz.so",
        "baz.c",
    ]);
    gcc(&[
        "-shared",
        "-fPIC",
        "-Wl,-soname,libbar.so.1",
        "-o",
        "lib/libbar.so.1.0",
        "bar.c",
        "-Llib2",
        "-lbaz",
    ]);
    std::os::unix::fs::symlink("libbar.so.1.0", d.join("lib/libbar.so.1")).unwrap();
    std::os::unix::fs::symlink("libbar.so.1", d.join("lib/libbar.so")).unwrap();
    // A look-alike libbaz.so for another machine, found first on the path.
    let mut bad = fs::read(d.join("lib2/libbaz.so")).unwrap();
    bad[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    fs::write(d.join("bad/libbaz.so"), bad).unwrap();
    let rp = "-Wl,-rpath,$ORIGIN/../bad:$ORIGIN/../lib:$ORIGIN/../lib2";
    gcc(&[
        "-o",
        "bin/app_rpath",
        "app.c",
        "-Llib",
        "-lbar",
        "-Wl,--disable-new-dtags",
        rp,
    ]);
    gcc(&[
        "-o",
        "bin/app_runpath",
        "app.c",
        "-Llib",
        "-lbar",
        "-Wl,--enable-new-dtags",
        rp,
    ]);

    // DT_RPATH of the program serves libbar's own needs: ldd finds all.
    let app = d.join("bin/app_rpath");
    let ours = our_set(Path::new("/"), &app);
    assert_eq!(ours, ldd_set(&app));
    assert!(ours.contains(&canon(&d.join("lib2/libbaz.so"))));
    assert!(!ours.contains(&canon(&d.join("bad/libbaz.so"))));
    let items = binary_with_deps(Path::new("/"), &app).unwrap();
    let link = format!("{}/lib/libbar.so.1", d.display());
    assert!(
        items
            .iter()
            .any(|s| s.path == link && s.kind == StagedKind::Symlink("libbar.so.1.0".into()))
    );

    // DT_RUNPATH applies only to the program's own needs: libbaz is not found,
    // for ldd and for us alike.
    let app = d.join("bin/app_runpath");
    let (_, out, _) = run(Command::new("ldd").arg(&app));
    assert!(
        out.lines()
            .any(|l| l.contains("libbaz.so") && l.contains("not found")),
        "{out}"
    );
    match binary_with_deps(Path::new("/"), &app) {
        Err(ElfError::NotFound {
            name, needed_by, ..
        }) => {
            assert_eq!(name, "libbaz.so");
            assert!(needed_by.ends_with("libbar.so.1"), "{needed_by}");
        }
        other => panic!("expected libbaz.so not found, got {other:?}"),
    }
}

/// Resolution inside another root: a copy of the program's libraries in a
/// merged-/usr tree; nothing is taken from the host, and the result runs.
#[test]
fn sysroot_resolution_stays_in_the_root() {
    let host = binary_with_deps(Path::new("/"), Path::new("/bin/bash")).unwrap();
    let root = tempfile::tempdir().unwrap();
    materialize(root.path(), &host);
    let items = binary_with_deps(root.path(), Path::new("/bin/bash")).unwrap();
    for f in host_files(&items) {
        assert!(
            f.starts_with(root.path()),
            "{} is outside the root",
            f.display()
        );
    }
    let same: Vec<_> = items
        .iter()
        .map(|s| (&s.path, std::mem::discriminant(&s.kind)))
        .collect();
    let want: Vec<_> = host
        .iter()
        .map(|s| (&s.path, std::mem::discriminant(&s.kind)))
        .collect();
    assert_eq!(same, want);
    // Remove libc from the root: the error names it, the host's libc is not used.
    let libc = items
        .iter()
        .find(|s| s.path.ends_with("/libc.so.6"))
        .expect("libc in the list");
    fs::remove_file(root.path().join(libc.path.trim_start_matches('/'))).unwrap();
    let e = binary_with_deps(root.path(), Path::new("/bin/bash")).unwrap_err();
    assert!(
        matches!(e, ElfError::NotFound { ref name, .. } if name == "libc.so.6"),
        "{e}"
    );
    // A script is not an ELF program.
    let e = binary_with_deps(Path::new("/"), Path::new("/usr/bin/ldd")).unwrap_err();
    assert!(e.to_string().contains("/usr/bin/ldd"), "{e}");
}

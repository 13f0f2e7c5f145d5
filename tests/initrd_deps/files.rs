//! `--file HOST:GUEST`: a tree written back from the staged list is the same as
//! the source (names, types, modes, owners, link targets, contents), per `find`
//! and `diff`.

use std::fs;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::process::Command;

use kiln::initrd::files::{FileError, host_file};
use kiln::initrd::staging::StagedKind;

use crate::util::{materialize, run};

fn listing(dir: &std::path::Path) -> String {
    let (ok, out, err) = run(Command::new("find")
        .arg(dir)
        .args(["-printf", "%P %y %m %U %G %l %s\n"]));
    assert!(ok, "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn directory_tree_is_copied_faithfully() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("a.conf"), "a=1\n").unwrap();
    fs::write(src.join("sub/run.sh"), "#!/bin/sh\n").unwrap();
    fs::write(src.join("sub/deeper/secret"), "x").unwrap();
    fs::set_permissions(src.join("sub/run.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(
        src.join("sub/deeper/secret"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("../a.conf", src.join("sub/link")).unwrap();
    symlink("/nonexistent/abs", src.join("dangling")).unwrap();
    lchown(src.join("sub/deeper/secret"), Some(1234), Some(4321)).unwrap();
    lchown(src.join("sub/link"), Some(99), Some(98)).unwrap();

    let spec = format!("{}:/etc/kiln//conf/", src.display());
    let items = host_file(&spec).unwrap();
    assert_eq!(items[0].path, "/etc/kiln/conf");
    assert_eq!(items[0].kind, StagedKind::Dir);
    let out = t.path().join("out");
    materialize(&out, &items);
    assert_eq!(listing(&out.join("etc/kiln/conf")), listing(&src));
    let (ok, o, e) = run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&src)
        .arg(out.join("etc/kiln/conf")));
    assert!(ok, "{o}{e}");

    // One file, through a symlink given as HOST (followed, like cp).
    symlink(src.join("a.conf"), t.path().join("alink")).unwrap();
    let items = host_file(&format!("{}:/x:y", t.path().join("alink").display())).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].path, "/x:y");
    assert!(matches!(items[0].kind, StagedKind::File(_)));

    assert!(matches!(
        host_file("relative-guest"),
        Err(FileError::Spec { .. })
    ));
    assert!(matches!(
        host_file(&format!("{}:/a/../b", src.display())),
        Err(FileError::Guest { .. })
    ));
}

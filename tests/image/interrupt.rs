//! An interrupted conversion leaves nothing behind: no output, no temp file.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{MIB, Rng, dir_entries};

#[test]
fn sigint_during_convert_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("noise.raw");
    // Incompressible data on one thread: seconds of work, so the signal lands mid-way.
    let mut data = vec![0u8; (96 * MIB) as usize];
    Rng::new(7).fill(&mut data);
    std::fs::write(&src, &data).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["image", "convert", "-q", "-j", "1", "-c", "-O", "qcow2"])
        .arg(&src)
        .arg(out_dir.join("out.qcow2"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "convert finished before the signal ({:?}); the input is too small to test this",
        started.elapsed()
    );
    assert_eq!(dir_entries(&out_dir), Vec::<String>::new());
}

//! Reproducible output: the same tree gives the same bytes, whatever the thread
//! count or the inode numbers and directory order on disk; SOURCE_DATE_EPOCH clamps
//! mtimes.

use std::fs;
use std::path::Path;

use crate::common::*;

fn pack(src: &Path, out: &Path, compression: &str, env: &[(&str, &str)]) -> Vec<u8> {
    let mut cmd = kiln_cmd();
    cmd.args(["initrd", "pack"])
        .arg(src)
        .arg("-o")
        .arg(out)
        .args(["--compression", compression]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, TIMEOUT).assert_ok();
    fs::read(out).unwrap()
}

#[test]
fn same_tree_same_bytes_whatever_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src, true);
    // A copy has other inode numbers and directory order.
    let copy = tmp.path().join("copy");
    sh(tmp.path(), "cp -a src copy");
    for compression in ["gzip", "zstd", "xz", "none"] {
        let out = tmp.path().join("o.img");
        let one = pack(&src, &out, compression, &[("RAYON_NUM_THREADS", "1")]);
        let two = pack(&src, &out, compression, &[("RAYON_NUM_THREADS", "2")]);
        let again = pack(&copy, &out, compression, &[("RAYON_NUM_THREADS", "2")]);
        assert!(one == two, "{compression}: 1 thread and 2 threads differ");
        assert!(
            two == again,
            "{compression}: a copy of the tree packs differently"
        );
        if compression == "gzip" {
            let ls = kiln(&[
                "initrd".as_ref(),
                "ls".as_ref(),
                "--json".as_ref(),
                out.as_os_str(),
            ])
            .json();
            // Compressed in parallel chunks, yet one gzip member and one archive,
            // so plain `zcat | cpio` tools read all of it.
            assert_eq!(
                ls["segments"].as_array().unwrap().len(),
                1,
                "gzip output must be a single segment"
            );
        }
    }
    // A change in one byte of one file does change the output.
    fs::write(src.join("etc/fstab"), b"x").unwrap();
    let out = tmp.path().join("changed.img");
    let changed = pack(&src, &out, "zstd", &[]);
    let orig = pack(&copy, &tmp.path().join("orig.img"), "zstd", &[]);
    assert!(changed != orig);
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src, false);
    // make_tree's mtimes start at 1_600_000_000, one every 1000 s.
    let epoch: u64 = 1_600_010_500;
    let out = tmp.path().join("o.img");
    pack(
        &src,
        &out,
        "zstd",
        &[("SOURCE_DATE_EPOCH", &epoch.to_string())],
    );
    let clamped = kiln(&[
        "initrd".as_ref(),
        "ls".as_ref(),
        "--json".as_ref(),
        out.as_os_str(),
    ])
    .json();
    let out2 = tmp.path().join("o2.img");
    pack(&src, &out2, "zstd", &[]);
    let free = kiln(&[
        "initrd".as_ref(),
        "ls".as_ref(),
        "--json".as_ref(),
        out2.as_os_str(),
    ])
    .json();
    let entries = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v["segments"][0]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["path"].as_str().unwrap().to_string(),
                    e["mtime"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let (c, f) = (entries(&clamped), entries(&free));
    assert_eq!(c.len(), f.len());
    let mut below = 0;
    let mut above = 0;
    for ((pc, mc), (pf, mf)) in c.iter().zip(&f) {
        assert_eq!(pc, pf);
        assert_eq!(*mc, (*mf).min(epoch), "{pc}");
        if *mf < epoch { below += 1 } else { above += 1 }
    }
    assert!(
        below > 0 && above > 0,
        "the test tree should straddle the epoch ({below} below, {above} above)"
    );
}

//! Fuzz the initramfs segment scanner, the decompressors' end detection and the
//! newc parser: `Initrd::parse` on the input, then what `ls`, `extract` and repack
//! build from it (the merged tree, the listing, archives written back). Whatever
//! parses must be written and parse again to the same paths.
//!
//! Seeds: `fuzz/seed-initrd.sh` (small images of every compression).

#![no_main]

use kiln::format::cpio::Blob;
use kiln::format::initrd::Initrd;
use kiln::initrd::repack::merged_tree;
use kiln::initrd::tree::{Tree, WriteOptions};
use libfuzzer_sys::fuzz_target;

/// Expansion bound, far below the rss limit.
const MAX_EXPANDED: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(initrd) = Initrd::parse_with_limit(data.to_vec(), MAX_EXPANDED) else {
        return;
    };
    let listing = kiln::initrd::list(&initrd);
    let _ = kiln::initrd::list::render_text(&listing);
    let (tree, _rejected) = merged_tree(&initrd, 0);
    let parts = tree
        .write_archives(&WriteOptions {
            mtime_clamp: None,
            part_size: 4096,
        })
        .expect("a parsed tree can be written");
    let mut back = Tree::new();
    for part in parts {
        let blob = Blob::new(part);
        let archive = kiln::format::cpio::read_archive(&blob, 0).expect("written archive parses");
        assert_eq!(archive.end, blob.len());
        back.add_archive_entries(&archive.entries, &[0]);
    }
    let keys = |t: &Tree| t.nodes.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&tree), keys(&back));
});

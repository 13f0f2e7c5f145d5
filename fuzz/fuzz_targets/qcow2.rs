//! Fuzz the qcow2 reader and checker with arbitrary image bytes: opening, mapping
//! and reading the first clusters of the guest disk, and the full metadata check,
//! must never panic, hang or allocate without bound.
#![no_main]

use kiln::format::BlockSource;
use kiln::format::qcow2::{Qcow2Image, check::check};
use libfuzzer_sys::fuzz_target;

/// Guest bytes read per input: enough for several L2 tables at small cluster sizes.
const READ_LIMIT: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let _ = check(&data.to_vec());
    let Ok(image) = Qcow2Image::open(Box::new(data.to_vec())) else {
        return;
    };
    let end = image.virtual_size().min(READ_LIMIT);
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0;
    while pos < end {
        let Ok(extent) = image.extent_at(pos, end - pos) else {
            return;
        };
        let len = extent.len.clamp(1, end - pos).min(buf.len() as u64) as usize;
        if image.read_exact_at(&mut buf[..len], pos).is_err() {
            return;
        }
        pos += len as u64;
    }
    let _ = image.allocation_counts();
});

//! Writing the planned filesystem with positional writes: reserved sectors, both
//! FATs, the FAT16 root region, directory clusters and file contents.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use super::boot::{self, BootParams, MEDIA_FIXED_DISK};
use super::dir::{self, DirBuilder};
use super::layout::{Layout, NUM_FATS};
use super::plan::{Plan, PlanFile, Target};
use super::time::DosTime;
use super::{FatError, FatType, SECTOR_SIZE};

/// Size of the buffers used to copy files and to write zeros.
const CHUNK: usize = 1 << 20;
/// Bytes of FAT built at a time; past the used clusters the rest is written as zeros.
const FAT_CHUNK: usize = 64 << 10;

/// The output file seen from the start of the filesystem.
struct Out<'a> {
    file: &'a File,
    base: u64,
    zeros: Vec<u8>,
}

impl Out<'_> {
    fn write(&self, at: u64, bytes: &[u8]) -> Result<(), FatError> {
        let offset = self.base + at;
        self.file
            .write_all_at(bytes, offset)
            .map_err(|source| FatError::Write { offset, source })
    }

    fn zero(&self, mut at: u64, mut len: u64) -> Result<(), FatError> {
        while len > 0 {
            let n = len.min(self.zeros.len() as u64);
            self.write(at, &self.zeros[..n as usize])?;
            at += n;
            len -= n;
        }
        Ok(())
    }

    /// `bytes`, then zeros up to `span` bytes.
    fn write_padded(&self, at: u64, bytes: &[u8], span: u64) -> Result<(), FatError> {
        self.write(at, bytes)?;
        self.zero(
            at + bytes.len() as u64,
            span.saturating_sub(bytes.len() as u64),
        )
    }
}

pub fn write(
    file: &File,
    offset: u64,
    layout: &Layout,
    plan: &Plan,
    params: &BootParams,
    when: &DosTime,
) -> Result<(), FatError> {
    let out = Out {
        file,
        base: offset,
        zeros: vec![0u8; CHUNK],
    };
    // First the last sector, so the output covers the whole region even where
    // unused clusters are left unwritten.
    out.zero(layout.total_bytes() - SECTOR_SIZE, SECTOR_SIZE)?;
    out.write(
        0,
        &boot::reserved_region(layout, params, plan.used_clusters()),
    )?;
    write_fats(&out, layout, plan)?;
    if layout.fat_type == FatType::Fat16 {
        let root = encode_dir(plan, 0, params, when);
        out.write_padded(layout.root_offset(), &root, layout.root_bytes())?;
    }
    for (index, d) in plan.dirs.iter().enumerate() {
        if d.clusters == 0 {
            continue;
        }
        let bytes = encode_dir(plan, index, params, when);
        let span = u64::from(d.clusters) * u64::from(layout.cluster_bytes());
        out.write_padded(layout.cluster_offset(d.first_cluster), &bytes, span)?;
    }
    let mut buf = vec![0u8; CHUNK];
    for f in &plan.files {
        copy_file(&out, layout, f, &mut buf)?;
    }
    Ok(())
}

/// Both FATs, written chunk by chunk: the two reserved entries, one chain per run
/// (each cluster pointing at the next, the last one at end-of-chain), zeros after.
fn write_fats(out: &Out, layout: &Layout, plan: &Plan) -> Result<(), FatError> {
    let entry = layout.entry_bytes() as usize;
    let (reserved0, reserved1, end) = match layout.fat_type {
        FatType::Fat16 => (0xFF00 | u32::from(MEDIA_FIXED_DISK), 0xFFFF, 0xFFFF),
        FatType::Fat32 => (
            0x0FFF_FF00 | u32::from(MEDIA_FIXED_DISK),
            0x0FFF_FFFF,
            0x0FFF_FFFF,
        ),
    };
    let used_end = 2 + u64::from(plan.used_clusters());
    let mut runs = plan.runs.iter().map(|&(first, count)| first + count - 1);
    let mut run_last = runs.next();
    let mut chunk = vec![0u8; FAT_CHUNK];
    let fat_bytes = layout.fat_bytes();
    let mut done = 0u64;
    while done < fat_bytes {
        let len = (fat_bytes - done).min(FAT_CHUNK as u64) as usize;
        let first_entry = done / entry as u64;
        if first_entry >= used_end {
            // Only free entries from here on.
            for fat in 0..NUM_FATS {
                out.zero(layout.fat_offset(fat) + done, fat_bytes - done)?;
            }
            break;
        }
        for (i, slot) in chunk[..len].chunks_exact_mut(entry).enumerate() {
            let n = first_entry + i as u64;
            let value = match n {
                0 => reserved0,
                1 => reserved1,
                n if n < used_end => {
                    // n < used_end <= u32::MAX, so the cast is exact.
                    let n = n as u32;
                    if Some(n) == run_last {
                        run_last = runs.next();
                        end
                    } else {
                        n + 1
                    }
                }
                _ => 0,
            };
            slot.copy_from_slice(&value.to_le_bytes()[..entry]);
        }
        for fat in 0..NUM_FATS {
            out.write(layout.fat_offset(fat) + done, &chunk[..len])?;
        }
        done += len as u64;
    }
    Ok(())
}

/// The entries of directory `index`: "." and ".." (or the volume label in the root),
/// then every named entry in order.
fn encode_dir(plan: &Plan, index: usize, params: &BootParams, when: &DosTime) -> Vec<u8> {
    let d = &plan.dirs[index];
    let mut b = DirBuilder::default();
    match d.parent {
        Some(parent) => {
            b.push(&dir::short_entry(
                &dir::DOT,
                dir::ATTR_DIRECTORY,
                d.first_cluster,
                0,
                when,
            ));
            // ".." of a directory in the root points at cluster 0, also on FAT32.
            let up = if parent == 0 {
                0
            } else {
                plan.dirs[parent].first_cluster
            };
            b.push(&dir::short_entry(
                &dir::DOTDOT,
                dir::ATTR_DIRECTORY,
                up,
                0,
                when,
            ));
        }
        None => {
            if let Some(label) = &params.label {
                b.push(&dir::short_entry(label, dir::ATTR_VOLUME_ID, 0, 0, when));
            }
        }
    }
    for e in &d.entries {
        let (attr, cluster, size) = match e.target {
            Target::Dir(sub) => (dir::ATTR_DIRECTORY, plan.dirs[sub].first_cluster, 0),
            // Sizes were checked against the 32-bit limit when the tree was read.
            Target::File(f) => {
                let f = &plan.files[f];
                (dir::ATTR_ARCHIVE, f.first_cluster, f.size as u32)
            }
        };
        b.push_named(e.long.as_deref(), &e.short, attr, cluster, size, when);
    }
    b.into_bytes()
}

/// Copy one file into its clusters, zero-padding the last one. The file is opened
/// without following links and must still be the regular file of the size planned.
fn copy_file(out: &Out, layout: &Layout, f: &PlanFile, buf: &mut [u8]) -> Result<(), FatError> {
    if f.clusters == 0 {
        return Ok(());
    }
    let read_err = |source| FatError::Read {
        path: f.path.clone(),
        source,
    };
    let changed = || FatError::FileChanged {
        path: f.path.clone(),
        expected: f.size,
    };
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&f.path)
        .map_err(read_err)?;
    let meta = src.metadata().map_err(read_err)?;
    if !meta.is_file() || meta.len() != f.size {
        return Err(changed());
    }
    let start = layout.cluster_offset(f.first_cluster);
    let mut copied = 0u64;
    while copied < f.size {
        let want = (f.size - copied).min(buf.len() as u64) as usize;
        let got = match src.read(&mut buf[..want]) {
            Ok(0) => return Err(changed()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        out.write(start + copied, &buf[..got])?;
        copied += got as u64;
    }
    let span = u64::from(f.clusters) * u64::from(layout.cluster_bytes());
    out.zero(start + f.size, span - f.size)
}

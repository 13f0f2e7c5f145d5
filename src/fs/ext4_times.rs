//! Make the inode times of a fresh ext4 filesystem reproducible.
//!
//! `mke2fs -d` copies each source inode's atime, mtime and ctime. The ctime of a
//! host file cannot be set and records when the tree was built, so two builds of
//! the same tree differ. This pass walks the inode tables and sets, for every
//! inode in use, mtime to min(mtime, T), atime and ctime to that same value and
//! crtime to T (T = SOURCE_DATE_EPOCH), then recomputes the inode checksum
//! (metadata_csum). Nothing else changes, so e2fsck still finds a clean filesystem.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::FsError;

const SUPERBLOCK_OFFSET: u64 = 1024;
const MAGIC: u16 = 0xEF53;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_INODE_UNINIT: u16 = 0x1;
const GOOD_OLD_INODE_SIZE: usize = 128;

/// Reflected CRC-32C (Castagnoli) without pre- or post-inversion, as ext4 chains it.
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// The fields of the superblock this pass needs.
struct Geometry {
    block_size: u64,
    first_data_block: u64,
    inodes_count: u32,
    inodes_per_group: u32,
    inode_size: usize,
    desc_size: usize,
    has_itable_unused: bool,
    csum_seed: Option<u32>,
}

fn geometry(sb: &[u8], bad: &dyn Fn(String) -> FsError) -> Result<Geometry, FsError> {
    if le16(sb, 0x38) != MAGIC {
        return Err(bad("no ext4 superblock".into()));
    }
    let log_block = le32(sb, 0x18);
    if log_block > 6 {
        return Err(bad(format!("block size 1024 << {log_block}")));
    }
    let incompat = le32(sb, 0x60);
    let ro_compat = le32(sb, 0x64);
    if incompat & INCOMPAT_META_BG != 0 {
        return Err(bad("meta_bg group descriptors are not handled".into()));
    }
    let inode_size = le16(sb, 0x58) as usize;
    let desc_size = if incompat & INCOMPAT_64BIT != 0 {
        le16(sb, 0xFE) as usize
    } else {
        32
    };
    let inodes_per_group = le32(sb, 0x28);
    if inode_size < GOOD_OLD_INODE_SIZE
        || !inode_size.is_power_of_two()
        || desc_size < 32
        || inodes_per_group == 0
    {
        return Err(bad(format!(
            "inode size {inode_size}, descriptor size {desc_size}, {inodes_per_group} inodes per group"
        )));
    }
    let csum_seed = (ro_compat & RO_COMPAT_METADATA_CSUM != 0).then(|| {
        if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(sb, 0x270)
        } else {
            crc32c(!0, &sb[0x68..0x78])
        }
    });
    Ok(Geometry {
        block_size: 1024 << log_block,
        first_data_block: le32(sb, 0x14) as u64,
        inodes_count: le32(sb, 0x00),
        inodes_per_group,
        inode_size,
        desc_size,
        has_itable_unused: ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
        csum_seed,
    })
}

/// Seconds of an inode time: 32 signed bits plus two epoch bits in the extra field.
fn seconds(low: u32, extra: Option<u32>) -> i64 {
    low as i32 as i64 + ((extra.unwrap_or(0) & 3) as i64) * (1 << 32)
}

/// Rewrite one inode in place; returns whether it is in use.
fn normalise_inode(inode: &mut [u8], number: u32, g: &Geometry, ceiling: i64) -> bool {
    let mode = le16(inode, 0x0);
    let links = le16(inode, 0x1A);
    if mode == 0 && links == 0 {
        return false;
    }
    let extra_isize = if g.inode_size > GOOD_OLD_INODE_SIZE {
        le16(inode, 0x80) as usize
    } else {
        0
    };
    let fits =
        |field: usize| GOOD_OLD_INODE_SIZE + extra_isize >= field + 4 && field + 4 <= g.inode_size;
    let mtime_extra = fits(0x88).then(|| le32(inode, 0x88));
    let mtime = seconds(le32(inode, 0x10), mtime_extra);
    let (secs, extra) = if mtime > ceiling {
        (ceiling, (((ceiling >> 32) & 3) as u32))
    } else {
        (mtime, mtime_extra.unwrap_or(0))
    };
    let low = secs as u32;
    for (time, extra_at) in [(0x08, 0x8C), (0x0C, 0x84), (0x10, 0x88)] {
        put32(inode, time, low);
        if fits(extra_at) {
            put32(inode, extra_at, extra);
        }
    }
    if fits(0x90) {
        put32(inode, 0x90, ceiling as u32);
    }
    if fits(0x94) {
        put32(inode, 0x94, ((ceiling >> 32) & 3) as u32);
    }
    if let Some(seed) = g.csum_seed {
        let hi_fits =
            g.inode_size > GOOD_OLD_INODE_SIZE && GOOD_OLD_INODE_SIZE + extra_isize >= 0x84;
        put16(inode, 0x7C, 0);
        if hi_fits {
            put16(inode, 0x82, 0);
        }
        let mut crc = crc32c(seed, &number.to_le_bytes());
        crc = crc32c(crc, &inode[0x64..0x68]);
        crc = crc32c(crc, inode);
        put16(inode, 0x7C, crc as u16);
        if hi_fits {
            put16(inode, 0x82, (crc >> 16) as u16);
        }
    }
    true
}

/// Normalise the times of every inode of the ext4 filesystem at `offset` in `image`.
/// Returns the number of inodes rewritten.
pub fn normalise_times(
    image: &File,
    offset: u64,
    label: &str,
    ceiling: i64,
) -> Result<u64, FsError> {
    let bad = |problem: String| FsError::Ext4Layout {
        label: label.to_string(),
        offset,
        problem,
    };
    let io = |e: std::io::Error| bad(format!("reading or writing the image: {e}"));
    let mut sb = vec![0u8; 1024];
    image
        .read_exact_at(&mut sb, offset + SUPERBLOCK_OFFSET)
        .map_err(io)?;
    let g = geometry(&sb, &bad)?;
    let groups = g.inodes_count.div_ceil(g.inodes_per_group);
    let gdt_at = offset + (g.first_data_block + 1) * g.block_size;
    let mut gdt = vec![0u8; groups as usize * g.desc_size];
    image.read_exact_at(&mut gdt, gdt_at).map_err(io)?;

    let mut rewritten = 0;
    for group in 0..groups {
        let d = &gdt[group as usize * g.desc_size..(group as usize + 1) * g.desc_size];
        if g.has_itable_unused && le16(d, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let mut table_block = le32(d, 0x08) as u64;
        let mut unused = if g.has_itable_unused {
            le16(d, 0x1C) as u32
        } else {
            0
        };
        if g.desc_size >= 64 {
            table_block |= (le32(d, 0x28) as u64) << 32;
            if g.has_itable_unused {
                unused |= (le16(d, 0x32) as u32) << 16;
            }
        }
        let used = g.inodes_per_group.saturating_sub(unused);
        if used == 0 {
            continue;
        }
        let table_at = offset + table_block * g.block_size;
        let mut table = vec![0u8; used as usize * g.inode_size];
        image.read_exact_at(&mut table, table_at).map_err(io)?;
        let mut changed = false;
        for (i, inode) in table.chunks_exact_mut(g.inode_size).enumerate() {
            let number = group * g.inodes_per_group + i as u32 + 1;
            if normalise_inode(inode, number, &g, ceiling) {
                changed = true;
                rewritten += 1;
            }
        }
        if changed {
            image.write_all_at(&table, table_at).map_err(io)?;
        }
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" is e3069283 with the usual
        // inversions, which ext4 leaves to the caller.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn seconds_use_the_epoch_bits() {
        assert_eq!(seconds(0xFFFF_FFFF, Some(0)), -1);
        assert_eq!(seconds(0, Some(1)), 1 << 32);
    }
}

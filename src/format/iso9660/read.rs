//! The volume: label and files by path.

use super::descriptor::Descriptors;
use super::record::{self, Record};
use super::{IsoReadError, name, susp};
use crate::format::ReadAt;

/// Larger files are refused: a config drive holds a few small JSON files.
pub const MAX_FILE: u64 = 64 << 20;
/// Larger directories are refused for the same reason.
const MAX_DIR: u64 = 16 << 20;

/// Which names the volume's files are found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// Rock Ridge NM entries in the primary tree (SUSP entries skip this many bytes).
    RockRidge { skip: usize },
    /// The Joliet tree's UCS-2 names.
    Joliet,
    /// Primary tree names without `;1` and trailing dot, compared without case.
    Plain,
}

/// One child of a directory; several extents only for files over 4 GiB.
struct Child {
    name: String,
    is_dir: bool,
    extents: Vec<(u32, u32)>,
    unfinished: bool,
    interleaved: bool,
}

pub struct IsoVolume<'a> {
    dev: &'a dyn ReadAt,
    block_size: u64,
    blocks: u64,
    label: String,
    root: Record,
    naming: Naming,
}

impl<'a> IsoVolume<'a> {
    /// Read the volume descriptors and choose the naming scheme. Fails with
    /// `NotIso` when there is no ISO9660 volume at all.
    pub fn open(dev: &'a dyn ReadAt) -> Result<Self, IsoReadError> {
        let d = Descriptors::read(dev)?;
        let mut volume = IsoVolume {
            dev,
            block_size: d.block_size,
            blocks: d.blocks,
            label: d.primary.label.clone(),
            root: d.primary.root.clone(),
            naming: Naming::Plain,
        };
        if let Some(joliet) = d.joliet {
            // Joliet keeps the label's case and characters, as blkid reports it.
            if !joliet.label.is_empty() {
                volume.label = joliet.label;
            }
            volume.naming = Naming::Joliet;
            volume.root = joliet.root;
        }
        if let Some(skip) = volume.rock_ridge_skip(&d.primary.root)? {
            volume.naming = Naming::RockRidge { skip };
            volume.root = d.primary.root;
        }
        Ok(volume)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// Rock Ridge is in use when the root's `.` record opens with SUSP's SP
    /// entry and Rock Ridge entries (or their ER extension record) follow.
    fn rock_ridge_skip(&self, root: &Record) -> Result<Option<usize>, IsoReadError> {
        let bytes = self.read_extent("/", root.extent, root.size.into(), MAX_DIR)?;
        let Some((_, Ok(dot))) = record::records(&bytes).next() else {
            return Ok(None);
        };
        let Some(skip) = susp::sharing_protocol_skip(&dot.system_use) else {
            return Ok(None);
        };
        let entries = susp::entries(&dot.system_use, 0, |b, o, l| self.read_area(b, o, l))?;
        let rock_ridge = entries
            .iter()
            .any(|e| matches!(&e.signature, b"ER" | b"RR" | b"PX" | b"NM"));
        Ok(rock_ridge.then_some(skip))
    }

    /// `len` bytes at `block`, after checking they lie inside the volume.
    fn read_extent(
        &self,
        what: &str,
        block: u32,
        len: u64,
        max: u64,
    ) -> Result<Vec<u8>, IsoReadError> {
        if len > max {
            return Err(IsoReadError::TooLarge {
                what: what.to_string(),
                size: len,
            });
        }
        let block = u64::from(block);
        let start = block * self.block_size;
        if start + len > self.blocks * self.block_size {
            return Err(IsoReadError::OutsideVolume {
                what: what.to_string(),
                block,
                len,
                blocks: self.blocks,
            });
        }
        let mut bytes = vec![0u8; len as usize];
        self.dev.read_exact_at(&mut bytes, start)?;
        Ok(bytes)
    }

    fn read_area(&self, block: u32, offset: u32, len: u32) -> Result<Vec<u8>, IsoReadError> {
        let bytes = self.read_extent(
            "Rock Ridge continuation area",
            block,
            u64::from(offset) + u64::from(len),
            u64::from(susp::MAX_AREA) * 2,
        )?;
        Ok(bytes[offset as usize..].to_vec())
    }

    fn child_name(&self, r: &Record) -> Result<String, IsoReadError> {
        Ok(match self.naming {
            Naming::RockRidge { skip } => {
                let entries =
                    susp::entries(&r.system_use, skip, |b, o, l| self.read_area(b, o, l))?;
                match susp::rock_ridge_name(&entries) {
                    Some(raw) => String::from_utf8_lossy(&raw).into_owned(),
                    None => name::plain(&r.identifier),
                }
            }
            Naming::Joliet => name::joliet(&r.identifier),
            Naming::Plain => name::plain(&r.identifier),
        })
    }

    /// The children of the directory whose extent is `(block, size)`.
    fn children(&self, path: &str, (block, size): (u32, u32)) -> Result<Vec<Child>, IsoReadError> {
        let bytes = self.read_extent(path, block, size.into(), MAX_DIR)?;
        let mut children: Vec<Child> = Vec::new();
        for (offset, parsed) in record::records(&bytes) {
            let r = parsed.map_err(|reason| IsoReadError::BadRecord {
                dir: path.to_string(),
                offset,
                reason,
            })?;
            if r.is_self_or_parent() || r.is_associated() {
                continue;
            }
            let interleaved = r.unit_size != 0 || r.gap != 0;
            match children.last_mut() {
                // The next piece of a file over 4 GiB.
                Some(last) if last.unfinished && !r.is_dir() => {
                    last.extents.push((r.extent, r.size));
                    last.unfinished = r.has_more_extents();
                    last.interleaved |= interleaved;
                }
                _ => children.push(Child {
                    name: self.child_name(&r)?,
                    is_dir: r.is_dir(),
                    extents: vec![(r.extent, r.size)],
                    unfinished: r.has_more_extents(),
                    interleaved,
                }),
            }
        }
        Ok(children)
    }

    fn find<'c>(&self, children: &'c [Child], wanted: &str) -> Option<&'c Child> {
        children.iter().find(|c| match self.naming {
            Naming::Plain => c.name.eq_ignore_ascii_case(wanted),
            _ => c.name == wanted,
        })
    }

    /// A file's bytes by `/`-separated path; None when it does not exist.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, IsoReadError> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut dir = (self.root.extent, self.root.size);
        let mut walked = String::from("/");
        for (i, part) in parts.iter().enumerate() {
            let children = self.children(&walked, dir)?;
            let Some(child) = self.find(&children, part) else {
                return Ok(None);
            };
            walked = format!("/{}", parts[..=i].join("/"));
            let last = i + 1 == parts.len();
            match (last, child.is_dir) {
                (false, true) => dir = child.extents[0],
                (true, false) => return self.file_bytes(&walked, child).map(Some),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    fn file_bytes(&self, path: &str, file: &Child) -> Result<Vec<u8>, IsoReadError> {
        if file.interleaved {
            return Err(IsoReadError::Interleaved {
                path: path.to_string(),
            });
        }
        if file.unfinished {
            return Err(IsoReadError::UnfinishedExtents {
                path: path.to_string(),
            });
        }
        let total: u64 = file.extents.iter().map(|&(_, len)| u64::from(len)).sum();
        if total > MAX_FILE {
            return Err(IsoReadError::TooLarge {
                what: path.to_string(),
                size: total,
            });
        }
        let mut out = Vec::with_capacity(total as usize);
        for &(block, len) in &file.extents {
            out.extend(self.read_extent(path, block, len.into(), MAX_FILE)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::iso9660::record::encode;

    /// A plain ISO9660 volume: descriptors at 16 and 17, the root folder at
    /// block 18 with `HELLO.TXT;1` (block 19) and `far` (pointing at `far_block`).
    fn volume(far_block: u32, far_size: u32) -> Vec<u8> {
        let mut img = vec![0u8; 20 * 2048];
        let pvd = &mut img[16 * 2048..17 * 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[40..72].copy_from_slice(&[b' '; 32]);
        pvd[40..48].copy_from_slice(b"CONFIG-2");
        pvd[80..84].copy_from_slice(&20u32.to_le_bytes());
        pvd[128..130].copy_from_slice(&2048u16.to_le_bytes());
        let root = encode(18, 2048, 0x02, &[0], b"");
        pvd[156..156 + root.len()].copy_from_slice(&root);
        img[17 * 2048] = 255;
        img[17 * 2048 + 1..17 * 2048 + 6].copy_from_slice(b"CD001");
        let mut dir = Vec::new();
        dir.extend(encode(18, 2048, 0x02, &[0], b""));
        dir.extend(encode(18, 2048, 0x02, &[1], b""));
        dir.extend(encode(19, 5, 0, b"HELLO.TXT;1", b""));
        dir.extend(encode(far_block, far_size, 0, b"FAR.;1", b""));
        img[18 * 2048..18 * 2048 + dir.len()].copy_from_slice(&dir);
        img[19 * 2048..19 * 2048 + 5].copy_from_slice(b"hello");
        img
    }

    #[test]
    fn plain_names_are_found_without_case() {
        let img = volume(19, 1);
        let v = IsoVolume::open(&img).unwrap();
        assert_eq!((v.label(), v.naming()), ("CONFIG-2", Naming::Plain));
        assert_eq!(v.read_file("/hello.txt").unwrap().unwrap(), b"hello");
        assert_eq!(v.read_file("far").unwrap().unwrap(), b"h");
        assert_eq!(v.read_file("hello.txt/x").unwrap(), None);
    }

    #[test]
    fn extents_outside_the_volume_are_refused() {
        let img = volume(25, 10);
        let v = IsoVolume::open(&img).unwrap();
        assert!(matches!(
            v.read_file("FAR"),
            Err(IsoReadError::OutsideVolume { block: 25, .. })
        ));
        let img = volume(19, u32::MAX);
        let v = IsoVolume::open(&img).unwrap();
        assert!(matches!(
            v.read_file("far"),
            Err(IsoReadError::TooLarge { .. })
        ));
    }
}

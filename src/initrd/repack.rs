//! Rewriting an initramfs with changes: `kiln initrd rm` and the write step of
//! `kiln initrd add`.
//!
//! Leading uncompressed segments (early microcode) are copied byte for byte unless a
//! removal touches them. The remaining segments are merged into one tree the way the
//! kernel unpacks them (later entries win), the edits are applied, and the tree is
//! written as one segment with the compression of the first merged segment unless
//! another is asked for.

use std::io::Write;
use std::path::Path;

use super::pack::{write_output, write_segment};
use super::staging::{Content, Staged, StagedKind, normalize_guest_path};
use super::tree::{Node, PathKey, Tree};
use super::{InitrdError, io_err, list::read_initrd, now_mtime};
use crate::format::cpio::{Blob, FileType};
use crate::format::initrd::{Compression, Initrd};

/// Changes to apply to an initramfs.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    /// Guest paths to remove (directories with everything below them). Symlinks in
    /// the leading components are followed inside the initramfs; the last component
    /// is removed itself. A path that does not exist is an error.
    pub remove: Vec<String>,
    /// Items to add or replace, after the removals. Missing parent directories are
    /// created (0755, root). Symlinks among the parents are followed inside the
    /// initramfs (so `/lib/modules/...` lands in `usr/lib/...` on a merged-/usr
    /// initramfs).
    pub add: Vec<Staged>,
}

#[derive(Debug, Clone, Default)]
pub struct RepackOptions {
    /// Output compression; `None` keeps the input's (an error if kiln cannot write it).
    pub compression: Option<Compression>,
    /// Clamp mtimes to this (SOURCE_DATE_EPOCH); see [`super::source_date_epoch`].
    pub mtime_clamp: Option<u32>,
    /// Show a progress bar on a terminal.
    pub progress: bool,
}

/// Index of the first segment that is merged and rewritten: the first compressed
/// one, or the last segment if none is compressed.
pub fn main_segment_index(initrd: &Initrd) -> usize {
    initrd
        .segments
        .iter()
        .position(|s| s.compression != Compression::None)
        .unwrap_or(initrd.segments.len().saturating_sub(1))
}

/// The tree the kernel would unpack from `segments[from..]`.
pub fn merged_tree(initrd: &Initrd, from: usize) -> (Tree, Vec<String>) {
    let mut tree = Tree::new();
    let mut rejected = Vec::new();
    for seg in initrd.segments.iter().skip(from) {
        rejected.extend(
            tree.add_archive_entries(&seg.entries, &seg.archive_starts)
                .into_iter()
                .map(|n| String::from_utf8_lossy(&n).into_owned()),
        );
    }
    (tree, rejected)
}

/// Apply `edits` and stream the new initramfs into `sink`, which is handed back.
pub fn repack_into<W: Write>(
    initrd: &Initrd,
    edits: &Edits,
    opts: &RepackOptions,
    mut sink: W,
) -> Result<W, InitrdError> {
    let main = main_segment_index(initrd);
    let compression = opts
        .compression
        .unwrap_or(initrd.segments[main].compression);
    if !compression.writable() {
        return Err(InitrdError::NeedCompression { compression });
    }
    let (mut tree, rejected) = merged_tree(initrd, main);
    if !rejected.is_empty() {
        return Err(InitrdError::UnsafeNames(rejected));
    }
    // Early segments become trees only when a removal touches them.
    let mut early: Vec<Option<Tree>> = vec![None; main];
    let mut missing = Vec::new();
    for path in &edits.remove {
        let key = PathKey::normalize(normalize_guest_path(&absolute(path))?.as_bytes())
            .ok_or_else(|| InitrdError::UnsafeNames(vec![path.clone()]))?;
        let mut found = false;
        let resolved = tree.resolve(&key, false)?;
        if tree.remove_subtree(&resolved) > 0 {
            found = true;
        }
        for (i, slot) in early.iter_mut().enumerate() {
            let seg = &initrd.segments[i];
            let has = |t: &Tree| t.get(&key).is_some();
            if slot.is_none() {
                let mut t = Tree::new();
                let bad = t.add_archive_entries(&seg.entries, &seg.archive_starts);
                if !has(&t) {
                    continue;
                }
                if !bad.is_empty() {
                    return Err(InitrdError::UnsafeNames(
                        bad.iter()
                            .map(|n| String::from_utf8_lossy(n).into_owned())
                            .collect(),
                    ));
                }
                *slot = Some(t);
            }
            if let Some(t) = slot
                && t.remove_subtree(&key) > 0
            {
                found = true;
            }
        }
        if !found {
            missing.push(path.clone());
        }
    }
    if !missing.is_empty() {
        return Err(InitrdError::NotFound(missing));
    }
    for item in &edits.add {
        add_staged(&mut tree, item)?;
    }

    let bytes: &[u8] = &initrd.bytes;
    // Bytes before the first segment (zero padding) are kept as they are.
    sink.write_all(&bytes[..initrd.segments[0].offset as usize])
        .map_err(write_err)?;
    let mut written = initrd.segments[0].offset;
    for (i, slot) in early.iter().enumerate() {
        let seg = &initrd.segments[i];
        let next = initrd.segments[i + 1].offset;
        match slot {
            // Untouched: the segment and the padding after it, byte for byte.
            None => {
                sink.write_all(&bytes[seg.offset as usize..next as usize])
                    .map_err(write_err)?;
                written += next - seg.offset;
            }
            Some(t) => {
                let mut counted = CountingWriter::new(sink);
                counted = write_segment(t, Compression::None, opts.mtime_clamp, false, counted)?;
                written += counted.count();
                sink = counted.into_inner();
            }
        }
    }
    if compression == Compression::None {
        // A plain archive must start 4-aligned.
        let pad = written.next_multiple_of(4) - written;
        sink.write_all(&[0u8; 3][..pad as usize])
            .map_err(write_err)?;
    }
    write_segment(&tree, compression, opts.mtime_clamp, opts.progress, sink)
}

/// Apply `edits` and return the new initramfs bytes.
pub fn repack(
    initrd: &Initrd,
    edits: &Edits,
    opts: &RepackOptions,
) -> Result<Vec<u8>, InitrdError> {
    repack_into(initrd, edits, opts, Vec::new())
}

/// Read `input`, apply `edits`, write `output` (which appears only when complete).
pub fn repack_file(
    input: &Path,
    output: &Path,
    edits: &Edits,
    opts: &RepackOptions,
) -> Result<(), InitrdError> {
    let initrd = read_initrd(input)?;
    write_output(output, |sink| repack_into(&initrd, edits, opts, sink))
}

/// `kiln initrd rm`: remove `paths` (directories recursively).
pub fn rm(
    input: &Path,
    output: &Path,
    paths: &[String],
    opts: &RepackOptions,
) -> Result<(), InitrdError> {
    let edits = Edits {
        remove: paths.to_vec(),
        add: Vec::new(),
    };
    repack_file(input, output, &edits, opts)
}

fn write_err(e: std::io::Error) -> InitrdError {
    InitrdError::Cpio(crate::format::cpio::CpioError::Write(e))
}

/// Counts the bytes written through it (to keep later segments aligned).
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> CountingWriter<W> {
    fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }

    fn count(&self) -> u64 {
        self.count
    }

    fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Guest paths may be given relative to the initramfs root.
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

fn add_staged(tree: &mut Tree, item: &Staged) -> Result<(), InitrdError> {
    let normalized = normalize_guest_path(&item.path)?;
    let key = PathKey::normalize(normalized.as_bytes())
        .ok_or_else(|| InitrdError::UnsafeNames(vec![item.path.clone()]))?;
    let Some((parent, name)) = key.split_last() else {
        return Err(InitrdError::UnsafeNames(vec![item.path.clone()]));
    };
    let parent = tree.resolve(&parent, true)?;
    ensure_dirs(tree, &parent, &item.path)?;
    let key = parent.join(name);
    let perm = item.mode & 0o7777;
    let (kind, data, mtime) = match &item.kind {
        StagedKind::Dir => (FileType::Dir, Blob::default(), now_mtime()),
        StagedKind::Symlink(target) => (
            FileType::Symlink,
            Blob::new(target.as_bytes().to_vec()),
            now_mtime(),
        ),
        StagedKind::File(Content::Bytes(b)) => (FileType::File, Blob::new(b.clone()), now_mtime()),
        StagedKind::File(Content::Host(path)) => {
            let meta = std::fs::metadata(path).map_err(io_err(path))?;
            if meta.len() > u64::from(u32::MAX) {
                return Err(InitrdError::FileTooLarge {
                    path: path.clone(),
                    size: meta.len(),
                });
            }
            let bytes = std::fs::read(path).map_err(io_err(path))?;
            let mtime = std::os::unix::fs::MetadataExt::mtime(&meta).clamp(0, i64::from(u32::MAX));
            (FileType::File, Blob::new(bytes), mtime as u32)
        }
    };
    if kind != FileType::Dir && tree.get(&key).is_some_and(Node::is_dir) {
        return Err(InitrdError::ReplaceDir(item.path.clone()));
    }
    tree.insert(
        key,
        Node {
            mode: kind.mode_bits() | perm,
            uid: item.uid,
            gid: item.gid,
            mtime,
            rdev_major: 0,
            rdev_minor: 0,
            data,
            link: None,
        },
    );
    Ok(())
}

/// Create the missing directories of `dir` (already resolved).
fn ensure_dirs(tree: &mut Tree, dir: &PathKey, for_path: &str) -> Result<(), InitrdError> {
    let mut prefix = PathKey::root();
    for c in dir.components().map(<[u8]>::to_vec).collect::<Vec<_>>() {
        prefix = prefix.join(&c);
        match tree.get(&prefix) {
            Some(n) if n.is_dir() => {}
            Some(_) => {
                return Err(InitrdError::NotADirectory {
                    path: for_path.to_string(),
                    parent: prefix.display(),
                });
            }
            None => tree.insert(prefix.clone(), Node::dir(0o755, 0, 0, now_mtime())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::cpio::{ArchiveWriter, Entry};

    fn archive(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut w = ArchiveWriter::new();
        for (i, (name, mode, data)) in entries.iter().enumerate() {
            w.add(&Entry {
                name: name.as_bytes().to_vec(),
                ino: i as u32 + 1,
                mode: *mode,
                nlink: 1,
                mtime: 1000,
                data: Blob::from(*data),
                ..Entry::default()
            })
            .unwrap();
        }
        w.finish().unwrap()
    }

    fn image() -> Vec<u8> {
        let mut bytes = archive(&[("kernel/ucode.bin", 0o100644, b"ucode")]);
        bytes.extend_from_slice(&[0; 12]);
        let main = archive(&[
            ("usr", 0o40755, b""),
            ("usr/lib", 0o40755, b""),
            ("lib", 0o120777, b"usr/lib"),
            ("usr/lib/a.so", 0o100755, b"a"),
            ("etc", 0o40755, b""),
        ]);
        bytes.extend(crate::format::initrd::compress(&main, Compression::Gzip).unwrap());
        bytes
    }

    fn paths(bytes: Vec<u8>) -> Vec<String> {
        let initrd = Initrd::parse(bytes).unwrap();
        let (tree, _) = merged_tree(&initrd, 0);
        tree.nodes.keys().map(|k| k.display()).collect()
    }

    #[test]
    fn additions_follow_parent_symlinks_and_early_bytes_stay() {
        let input = Initrd::parse(image()).unwrap();
        let edits = Edits {
            remove: vec!["/etc".into()],
            add: vec![Staged {
                path: "/lib/modules/x.ko".into(),
                kind: StagedKind::File(Content::Bytes(b"ko".to_vec())),
                mode: 0o644,
                uid: 0,
                gid: 0,
            }],
        };
        let out = repack(&input, &edits, &RepackOptions::default()).unwrap();
        let early_end = input.segments[1].offset as usize;
        assert_eq!(out[..early_end], input.bytes[..early_end]);
        let out_initrd = Initrd::parse(out.clone()).unwrap();
        assert_eq!(out_initrd.segments[1].compression, Compression::Gzip);
        assert_eq!(
            paths(out),
            [
                "/kernel/ucode.bin",
                "/lib",
                "/usr",
                "/usr/lib",
                "/usr/lib/a.so",
                "/usr/lib/modules",
                "/usr/lib/modules/x.ko"
            ]
        );
    }

    #[test]
    fn removal_in_the_early_segment_rewrites_only_it() {
        let input = Initrd::parse(image()).unwrap();
        let edits = Edits {
            remove: vec!["kernel/ucode.bin".into()],
            add: vec![],
        };
        let out = repack(
            &input,
            &edits,
            &RepackOptions {
                compression: Some(Compression::Zstd),
                ..RepackOptions::default()
            },
        )
        .unwrap();
        let got = Initrd::parse(out).unwrap();
        assert!(got.segments[0].entries.is_empty());
        assert_eq!(got.segments[1].compression, Compression::Zstd);
        assert_eq!(got.segments[1].entries.len(), 5);
    }

    #[test]
    fn errors_name_the_problem() {
        let input = Initrd::parse(image()).unwrap();
        let missing = Edits {
            remove: vec!["/nope".into(), "/etc".into(), "/usr/x".into()],
            add: vec![],
        };
        match repack(&input, &missing, &RepackOptions::default()) {
            Err(InitrdError::NotFound(p)) => assert_eq!(p, ["/nope", "/usr/x"]),
            other => panic!("{other:?}"),
        }
        let over_dir = Edits {
            remove: vec![],
            add: vec![Staged {
                path: "/usr/lib".into(),
                kind: StagedKind::Symlink("x".into()),
                mode: 0o777,
                uid: 0,
                gid: 0,
            }],
        };
        assert!(matches!(
            repack(&input, &over_dir, &RepackOptions::default()),
            Err(InitrdError::ReplaceDir(_))
        ));
        let under_file = Edits {
            remove: vec![],
            add: vec![Staged {
                path: "/usr/lib/a.so/x".into(),
                kind: StagedKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            }],
        };
        assert!(matches!(
            repack(&input, &under_file, &RepackOptions::default()),
            Err(InitrdError::NotADirectory { .. })
        ));
        let lz4 = RepackOptions {
            compression: Some(Compression::Lz4),
            ..RepackOptions::default()
        };
        assert!(matches!(
            repack(&input, &Edits::default(), &lz4),
            Err(InitrdError::NeedCompression { .. })
        ));
    }
}

//! The file tree an initramfs unpacks to: what the kernel would see after reading
//! every segment in order (later entries replace earlier ones). Paths are stored
//! normalized and relative (`usr/bin/sh`; the root is the empty path) and sort
//! component by component, so a directory comes right before its contents.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use super::InitrdError;
use crate::format::cpio::{self, ArchiveWriter, Blob, Entry, FileType};
use crate::util::interrupt;

/// A normalized relative path ("" is the root) ordered component by component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PathKey(Vec<u8>);

impl PathKey {
    pub fn root() -> Self {
        PathKey(Vec::new())
    }

    /// Normalize an archive name or guest path: leading '/' and `./` dropped, empty
    /// and `.` components dropped. `None` if a component is `..`.
    pub fn normalize(name: &[u8]) -> Option<PathKey> {
        let mut out = Vec::with_capacity(name.len());
        for part in name.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return None,
                p => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(p);
                }
            }
        }
        Some(PathKey(out))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The components (none for the root).
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// The name as written to an archive: `.` for the root.
    pub fn archive_name(&self) -> Vec<u8> {
        if self.0.is_empty() {
            b".".to_vec()
        } else {
            self.0.clone()
        }
    }

    /// For messages.
    pub fn display(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.0))
    }

    /// Parent and last component; `None` for the root.
    pub fn split_last(&self) -> Option<(PathKey, &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (PathKey(self.0[..i].to_vec()), &self.0[i + 1..]),
            None => (PathKey::root(), &self.0[..]),
        })
    }

    pub fn join(&self, name: &[u8]) -> PathKey {
        let mut v = self.0.clone();
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        PathKey(v)
    }

    /// Whether `self` is `other` or lies below it.
    pub fn is_within(&self, other: &PathKey) -> bool {
        other.0.is_empty()
            || (self.0.starts_with(&other.0)
                && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/'))
    }
}

impl Ord for PathKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .split(|&b| b == b'/')
            .cmp(other.0.split(|&b| b == b'/'))
    }
}

impl PartialOrd for PathKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One file, directory, link or special file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// File type and permission bits, as `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    /// Device number of a character or block device.
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// A file's contents or a symlink's target.
    pub data: Blob,
    /// Regular files that are hard links of each other share a group number.
    pub link: Option<u32>,
}

impl Node {
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode)
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Dir
    }

    /// A directory with the given permission bits.
    pub fn dir(perm: u32, uid: u32, gid: u32, mtime: u32) -> Node {
        Node {
            mode: cpio::FileType::Dir.mode_bits() | (perm & 0o7777),
            uid,
            gid,
            mtime,
            rdev_major: 0,
            rdev_minor: 0,
            data: Blob::default(),
            link: None,
        }
    }
}

/// Device major, minor and inode number of an archive entry.
type InodeId = (u32, u32, u32);
/// A hard-link group being read: its number, members, and the data stored with it.
type LinkGroup = (u32, Vec<PathKey>, Blob);

/// Settings for turning a tree into archives.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Clamp every mtime to at most this (SOURCE_DATE_EPOCH).
    pub mtime_clamp: Option<u32>,
}

/// Write `entries` as one archive into `sink`, stopping at an interrupt.
pub fn write_entries<W: Write>(entries: &[Entry], sink: W) -> Result<W, InitrdError> {
    let mut writer = ArchiveWriter::to(sink);
    for entry in entries {
        interrupt::check()?;
        writer.add(entry)?;
    }
    Ok(writer.finish()?)
}

/// Bytes `entries` take as one archive, trailer included.
pub fn archive_len(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| cpio::entry_len(e.name.len(), e.data.len()))
        .sum::<u64>()
        + cpio::trailer_len()
}

/// The unpacked view of an initramfs or a directory.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub nodes: BTreeMap<PathKey, Node>,
    next_link: u32,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh hard-link group number.
    pub fn new_link_group(&mut self) -> u32 {
        self.next_link += 1;
        self.next_link
    }

    pub fn get(&self, key: &PathKey) -> Option<&Node> {
        self.nodes.get(key)
    }

    /// Add the entries of one or more archives (`archive_starts` gives the index in
    /// `entries` where each archive begins), later entries replacing earlier ones.
    /// Hard-link identities (device + inode of files with several links) are matched
    /// within an archive; every member gets the data stored with the group.
    /// Returns the names that were refused because they contain `..`.
    pub fn add_archive_entries(
        &mut self,
        entries: &[Entry],
        archive_starts: &[usize],
    ) -> Vec<Vec<u8>> {
        let mut rejected = Vec::new();
        let mut bounds: Vec<usize> = archive_starts.to_vec();
        bounds.push(entries.len());
        if bounds.first() != Some(&0) {
            bounds.insert(0, 0);
        }
        for w in bounds.windows(2) {
            let (from, to) = (w[0].min(entries.len()), w[1].min(entries.len()));
            if from >= to {
                continue;
            }
            // (dev major, dev minor, ino) -> (group, members, data)
            let mut groups: HashMap<InodeId, LinkGroup> = HashMap::new();
            for e in &entries[from..to] {
                let Some(key) = PathKey::normalize(&e.name) else {
                    rejected.push(e.name.clone());
                    continue;
                };
                let mut link = None;
                if e.file_type() == FileType::File && e.nlink > 1 {
                    let id = (e.dev_major, e.dev_minor, e.ino);
                    let next = &mut self.next_link;
                    let group = groups.entry(id).or_insert_with(|| {
                        *next += 1;
                        (*next, Vec::new(), Blob::default())
                    });
                    group.1.push(key.clone());
                    if !e.data.is_empty() {
                        group.2 = e.data.clone();
                    }
                    link = Some(group.0);
                }
                self.insert(
                    key,
                    Node {
                        mode: e.mode,
                        uid: e.uid,
                        gid: e.gid,
                        mtime: e.mtime,
                        rdev_major: e.rdev_major,
                        rdev_minor: e.rdev_minor,
                        data: e.data.clone(),
                        link,
                    },
                );
            }
            for (_, (group, members, data)) in groups {
                for key in members {
                    if let Some(node) = self.nodes.get_mut(&key)
                        && node.link == Some(group)
                    {
                        node.data = data.clone();
                    }
                }
            }
        }
        rejected
    }

    /// Put `node` at `key`. A non-directory replacing a directory removes what was
    /// below it; a directory replacing a directory keeps its contents.
    pub fn insert(&mut self, key: PathKey, node: Node) {
        if !node.is_dir() && self.nodes.get(&key).is_some_and(Node::is_dir) {
            self.remove_subtree(&key);
        }
        self.nodes.insert(key, node);
    }

    /// Remove `key` and everything below it; returns how many nodes went.
    pub fn remove_subtree(&mut self, key: &PathKey) -> usize {
        let doomed: Vec<PathKey> = self
            .nodes
            .range(key.clone()..)
            .take_while(|(k, _)| k.is_within(key))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &doomed {
            self.nodes.remove(k);
        }
        doomed.len()
    }

    /// Resolve `key` through the tree's symlinks the way the kernel would inside the
    /// initramfs, never climbing above the root. The last component is followed only
    /// if `follow_last`. Missing components are kept as they are.
    pub fn resolve(&self, key: &PathKey, follow_last: bool) -> Result<PathKey, InitrdError> {
        const MAX_HOPS: usize = 40;
        let mut pending: std::collections::VecDeque<Vec<u8>> =
            key.components().map(<[u8]>::to_vec).collect();
        let mut resolved = PathKey::root();
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            match &c[..] {
                b"" | b"." => continue,
                b".." => {
                    resolved = resolved.split_last().map(|(p, _)| p).unwrap_or_default();
                    continue;
                }
                _ => {}
            }
            let candidate = resolved.join(&c);
            match self.nodes.get(&candidate) {
                Some(node)
                    if node.file_type() == FileType::Symlink
                        && (follow_last || !pending.is_empty()) =>
                {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(InitrdError::SymlinkLoop(key.display()));
                    }
                    let target = &node.data;
                    if target.starts_with(b"/") {
                        resolved = PathKey::root();
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        pending.push_front(part.to_vec());
                    }
                }
                _ => resolved = candidate,
            }
        }
        Ok(resolved)
    }

    /// The tree as newc entries in archive order: sorted (parents before children),
    /// inodes renumbered from 1 (a hard-link group shares one number, its data stored
    /// with the last member as GNU cpio does), device numbers zero, mtimes clamped.
    /// Hard-linked files go at the end, after every directory. Data is shared, not
    /// copied.
    pub fn archive_entries(&self, opts: &WriteOptions) -> Vec<Entry> {
        self.archive_entries_keyed(opts)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// [`Tree::archive_entries`], each with the key of its node.
    pub fn archive_entries_keyed(&self, opts: &WriteOptions) -> Vec<(PathKey, Entry)> {
        let mut group_size: HashMap<u32, u32> = HashMap::new();
        for node in self.nodes.values() {
            if let Some(g) = node.link {
                *group_size.entry(g).or_default() += 1;
            }
        }
        let linked = |n: &Node| n.link.is_some_and(|g| group_size[&g] > 1);
        let plain = self.nodes.iter().filter(|(_, n)| !linked(n));
        let links = self.nodes.iter().filter(|(_, n)| linked(n));

        // A directory's link count is 2 plus its subdirectories, as on a filesystem.
        let mut subdirs: HashMap<PathKey, u32> = HashMap::new();
        for (key, node) in &self.nodes {
            if node.is_dir()
                && let Some((parent, _)) = key.split_last()
            {
                *subdirs.entry(parent).or_default() += 1;
            }
        }
        let mut entries = Vec::with_capacity(self.nodes.len());
        let mut ino = 0u32;
        // group -> (inode, members left to write)
        let mut group_ino: HashMap<u32, (u32, u32)> = HashMap::new();
        for (key, node) in plain {
            ino += 1;
            let nlink = if node.is_dir() {
                2 + subdirs.get(key).copied().unwrap_or(0)
            } else {
                1
            };
            entries.push((
                key.clone(),
                self.entry(key, node, ino, nlink, node.data.clone(), opts),
            ));
        }
        for (key, node) in links {
            let Some(g) = node.link else { continue };
            let size = group_size[&g];
            let (inode, left) = group_ino.entry(g).or_insert_with(|| {
                ino += 1;
                (ino, size)
            });
            *left -= 1;
            let data = if *left == 0 {
                node.data.clone()
            } else {
                Blob::default()
            };
            let inode = *inode;
            entries.push((key.clone(), self.entry(key, node, inode, size, data, opts)));
        }
        entries
    }

    /// Write the tree as one newc archive (see [`Tree::archive_entries`]) into
    /// `sink`, which is handed back.
    pub fn write_archive<W: Write>(&self, opts: &WriteOptions, sink: W) -> Result<W, InitrdError> {
        write_entries(&self.archive_entries(opts), sink)
    }

    fn entry(
        &self,
        key: &PathKey,
        node: &Node,
        ino: u32,
        nlink: u32,
        data: Blob,
        opts: &WriteOptions,
    ) -> Entry {
        let kind = node.file_type();
        let (rdev_major, rdev_minor) = match kind {
            FileType::Char | FileType::Block => (node.rdev_major, node.rdev_minor),
            _ => (0, 0),
        };
        let data = match kind {
            FileType::File | FileType::Symlink => data,
            _ => Blob::default(),
        };
        Entry {
            name: key.archive_name(),
            ino,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            nlink,
            mtime: opts.mtime_clamp.map_or(node.mtime, |c| node.mtime.min(c)),
            dev_major: 0,
            dev_minor: 0,
            rdev_major,
            rdev_minor,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> PathKey {
        PathKey::normalize(s.as_bytes()).unwrap()
    }

    fn file(data: &[u8]) -> Node {
        Node {
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime: 100,
            rdev_major: 0,
            rdev_minor: 0,
            data: Blob::from(data),
            link: None,
        }
    }

    fn symlink(target: &str) -> Node {
        Node {
            mode: 0o120777,
            ..file(target.as_bytes())
        }
    }

    #[test]
    fn normalization_and_order() {
        assert_eq!(key("./usr//bin/./sh").as_bytes(), b"usr/bin/sh");
        assert_eq!(key("/abs").as_bytes(), b"abs");
        assert!(key(".").is_root());
        assert!(PathKey::normalize(b"a/../b").is_none());
        let mut v = [
            key("a-b"),
            key("a/b"),
            key("a"),
            key(""),
            key("a/b/c"),
            key("a.b"),
        ];
        v.sort();
        let names: Vec<_> = v.iter().map(|k| k.display()).collect();
        assert_eq!(names, ["/", "/a", "/a/b", "/a/b/c", "/a-b", "/a.b"]);
        assert!(key("a/b").is_within(&key("a")));
        assert!(!key("ab").is_within(&key("a")));
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let mut t = Tree::new();
        t.insert(key("usr"), Node::dir(0o755, 0, 0, 0));
        t.insert(key("usr/lib"), Node::dir(0o755, 0, 0, 0));
        t.insert(key("lib"), symlink("usr/lib"));
        t.insert(key("usr/lib/up"), symlink("../../../../.."));
        t.insert(key("loop"), symlink("/loop"));
        assert_eq!(t.resolve(&key("lib/x"), false).unwrap(), key("usr/lib/x"));
        assert_eq!(t.resolve(&key("lib"), false).unwrap(), key("lib"));
        assert_eq!(t.resolve(&key("lib"), true).unwrap(), key("usr/lib"));
        assert_eq!(t.resolve(&key("lib/up/etc"), false).unwrap(), key("etc"));
        assert!(t.resolve(&key("loop/x"), false).is_err());
    }

    #[test]
    fn hardlinks_share_an_inode_and_data_goes_last() {
        let mut t = Tree::new();
        let g = t.new_link_group();
        t.insert(
            key("a"),
            Node {
                link: Some(g),
                ..file(b"same")
            },
        );
        t.insert(key("b"), file(b"other"));
        t.insert(
            key("c"),
            Node {
                link: Some(g),
                ..file(b"same")
            },
        );
        let opts = WriteOptions {
            mtime_clamp: Some(50),
        };
        let entries = t.archive_entries(&opts);
        let bytes = t.write_archive(&opts, Vec::new()).unwrap();
        assert_eq!(archive_len(&entries), bytes.len() as u64);
        let archive = cpio::read_archive(&Blob::new(bytes), 0).unwrap();
        let names: Vec<_> = archive.entries.iter().map(|e| e.name_lossy()).collect();
        // The link group comes after everything else.
        assert_eq!(names, ["b", "a", "c"]);
        let last = &archive.entries[1..];
        assert_eq!(last[0].ino, last[1].ino);
        assert_ne!(last[0].ino, archive.entries[0].ino);
        assert_eq!(last[0].nlink, 2);
        assert!(last[0].data.is_empty());
        assert_eq!(&*last[1].data, b"same");
        assert_eq!(last[1].mtime, 50);
        let mut back = Tree::new();
        back.add_archive_entries(last, &[0]);
        assert_eq!(&*back.nodes[&key("a")].data, b"same");
    }

    #[test]
    fn a_file_replacing_a_directory_removes_its_contents() {
        let mut t = Tree::new();
        t.insert(key("d"), Node::dir(0o755, 0, 0, 0));
        t.insert(key("d/x"), file(b"x"));
        t.insert(key("d"), Node::dir(0o700, 0, 0, 0));
        assert!(t.get(&key("d/x")).is_some());
        t.insert(key("d"), file(b"f"));
        assert!(t.get(&key("d/x")).is_none());
    }
}

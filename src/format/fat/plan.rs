//! The plan: every directory with its named entries (short name, long name if one is
//! needed), how many 32-byte slots it takes, and where everything goes in the data
//! area. Files and directories each get one contiguous run of clusters, handed out in
//! a depth-first walk: a directory, then its files, then its subdirectories.

use std::path::PathBuf;

use super::dir::lfn_slots;
use super::layout::Layout;
use super::name::{ShortName, ShortNames, exact_short_name};
use super::tree::{SrcDir, SrcKind};
use super::{FatError, FatType};

/// Most 32-byte entries one directory may hold (2 MiB of entries; `~N` tails and
/// many drivers assume no more).
pub const MAX_DIR_SLOTS: u64 = 65_536;

pub struct Plan {
    /// Index 0 is the root.
    pub dirs: Vec<PlanDir>,
    pub files: Vec<PlanFile>,
    /// Contiguous cluster runs (first, count), in increasing order, covering
    /// clusters 2..2 + used without gaps.
    pub runs: Vec<(u32, u32)>,
    has_label: bool,
}

pub struct PlanDir {
    pub parent: Option<usize>,
    pub entries: Vec<PlanEntry>,
    /// 32-byte entries it holds: "." and ".." (or the label in the root), long-name
    /// entries and short entries.
    pub slots: u64,
    /// 0 for the FAT16 root, which lives in its own region.
    pub first_cluster: u32,
    pub clusters: u32,
}

pub struct PlanEntry {
    /// The long name, when the short name alone cannot say it.
    pub long: Option<String>,
    pub short: ShortName,
    pub target: Target,
}

#[derive(Clone, Copy)]
pub enum Target {
    File(usize),
    Dir(usize),
}

pub struct PlanFile {
    pub path: PathBuf,
    pub size: u64,
    /// 0 for an empty file.
    pub first_cluster: u32,
    pub clusters: u32,
}

impl Plan {
    /// Name every entry of the tree. `has_label` reserves the root slot of the
    /// volume label entry.
    pub fn build(root: SrcDir, has_label: bool) -> Result<Plan, FatError> {
        let mut plan = Plan {
            dirs: Vec::new(),
            files: Vec::new(),
            runs: Vec::new(),
            has_label,
        };
        plan.add_dir(root, None)?;
        Ok(plan)
    }

    /// Slots the root directory needs.
    pub fn root_slots(&self) -> u64 {
        self.dirs.first().map_or(0, |d| d.slots)
    }

    fn add_dir(&mut self, src: SrcDir, parent: Option<usize>) -> Result<usize, FatError> {
        let index = self.dirs.len();
        let shorts = short_names(&src)?;
        // The root has no "." and ".." but may have the label.
        let mut slots: u64 = match parent {
            Some(_) => 2,
            None => u64::from(self.has_label),
        };
        for (e, (_, long)) in src.entries.iter().zip(&shorts) {
            slots += 1 + if *long { lfn_slots(&e.name) as u64 } else { 0 };
        }
        if slots > MAX_DIR_SLOTS {
            return Err(FatError::DirectoryTooLarge {
                path: src.path,
                entries: slots,
                max: MAX_DIR_SLOTS,
            });
        }
        self.dirs.push(PlanDir {
            parent,
            entries: Vec::with_capacity(src.entries.len()),
            slots,
            first_cluster: 0,
            clusters: 0,
        });
        for (e, (short, long)) in src.entries.into_iter().zip(shorts) {
            let target = match e.kind {
                SrcKind::File { size } => {
                    self.files.push(PlanFile {
                        path: e.path,
                        size,
                        first_cluster: 0,
                        clusters: 0,
                    });
                    Target::File(self.files.len() - 1)
                }
                SrcKind::Dir(sub) => Target::Dir(self.add_dir(sub, Some(index))?),
            };
            let entry = PlanEntry {
                long: long.then_some(e.name),
                short,
                target,
            };
            self.dirs[index].entries.push(entry);
        }
        Ok(index)
    }

    /// Give every directory and non-empty file its clusters, or say how much is missing.
    pub fn allocate(&mut self, layout: &Layout) -> Result<(), FatError> {
        let cluster = u64::from(layout.cluster_bytes());
        let root_in_region = layout.fat_type == FatType::Fat16;
        let dir_need = |d: &PlanDir, index: usize| {
            if index == 0 && root_in_region {
                0
            } else {
                (d.slots * 32).div_ceil(cluster).max(1)
            }
        };
        let needed: u64 = self
            .dirs
            .iter()
            .enumerate()
            .map(|(i, d)| dir_need(d, i))
            .chain(self.files.iter().map(|f| f.size.div_ceil(cluster)))
            .sum();
        if needed > u64::from(layout.clusters) {
            return Err(FatError::TreeTooLarge {
                fat_type: layout.fat_type,
                needed,
                available: layout.clusters,
                cluster_size: layout.cluster_bytes(),
            });
        }
        // Every count below is at most `layout.clusters`, so the u32 casts are exact.
        let mut next: u32 = 2;
        let mut runs = Vec::new();
        let mut take = |count: u64| -> u32 {
            if count == 0 {
                return 0;
            }
            let first = next;
            next += count as u32;
            runs.push((first, count as u32));
            first
        };
        let mut stack = vec![0usize];
        while let Some(d) = stack.pop() {
            let count = dir_need(&self.dirs[d], d);
            self.dirs[d].first_cluster = take(count);
            self.dirs[d].clusters = count as u32;
            for e in &self.dirs[d].entries {
                if let Target::File(f) = e.target {
                    let file = &mut self.files[f];
                    let count = file.size.div_ceil(cluster);
                    file.first_cluster = take(count);
                    file.clusters = count as u32;
                }
            }
            let subdirs = self.dirs[d]
                .entries
                .iter()
                .rev()
                .filter_map(|e| match e.target {
                    Target::Dir(sub) => Some(sub),
                    Target::File(_) => None,
                });
            stack.extend(subdirs);
        }
        self.runs = runs;
        Ok(())
    }

    pub fn used_clusters(&self) -> u32 {
        self.runs.iter().map(|r| r.1).sum()
    }
}

/// The short name of each entry of `dir` and whether it also needs a long name.
/// Names that already are upper-case 8.3 names keep them; then, in name order, a
/// name that only differs from an 8.3 name by case gets that name (plus a long name
/// keeping its case) if it is free; every other name gets a `~N` name.
fn short_names(dir: &SrcDir) -> Result<Vec<(ShortName, bool)>, FatError> {
    let mut names = ShortNames::default();
    let mut out: Vec<Option<(ShortName, bool)>> = dir
        .entries
        .iter()
        .map(|e| {
            exact_short_name(&e.name)
                .filter(|s| names.claim(*s))
                .map(|s| (s, false))
        })
        .collect();
    for (slot, e) in out.iter_mut().zip(&dir.entries) {
        if slot.is_some() {
            continue;
        }
        let short = match exact_short_name(&e.name.to_ascii_uppercase()) {
            Some(s) if names.claim(s) => s,
            _ => names
                .generate(&e.name)
                .ok_or_else(|| FatError::ShortNamesExhausted {
                    path: dir.path.clone(),
                    name: e.name.clone(),
                })?,
        };
        *slot = Some((short, true));
    }
    Ok(out.into_iter().flatten().collect())
}

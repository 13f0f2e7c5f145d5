//! vfat from a tree with kiln's FAT writer. The excluded subtrees become empty
//! directories through a staged view (FAT holds no hard links, so the view only
//! needs to exist, not to keep inodes).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{FsError, FsJob, stage};
use crate::format::fat::{FatOptions, write_fat};

pub fn make_vfat(
    image: &File,
    tree: &Path,
    exclude: &[PathBuf],
    job: &FsJob,
) -> Result<(), FsError> {
    let staged = stage::view_without(tree, exclude)?;
    let source = staged.path();
    let opts = FatOptions {
        size: job.size,
        fat_type: None,
        label: Some(job.label.clone()),
        volume_id: Some(job.volume_id),
        timestamp: Some(job.timestamp),
    };
    write_fat(image, job.offset, source, &opts).map_err(|source| FsError::Fat {
        label: job.label.clone(),
        source,
    })?;
    Ok(())
}

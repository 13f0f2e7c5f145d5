//! Byte formats of disk images. Pure and process-free: readers are `BlockSource`s
//! over `ReadAt`, writers take bytes in order.

pub mod configdrive;
pub mod cpio;
pub mod deb;
pub mod fat;
pub mod gpt;
pub mod initrd;
pub mod iso9660;
pub mod pkgarchive;
pub mod qcow2;
pub mod raw;
pub mod rpm;
pub mod source;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use source::{BlockSource, Extent, ExtentKind, MemDisk, ReadAt};

/// The on-disk container of a virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, FormatError> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            other => Err(FormatError::UnknownFormat(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("unknown image format {0:?} (expected raw or qcow2)")]
    UnknownFormat(String),
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Qcow2 {
        path: PathBuf,
        source: qcow2::Qcow2Error,
    },
}

/// Guess the format from the first bytes, the way qemu-img probes: qcow2 by magic,
/// anything else is raw.
pub fn probe(file: &dyn ReadAt) -> std::io::Result<ImageFormat> {
    let mut magic = [0u8; 4];
    let got = file.read_zero_padded(&mut magic, 0)?;
    Ok(if got == 4 && magic == qcow2::MAGIC {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

/// Probe the format of the image at `path`.
pub fn probe_path(path: &Path) -> Result<ImageFormat, FormatError> {
    let open_err = |source| FormatError::Open {
        path: path.to_path_buf(),
        source,
    };
    probe(&File::open(path).map_err(open_err)?).map_err(open_err)
}

/// Open `path` as a virtual disk, probing the format unless one is given.
/// Backing files of qcow2 images are opened too (relative to the image's folder).
pub fn open_image(
    path: &Path,
    format: Option<ImageFormat>,
) -> Result<(ImageFormat, Box<dyn BlockSource>), FormatError> {
    let file = File::open(path).map_err(|source| FormatError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let format = match format {
        Some(f) => f,
        None => probe(&file).map_err(|source| FormatError::Open {
            path: path.to_path_buf(),
            source,
        })?,
    };
    let source: Box<dyn BlockSource> = match format {
        ImageFormat::Raw => {
            Box::new(
                raw::RawImage::new(file).map_err(|source| FormatError::Open {
                    path: path.to_path_buf(),
                    source,
                })?,
            )
        }
        ImageFormat::Qcow2 => {
            Box::new(qcow2::Qcow2Image::open_path(path, file).map_err(|source| {
                FormatError::Qcow2 {
                    path: path.to_path_buf(),
                    source,
                }
            })?)
        }
    };
    Ok((format, source))
}

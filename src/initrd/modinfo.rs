//! A kernel module's `.modinfo` section (`key=value` strings separated by NULs),
//! read through the decompressor its file name asks for: `.ko`, `.ko.xz`,
//! `.ko.zst`, `.ko.gz`.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::elfparse::{Elf, ParseError};
use crate::format::pkgarchive::{Compression, decoder};

/// Largest decompressed module accepted (the biggest real ones are ~20 MiB).
const MAX_MODULE: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ModinfoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: decompressed module is larger than {MAX_MODULE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {source}")]
    Elf {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

/// The `.modinfo` entries in file order; a module without the section has none.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, ModinfoError> {
    let bytes = decompressed(path)?;
    let elf = Elf::parse(&bytes).map_err(|source| ModinfoError::Elf {
        path: path.to_path_buf(),
        source,
    })?;
    let sec = elf
        .section(".modinfo")
        .map_err(|source| ModinfoError::Elf {
            path: path.to_path_buf(),
            source,
        })?
        .unwrap_or(&[]);
    Ok(parse(sec))
}

/// Split a `.modinfo` section into (key, value) pairs.
pub fn parse(sec: &[u8]) -> Vec<(String, String)> {
    sec.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The module's bytes, decompressed according to its name.
pub fn decompressed(path: &Path) -> Result<Vec<u8>, ModinfoError> {
    let io_err = |source| ModinfoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = BufReader::new(File::open(path).map_err(io_err)?);
    let name = path.to_string_lossy();
    let compression = if name.ends_with(".xz") {
        Compression::Xz
    } else if name.ends_with(".zst") {
        Compression::Zstd
    } else if name.ends_with(".gz") {
        Compression::Gzip
    } else {
        Compression::None
    };
    // The take() bounds what a hostile module can expand to; TooLarge below names it.
    let mut out = Vec::new();
    decoder(compression, f, u64::MAX)
        .map_err(io_err)?
        .take(MAX_MODULE + 1)
        .read_to_end(&mut out)
        .map_err(io_err)?;
    if out.len() as u64 > MAX_MODULE {
        return Err(ModinfoError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// The name a module is known by: its file name without `.ko[.xz|.zst|.gz]`,
/// with '-' written as '_' (the kernel treats them alike).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .unwrap_or(base);
    normalize(stem)
}

/// '-' and '_' are the same in module names.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_entries() {
        assert_eq!(module_name("kernel/drivers/nvme-core.ko.zst"), "nvme_core");
        assert_eq!(module_name("a/b/x.ko"), "x");
        assert_eq!(
            parse(b"\0\0license=GPL\0softdep=pre: a b\0junk\0firmware=x/y.bin\0\0"),
            [
                ("license".to_string(), "GPL".to_string()),
                ("softdep".to_string(), "pre: a b".to_string()),
                ("firmware".to_string(), "x/y.bin".to_string())
            ]
        );
    }

    #[test]
    fn corrupt_compressed_modules_are_errors() {
        let t = tempfile::tempdir().unwrap();
        for n in ["m.ko.xz", "m.ko.zst", "m.ko.gz", "m.ko"] {
            let p = t.path().join(n);
            std::fs::write(&p, b"\xfd7zXZ\0garbage").unwrap();
            assert!(read(&p).is_err(), "{n}");
        }
    }
}

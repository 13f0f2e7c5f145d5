//! `kiln image info`: what an image is and what it holds.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::format::gpt::{GptTable, read_gpt};
use crate::format::qcow2::{CompressionType, Qcow2Image};
use crate::format::{FormatError, ImageFormat, open_image};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageInfo {
    pub filename: String,
    pub format: ImageFormat,
    pub virtual_size: u64,
    /// Bytes the file occupies on the host (allocated blocks).
    pub disk_size: u64,
    pub cluster_size: Option<u64>,
    /// The image's compression algorithm (as qemu-img reports it: every qcow2 has
    /// one, whether or not any cluster is compressed); null for raw.
    pub compression: Option<CompressionType>,
    pub qcow2: Option<Qcow2Details>,
    /// Every image below this one, nearest first.
    pub backing_chain: Vec<ChainEntry>,
    /// The GPT on the guest disk, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<GptTable>,
    /// Why a GPT-looking table could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Qcow2Details {
    pub version: u32,
    /// As qemu-img names versions: "0.10" (v2) or "1.1" (v3).
    pub compat: &'static str,
    pub compression_type: CompressionType,
    pub refcount_bits: u32,
    pub lazy_refcounts: bool,
    pub extended_l2: bool,
    pub dirty: bool,
    pub corrupt: bool,
    pub allocated_clusters: u64,
    pub compressed_clusters: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainEntry {
    pub filename: String,
    pub format: ImageFormat,
    pub virtual_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error(transparent)]
    Open(#[from] FormatError),
}

pub fn image_info(path: &Path, format: Option<ImageFormat>) -> Result<ImageInfo, InfoError> {
    let (format, image) = open_image(path, format)?;
    let disk_size = std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .map_err(|source| FormatError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let mut info = ImageInfo {
        filename: path.display().to_string(),
        format,
        virtual_size: image.virtual_size(),
        disk_size,
        cluster_size: None,
        compression: None,
        qcow2: None,
        backing_chain: Vec::new(),
        partitions: None,
        partition_error: None,
    };
    match read_gpt(image.as_ref()) {
        Ok(table) => info.partitions = table,
        Err(e) => info.partition_error = Some(e.to_string()),
    }
    // The qcow2-only details come from the image already open, not a second open.
    let any: &dyn std::any::Any = image.as_ref();
    if let Some(q) = any.downcast_ref::<Qcow2Image>() {
        describe_qcow2(q, &mut info).map_err(|source| FormatError::Qcow2 {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(info)
}

fn describe_qcow2(
    q: &Qcow2Image,
    info: &mut ImageInfo,
) -> Result<(), crate::format::qcow2::Qcow2Error> {
    use crate::format::qcow2::header::{INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
    let h = q.header();
    let (allocated, compressed) = q.allocation_counts()?;
    info.cluster_size = Some(h.cluster_size());
    info.compression = Some(h.compression);
    info.qcow2 = Some(Qcow2Details {
        version: h.version,
        compat: if h.version == 2 { "0.10" } else { "1.1" },
        compression_type: h.compression,
        refcount_bits: h.refcount_bits(),
        lazy_refcounts: h.lazy_refcounts(),
        extended_l2: h.extended_l2(),
        dirty: h.incompatible & INCOMPAT_DIRTY != 0,
        corrupt: h.incompatible & INCOMPAT_CORRUPT != 0,
        allocated_clusters: allocated,
        compressed_clusters: compressed,
        backing_file: h.backing_file.clone(),
        backing_format: h.backing_format.clone(),
    });
    let mut layer = q.backing();
    while let Some(b) = layer {
        info.backing_chain.push(ChainEntry {
            filename: b.path.display().to_string(),
            format: b.format,
            virtual_size: b.image.virtual_size(),
        });
        let any: &dyn std::any::Any = b.image.as_ref();
        layer = any.downcast_ref::<Qcow2Image>().and_then(|q| q.backing());
    }
    Ok(())
}

/// Human-readable rendering, in the spirit of `qemu-img info`.
pub fn render_text(info: &ImageInfo) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k}: {v}\n"));
    line("image", info.filename.clone());
    line("file format", info.format.to_string());
    line(
        "virtual size",
        format!("{} ({} bytes)", human(info.virtual_size), info.virtual_size),
    );
    line("disk size", human(info.disk_size));
    if let Some(cs) = info.cluster_size {
        line("cluster_size", cs.to_string());
    }
    if let Some(q) = &info.qcow2 {
        if let Some(b) = &q.backing_file {
            line("backing file", b.clone());
        }
        if let Some(f) = &q.backing_format {
            line("backing file format", f.clone());
        }
        line("compat", q.compat.to_string());
        line("compression type", q.compression_type.name().to_string());
        line(
            "clusters",
            format!(
                "{} allocated, {} compressed",
                q.allocated_clusters, q.compressed_clusters
            ),
        );
        line("refcount bits", q.refcount_bits.to_string());
        line("lazy refcounts", q.lazy_refcounts.to_string());
        line("extended l2", q.extended_l2.to_string());
        if q.dirty {
            line("dirty", "true".into());
        }
        if q.corrupt {
            line("corrupt", "true".into());
        }
    }
    for (depth, b) in info.backing_chain.iter().enumerate() {
        line(
            &format!("backing chain [{}]", depth + 1),
            format!("{} ({}, {})", b.filename, b.format, human(b.virtual_size)),
        );
    }
    if let Some(t) = &info.partitions {
        out.push_str(&format!(
            "partition table: gpt, disk guid {}\n",
            t.disk_guid
        ));
        if !t.primary_ok {
            out.push_str("  primary GPT header damaged; read from the backup\n");
        } else if !t.backup_ok {
            out.push_str("  backup GPT header missing or different from the primary\n");
        }
        for p in &t.partitions {
            let bytes = (p.last_lba + 1 - p.first_lba) * t.sector_size;
            out.push_str(&format!(
                "  {:>3}  {:>12} {:>12}  {:>10}  {:<24} {:?} {}\n",
                p.number,
                p.first_lba,
                p.last_lba,
                human(bytes),
                p.type_name.unwrap_or("unknown type"),
                p.name,
                p.part_guid
            ));
        }
    }
    if let Some(e) = &info.partition_error {
        out.push_str(&format!("partition table: unreadable GPT: {e}\n"));
    }
    out
}

/// Sizes the way qemu-img prints them: 1.5 GiB, 64 KiB, 512 B.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let num = format!("{v:.3}");
    let num = num.trim_end_matches('0').trim_end_matches('.');
    format!("{num} {}", UNITS[unit])
}

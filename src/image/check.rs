//! `kiln image check`: metadata consistency, with qemu-img's exit codes.

use std::path::Path;

use crate::format::qcow2::check::{CheckReport, check};
use crate::format::{FormatError, ImageFormat, ReadAt, probe};

/// What a check found, most serious first. Exit codes follow `qemu-img check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Clean,
    Leaks,
    Corrupt,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Clean => 0,
            Verdict::Corrupt => 2,
            Verdict::Leaks => 3,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageCheck {
    pub filename: String,
    pub format: ImageFormat,
    pub verdict: Verdict,
    /// None for raw images, which have no metadata.
    pub qcow2: Option<CheckReport>,
}

pub fn check_image(path: &Path, format: Option<ImageFormat>) -> Result<ImageCheck, FormatError> {
    let open_err = |source| FormatError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(open_err)?;
    let format = match format {
        Some(f) => f,
        None => probe(&file as &dyn ReadAt).map_err(open_err)?,
    };
    let filename = path.display().to_string();
    if format == ImageFormat::Raw {
        return Ok(ImageCheck {
            filename,
            format,
            verdict: Verdict::Clean,
            qcow2: None,
        });
    }
    let report = check(&file).map_err(|source| FormatError::Qcow2 {
        path: path.to_path_buf(),
        source,
    })?;
    let verdict = if report.corruptions > 0 {
        Verdict::Corrupt
    } else if report.leaked_clusters > 0 {
        Verdict::Leaks
    } else {
        Verdict::Clean
    };
    Ok(ImageCheck {
        filename,
        format,
        verdict,
        qcow2: Some(report),
    })
}

/// Human-readable rendering, in the spirit of `qemu-img check`.
pub fn render_text(c: &ImageCheck) -> String {
    let Some(r) = &c.qcow2 else {
        return format!("{}: raw image, no metadata to check.\n", c.filename);
    };
    let mut out = String::new();
    for w in &r.warnings {
        out.push_str(&format!("Warning: {w}\n"));
    }
    for m in &r.messages {
        out.push_str(m);
        out.push('\n');
    }
    let shown = r.messages.len() as u64;
    if r.corruptions + r.leaked_clusters > shown {
        out.push_str(&format!(
            "({} more problems not listed)\n",
            r.corruptions + r.leaked_clusters - shown
        ));
    }
    if r.corruptions > 0 {
        out.push_str(&format!(
            "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
            r.corruptions
        ));
    }
    if r.leaked_clusters > 0 {
        out.push_str(&format!(
            "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
            r.leaked_clusters
        ));
    }
    if r.is_clean() {
        out.push_str("No errors were found on the image.\n");
    }
    let pct = if r.total_clusters > 0 {
        r.allocated_clusters as f64 * 100.0 / r.total_clusters as f64
    } else {
        0.0
    };
    out.push_str(&format!(
        "{}/{} = {pct:.2}% allocated, {} compressed clusters\nImage end offset: {}\n",
        r.allocated_clusters, r.total_clusters, r.compressed_clusters, r.image_end_offset
    ));
    out
}

//! Mount points as the calling thread's namespace sees them
//! (/proc/thread-self/mountinfo, see proc(5)).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Undo the octal escapes (`\040` for a space, ...) of a mountinfo or fstab field.
pub fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// The mount points listed in a mountinfo text, in the order listed.
pub fn parse_mount_points(text: &[u8]) -> Vec<PathBuf> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape_octal(field))))
        .collect()
}

/// Mount points strictly below `dir` (not `dir` itself), deepest first, so
/// that detaching them in this order never hits a parent before its child.
/// A point mounted over twice is listed twice: each detach removes one layer.
pub fn mounts_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read("/proc/thread-self/mountinfo")?;
    Ok(below(&parse_mount_points(&text), dir))
}

fn below(points: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = points
        .iter()
        .filter(|p| p.starts_with(dir) && p.as_os_str().len() > dir.as_os_str().len())
        .cloned()
        .collect();
    found.sort_by(|a, b| {
        let len = |p: &PathBuf| p.as_os_str().as_bytes().len();
        len(b).cmp(&len(a)).then_with(|| a.cmp(b))
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
        40 27 0:30 / /build/my\\040tree rw - tmpfs tmpfs rw\n\
        41 40 0:31 / /build/my\\040tree/proc rw - proc proc rw\n\
        42 40 0:32 / /build/my\\040tree/dev/pts rw - devpts devpts rw\n\
        43 27 0:33 / /build/my\\040treeX rw - tmpfs tmpfs rw\n";

    #[test]
    fn unescapes_octal_sequences() {
        let points = parse_mount_points(SAMPLE);
        assert_eq!(points[1], Path::new("/build/my tree"));
        assert_eq!(unescape_octal(b"a\\134b"), b"a\\b");
        // A trailing backslash without three digits stays as it is.
        assert_eq!(unescape_octal(b"a\\04"), b"a\\04");
    }

    #[test]
    fn lists_only_mounts_strictly_below_deepest_first() {
        let points = parse_mount_points(SAMPLE);
        let found = below(&points, Path::new("/build/my tree"));
        assert_eq!(
            found,
            vec![
                PathBuf::from("/build/my tree/dev/pts"),
                PathBuf::from("/build/my tree/proc"),
            ]
        );
    }
}

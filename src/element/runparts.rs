//! diskimage-builder's run-parts rules: which files of a phase folder run, and in
//! which order; and which environment.d files are sourced, in which order.
//!
//! DIB lists executable regular files (symlinks followed) whose names match
//! `^[0-9A-Za-z_-]+$` and orders them with `LC_ALL=C sort -n`: by the number the
//! name starts with (no number counts as 0), ties broken bytewise. Other files are
//! skipped; DIB reports them only with tracing on, so kiln returns them to the
//! caller to log. environment.d files need not be executable, may contain dots,
//! and DIB sorts their full paths with `sort -n`; since a path never starts with
//! a digit, that is plain bytewise order of the names.

use std::cmp::Ordering;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Why a file in a phase folder does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    NotExecutable,
    BadName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: SkipReason,
}

/// Names a phase folder may run: `^[0-9A-Za-z_-]+$`.
pub fn is_script_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Names environment.d may source: `^[0-9A-Za-z_.-]+$`.
pub fn is_environment_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The leading number `sort -n` sees: optional '-', then digits. Returned as
/// (negative, digits without leading zeros); no digits means zero.
fn leading_number(name: &str) -> (bool, &str) {
    let (negative, rest) = match name.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    let end = rest.bytes().take_while(u8::is_ascii_digit).count();
    let digits = rest[..end].trim_start_matches('0');
    // "-0" and "-" are zero, not negative.
    (negative && !digits.is_empty(), digits)
}

fn compare_magnitude(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// `LC_ALL=C sort -n` order of two names (arbitrary-length numbers, no overflow).
pub fn numeric_order(a: &str, b: &str) -> Ordering {
    let (neg_a, num_a) = leading_number(a);
    let (neg_b, num_b) = leading_number(b);
    let by_number = match (neg_a, neg_b) {
        (false, false) => compare_magnitude(num_a, num_b),
        (true, true) => compare_magnitude(num_b, num_a),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    };
    by_number.then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// The result of listing one phase folder.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    /// File names that run, in run order.
    pub run: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// List `dir` as dib-run-parts does. A missing folder runs nothing.
pub fn list_scripts(dir: &Path) -> std::io::Result<Listing> {
    let mut listing = Listing::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        // Follows symlinks; a dangling link is not a file and is left out, as
        // find -xtype f does.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.permissions().mode() & 0o111 == 0 {
            listing.skipped.push(Skipped {
                name,
                reason: SkipReason::NotExecutable,
            });
        } else if !is_script_name(&name) {
            listing.skipped.push(Skipped {
                name,
                reason: SkipReason::BadName,
            });
        } else {
            listing.run.push(name);
        }
    }
    listing.run.sort_by(|a, b| numeric_order(a, b));
    listing.skipped.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(listing)
}

/// environment.d file names in the order DIB sources them.
pub fn list_environment(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let is_file = std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file());
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_file && is_environment_name(&name) {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        v.sort_by(|a, b| numeric_order(a, b));
        v
    }

    #[test]
    fn numeric_prefix_then_bytes() {
        assert_eq!(
            sorted(&["50-b", "9-z", "100-a", "50-a", "zz", "00-x", "Z", "010-y"]),
            ["00-x", "Z", "zz", "9-z", "010-y", "50-a", "50-b", "100-a"]
        );
    }

    #[test]
    fn huge_and_negative_numbers_do_not_overflow() {
        assert_eq!(
            sorted(&["99999999999999999999999-a", "5", "-3-x", "-10", "-0"]),
            ["-10", "-3-x", "-0", "5", "99999999999999999999999-a"]
        );
    }

    /// GNU `sort -n` in the C locale is the oracle DIB itself uses.
    #[test]
    fn agrees_with_gnu_sort_n() {
        let names = [
            "10-a",
            "9-b",
            "09-b",
            "0100-c",
            "abc",
            "ABC",
            "_x",
            "-x",
            "-5-y",
            "--1",
            "5-",
            "5",
            "50",
            "5a",
            "000",
            "0",
            "1-1",
            "1_1",
            "18446744073709551617-big",
        ];
        let mut child = std::process::Command::new("sort")
            .arg("-n")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(names.join("\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let expected: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(sorted(&names), expected);
    }

    #[test]
    fn name_rules() {
        assert!(is_script_name("10-foo_Bar"));
        for bad in ["", "10-foo.sh", "a b", "foo~", ".hidden", "x/y"] {
            assert!(!is_script_name(bad), "{bad}");
        }
        assert!(is_environment_name("10-foo.bash"));
        assert!(!is_environment_name("10-foo.bash~"));
    }

    #[test]
    fn listing_skips_non_executables_bad_names_dirs_and_dangling_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |name: &str, mode: u32| {
            fs::write(d.join(name), "#!/bin/sh\n").unwrap();
            fs::set_permissions(d.join(name), fs::Permissions::from_mode(mode)).unwrap();
        };
        write("20-second", 0o755);
        write("10-first", 0o700);
        write("05-readme", 0o644);
        write("30-tool.sh", 0o755);
        write("target", 0o755);
        fs::create_dir(d.join("15-dir")).unwrap();
        std::os::unix::fs::symlink("target", d.join("12-link")).unwrap();
        std::os::unix::fs::symlink("missing", d.join("13-dangling")).unwrap();
        let listing = list_scripts(d).unwrap();
        assert_eq!(listing.run, ["target", "10-first", "12-link", "20-second"]);
        assert_eq!(
            listing.skipped,
            [
                Skipped {
                    name: "05-readme".into(),
                    reason: SkipReason::NotExecutable
                },
                Skipped {
                    name: "30-tool.sh".into(),
                    reason: SkipReason::BadName
                },
            ]
        );
        assert_eq!(list_scripts(&d.join("nope")).unwrap(), Listing::default());
    }

    #[test]
    fn environment_files_sort_bytewise_not_numerically() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["9-late", "10-early.bash", "01-a", "bad~", "B"] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        fs::create_dir(dir.path().join("00-dir")).unwrap();
        assert_eq!(
            list_environment(dir.path()).unwrap(),
            ["01-a", "10-early.bash", "9-late", "B"]
        );
    }
}

//! Shell-style wildcards: `*`, `?` and `[...]` classes (with `!`/`^` negation and
//! ranges). Used for module aliases (`pci:v00008086d*`) and for `include` lines of
//! ld.so.conf. Matching is iterative with one backtrack point, so hostile patterns
//! stay linear-ish and never recurse.

use std::path::Path;

/// Does `text` match the wildcard `pattern`? (`/` is an ordinary character.)
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((ok, next)) = class(&p, pi, t[ti])
                        && ok
                    {
                        pi = next;
                        ti += 1;
                        continue;
                    } else if class(&p, pi, t[ti]).is_none() && t[ti] == '[' {
                        // An unterminated '[' is a literal.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == t[ti] {
                        pi += 2;
                        ti += 1;
                        continue;
                    }
                }
                c => {
                    if c == t[ti] {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Match `c` against the class starting at `p[start] == '['`. Returns whether it
/// matched and the index after the class, or `None` if the class is unterminated.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&h| h != ']') {
            let hi = p[i + 2];
            if lo <= c && c <= hi {
                hit = true;
            }
            i += 3;
        } else {
            if lo == c {
                hit = true;
            }
            i += 1;
        }
    }
}

fn has_wild(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expand an absolute wildcard path (as written inside `root`) to the matching
/// paths inside the root, sorted. Hidden names match only a pattern starting with
/// '.', like the shell. Directories that cannot be read give no matches.
pub fn glob_in_root(root: &Path, pattern: &str) -> Vec<String> {
    let mut found = vec![String::new()];
    for part in pattern.split('/').filter(|p| !p.is_empty()) {
        let mut next = Vec::new();
        for base in &found {
            if !has_wild(part) {
                let cand = format!("{base}/{part}");
                if std::fs::symlink_metadata(super::hostpath::host_path(root, &cand)).is_ok() {
                    next.push(cand);
                }
                continue;
            }
            let dir = super::hostpath::host_path(root, if base.is_empty() { "/" } else { base });
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.') || part.starts_with('.'))
                .filter(|n| matches(part, n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| format!("{base}/{n}")));
        }
        found = next;
    }
    found.retain(|p| !p.is_empty());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("*.conf", "libc.conf"));
        assert!(!matches("*.conf", "libc.conf~"));
        assert!(matches(
            "pci:v00008086d*sv*",
            "pci:v00008086d00001234sv0000"
        ));
        assert!(matches("a?c", "abc"));
        assert!(matches("[a-c]x", "bx"));
        assert!(!matches("[!a-c]x", "bx"));
        assert!(matches("[]]", "]"));
        assert!(matches("[", "["));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        assert!(matches("**a**b", "xxaxxb"));
        // A long hostile pattern finishes.
        let p = "*a".repeat(200);
        assert!(!matches(&p, &"a".repeat(199)));
    }

    #[test]
    fn glob_lists_matching_files() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc/ld.so.conf.d")).unwrap();
        for n in ["b.conf", "a.conf", "c.txt", ".h.conf"] {
            std::fs::write(t.path().join("etc/ld.so.conf.d").join(n), "").unwrap();
        }
        assert_eq!(
            glob_in_root(t.path(), "/etc/ld.so.conf.d/*.conf"),
            ["/etc/ld.so.conf.d/a.conf", "/etc/ld.so.conf.d/b.conf"]
        );
    }
}

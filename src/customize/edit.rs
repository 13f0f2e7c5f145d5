//! `--edit FILE:s/RE/REPL/FLAGS`: a perl-like substitution applied to each
//! line of a file, as `perl -pe` would (the line's terminator is not part of
//! what the expression sees). Supported flags: g (all matches), i (ignore
//! case), plus m, s and x passed to the regex engine. In REPL, `$1`, `${1}`
//! and `\1` name groups; `\n`, `\t` and an escaped delimiter are literals.

use regex::{Regex, RegexBuilder};

#[derive(Debug, Clone)]
pub struct Substitution {
    regex: Regex,
    /// The replacement in the regex crate's syntax.
    replacement: String,
    global: bool,
}

impl Substitution {
    /// Parse `s/RE/REPL/FLAGS` (any delimiter after the `s`). The error says why.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let rest = expr
            .strip_prefix('s')
            .ok_or("only s/REGEX/REPLACEMENT/FLAGS expressions are supported")?;
        let delim = rest.chars().next().ok_or("missing delimiter after `s`")?;
        if delim.is_alphanumeric() || delim == '\\' || delim.is_whitespace() {
            return Err(format!("`{delim}` cannot be a delimiter"));
        }
        let parts = split_unescaped(&rest[delim.len_utf8()..], delim);
        let [pattern, replacement, flags] = parts.as_slice() else {
            return Err(format!(
                "expected s{delim}REGEX{delim}REPLACEMENT{delim}FLAGS"
            ));
        };
        let mut builder = RegexBuilder::new(pattern);
        let mut global = false;
        for flag in flags.chars() {
            match flag {
                'g' => global = true,
                'i' => {
                    builder.case_insensitive(true);
                }
                'm' => {
                    builder.multi_line(true);
                }
                's' => {
                    builder.dot_matches_new_line(true);
                }
                'x' => {
                    builder.ignore_whitespace(true);
                }
                other => return Err(format!("unsupported flag `{other}`")),
            }
        }
        let regex = builder
            .build()
            .map_err(|e| format!("bad regular expression: {e}"))?;
        Ok(Substitution {
            regex,
            replacement: convert_replacement(replacement),
            global,
        })
    }

    pub fn apply_line(&self, line: &str) -> String {
        let limit = if self.global { 0 } else { 1 };
        self.regex
            .replacen(line, limit, self.replacement.as_str())
            .into_owned()
    }

    /// Apply to every line of `text`, keeping each line's terminator.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            let (body, end) = match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            };
            out.push_str(&self.apply_line(body));
            out.push_str(end);
        }
        out
    }
}

/// Split at unescaped `delim`; `\delim` becomes `delim`, other escapes stay.
fn split_unescaped(text: &str, delim: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) if n == delim => parts.last_mut().expect("one part").push(n),
                Some(n) => {
                    let part = parts.last_mut().expect("one part");
                    part.push('\\');
                    part.push(n);
                }
                None => parts.last_mut().expect("one part").push('\\'),
            }
        } else if c == delim {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("one part").push(c);
        }
    }
    parts
}

/// Perl replacement -> regex crate replacement: `\1` and `$1` become `${1}`,
/// a literal `$` is doubled, `\n`/`\t` become the characters.
fn convert_replacement(perl: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = perl.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                let n = chars[i + 1];
                i += 2;
                match n {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    '$' => out.push_str("$$"),
                    d if d.is_ascii_digit() => {
                        out.push_str(&format!("${{{d}}}"));
                    }
                    other => out.push(other),
                }
                continue;
            }
            '$' => {
                let digits: String = chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                if !digits.is_empty() {
                    out.push_str(&format!("${{{digits}}}"));
                    i += 1 + digits.len();
                    continue;
                }
                if chars.get(i + 1) == Some(&'{') {
                    // ${name} passes through as it is.
                    out.push('$');
                } else {
                    out.push_str("$$");
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_first_or_all_per_line() {
        let s = Substitution::parse("s/a/b/").unwrap();
        assert_eq!(s.apply("aaa\na\n"), "baa\nb\n");
        let g = Substitution::parse("s/a/b/g").unwrap();
        assert_eq!(g.apply("aaa\nxa"), "bbb\nxb");
    }

    #[test]
    fn groups_case_and_delimiters() {
        let s = Substitution::parse(r"s|^(\w+)=(.*)$|\2=$1|i").unwrap();
        assert_eq!(s.apply("Key=val\n"), "val=Key\n");
        let i = Substitution::parse("s/ROOT/x/i").unwrap();
        assert_eq!(i.apply("root"), "x");
        let slash = Substitution::parse(r"s/\/usr/\/opt/").unwrap();
        assert_eq!(slash.apply("/usr/bin"), "/opt/bin");
        let dollar = Substitution::parse(r"s/x/a$b/").unwrap();
        assert_eq!(dollar.apply("x"), "a$b");
    }

    #[test]
    fn rejects_bad_expressions() {
        assert!(Substitution::parse("y/a/b/").is_err());
        assert!(Substitution::parse("s/a/b").is_err());
        assert!(Substitution::parse("s/(/b/").is_err());
        assert!(Substitution::parse("s/a/b/q").is_err());
    }
}

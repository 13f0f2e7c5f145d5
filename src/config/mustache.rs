//! Mustache as pystache renders it for os-apply-config: missing keys render
//! empty, nothing is HTML-escaped, non-string values are written as JSON.
//!
//! Tag recognition follows pystache's parser rather than the mustache spec
//! where the two differ, because rendered files must match os-apply-config
//! byte for byte: a tag is `otag \s* body \s* ctag` with the spaces or tabs
//! before it; section, comment, partial and delimiter tags alone on a line
//! (no trailing blanks allowed) take the line with them; dotted names look up
//! the first part through the context stack and the rest inside objects only.
//! Partials render empty (pystache would read them from the working folder).
//! An unclosed section renders as pystache renders it (see `Template::parse`).

use super::value::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MustacheError {
    #[error(
        "section end tag mismatch at offset {offset}: found {{{{/{found}}}}}, expected {{{{/{expected}}}}}"
    )]
    SectionMismatch {
        offset: usize,
        found: String,
        expected: String,
    },
    #[error("set-delimiter tag at offset {0} needs two delimiters")]
    BadDelimiters(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Variable(String),
    Section(String, Vec<Node>),
    Inverted(String, Vec<Node>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug)]
enum TagKind {
    /// `{{=<% %>=}}`
    Delimiters(String),
    /// `{{{name}}}` or `{{&name}}`
    Raw(String),
    /// `{{name}}`, `{{#name}}`, `{{^name}}`, `{{/name}}`, `{{!...}}`, `{{>name}}`
    Tag(Option<char>, String),
}

struct TagMatch {
    /// Start of the blanks before the opening delimiter.
    start: usize,
    blanks: usize,
    end: usize,
    kind: TagKind,
}

fn skip_whitespace(text: &str, mut pos: usize) -> usize {
    while let Some(c) = text[pos..].chars().next() {
        if !c.is_whitespace() {
            break;
        }
        pos += c.len_utf8();
    }
    pos
}

/// Start of the whitespace run that ends at `pos`, not going below `floor`.
fn whitespace_start(text: &str, floor: usize, pos: usize) -> usize {
    let mut start = pos;
    while let Some(c) = text[floor..start].chars().next_back() {
        if !c.is_whitespace() {
            break;
        }
        start -= c.len_utf8();
    }
    start
}

fn next_char_end(text: &str, pos: usize) -> Option<usize> {
    text[pos..].chars().next().map(|c| pos + c.len_utf8())
}

/// `\s* ctag` at `pos`: the end of the match.
fn closes_at(text: &str, pos: usize, ctag: &str) -> Option<usize> {
    let p = skip_whitespace(text, pos);
    text[p..].starts_with(ctag).then(|| p + ctag.len())
}

/// `name \s* TERM \s* ctag` where name is one or more characters without a
/// newline: the shortest such name and the end of the match.
fn name_then(text: &str, a: usize, term: char, ctag: &str) -> Option<(String, usize)> {
    let min_end = next_char_end(text, a)?;
    let mut search = min_end;
    while let Some(found) = text[search..].find(term) {
        let r = search + found;
        if let Some(end) = closes_at(text, r + term.len_utf8(), ctag) {
            let name_end = whitespace_start(text, min_end, r);
            let name = &text[a..name_end];
            if name.contains('\n') {
                return None;
            }
            return Some((name.to_string(), end));
        }
        search = r + term.len_utf8();
    }
    None
}

/// `key \s* ctag` with key one or more characters of anything.
fn key_then(text: &str, a: usize, ctag: &str) -> Option<(String, usize)> {
    let min_end = next_char_end(text, a)?;
    let c = min_end + text[min_end..].find(ctag)?;
    let key_end = whitespace_start(text, min_end, c);
    Some((text[a..key_end].to_string(), c + ctag.len()))
}

fn match_body(text: &str, open_end: usize, ctag: &str) -> Option<(TagKind, usize)> {
    let a = skip_whitespace(text, open_end);
    let rest = &text[a..];
    if rest.starts_with('=') {
        let b = skip_whitespace(text, a + 1);
        if let Some((delims, end)) = name_then(text, b, '=', ctag) {
            return Some((TagKind::Delimiters(delims), end));
        }
    }
    if rest.starts_with('{') {
        let b = skip_whitespace(text, a + 1);
        if let Some((name, end)) = name_then(text, b, '}', ctag) {
            return Some((TagKind::Raw(name), end));
        }
    }
    if let Some(sigil) = rest.chars().next().filter(|c| "!>&/#^".contains(*c)) {
        let b = skip_whitespace(text, a + 1);
        if let Some((key, end)) = key_then(text, b, ctag) {
            return Some((TagKind::Tag(Some(sigil), key), end));
        }
    }
    // pystache lets `\s*` give back what it took when nothing else fits,
    // so `{{ }}` is a tag whose key is a blank.
    for start in [a, open_end] {
        if let Some((key, end)) = key_then(text, start, ctag) {
            return Some((TagKind::Tag(None, key), end));
        }
    }
    None
}

fn find_tag(text: &str, from: usize, otag: &str, ctag: &str) -> Option<TagMatch> {
    let mut search = from;
    while let Some(found) = text[search..].find(otag) {
        let j = search + found;
        if let Some((kind, end)) = match_body(text, j + otag.len(), ctag) {
            let start = j - text[from..j]
                .bytes()
                .rev()
                .take_while(|b| *b == b' ' || *b == b'\t')
                .count();
            return Some(TagMatch {
                start,
                blanks: j - start,
                end,
                kind,
            });
        }
        search = j + otag.chars().next().map_or(1, char::len_utf8);
    }
    None
}

struct Open {
    sigil: char,
    key: String,
    outer: Vec<Node>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, MustacheError> {
        let (mut otag, mut ctag) = ("{{".to_string(), "}}".to_string());
        let mut nodes: Vec<Node> = Vec::new();
        let mut open: Vec<Open> = Vec::new();
        let mut pos = 0;
        let bytes = text.as_bytes();
        while let Some(m) = find_tag(text, pos, &otag, &ctag) {
            let mut text_end = m.start;
            let mut next = m.end;
            let interpolating = matches!(m.kind, TagKind::Raw(_) | TagKind::Tag(None, _))
                || matches!(m.kind, TagKind::Tag(Some('&'), _));
            let begins_line = m.start == 0 || matches!(bytes[m.start - 1], b'\r' | b'\n');
            let ends_line = m.end == text.len() || matches!(bytes[m.end], b'\r' | b'\n');
            if begins_line && ends_line && !interpolating {
                if bytes.get(next) == Some(&b'\r') {
                    next += 1;
                }
                if bytes.get(next) == Some(&b'\n') {
                    next += 1;
                }
            } else {
                text_end += m.blanks;
            }
            if pos != text_end {
                nodes.push(Node::Text(text[pos..text_end].to_string()));
            }
            pos = next;
            match m.kind {
                TagKind::Delimiters(spec) => {
                    let parts: Vec<&str> = spec.split_whitespace().collect();
                    if parts.len() < 2 {
                        return Err(MustacheError::BadDelimiters(m.start));
                    }
                    otag = parts[0].to_string();
                    ctag = parts[1].to_string();
                }
                TagKind::Raw(key) | TagKind::Tag(None | Some('&'), key) => {
                    nodes.push(Node::Variable(key));
                }
                TagKind::Tag(Some(sigil @ ('#' | '^')), key) => {
                    open.push(Open {
                        sigil,
                        key,
                        outer: std::mem::take(&mut nodes),
                    });
                }
                TagKind::Tag(Some('/'), key) => {
                    let Some(section) = open.pop() else {
                        return Err(MustacheError::SectionMismatch {
                            offset: m.end,
                            found: key.clone(),
                            expected: key,
                        });
                    };
                    if section.key != key {
                        return Err(MustacheError::SectionMismatch {
                            offset: m.end,
                            found: key,
                            expected: section.key,
                        });
                    }
                    let inner = std::mem::replace(&mut nodes, section.outer);
                    nodes.push(if section.sigil == '#' {
                        Node::Section(key, inner)
                    } else {
                        Node::Inverted(key, inner)
                    });
                }
                // Comments and partials write nothing.
                TagKind::Tag(Some(_), _) => {}
            }
        }
        // An unclosed section is not an error to pystache: what it renders
        // is the body of the innermost open section, the rest is dropped.
        // Templates written against os-apply-config get the same here.
        if pos < text.len() {
            nodes.push(Node::Text(text[pos..].to_string()));
        }
        Ok(Template { nodes })
    }

    pub fn render(&self, data: &Value) -> String {
        let mut out = String::new();
        let mut stack = vec![data];
        render_nodes(&self.nodes, &mut stack, &mut out);
        out
    }
}

/// Parse and render in one step.
pub fn render(text: &str, data: &Value) -> Result<String, MustacheError> {
    Ok(Template::parse(text)?.render(data))
}

fn lookup<'a>(stack: &[&'a Value], name: &str) -> Option<&'a Value> {
    if name == "." {
        return stack.last().copied();
    }
    let mut parts = name.split('.');
    let first = parts.next()?;
    let mut value = stack.iter().rev().find_map(|v| v.get(first))?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}

fn render_nodes<'a>(nodes: &[Node], stack: &mut Vec<&'a Value>, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Variable(key) => match lookup(stack, key) {
                None | Some(Value::Null) => {}
                Some(Value::Str(s)) => out.push_str(s),
                Some(other) => out.push_str(&other.to_python_json()),
            },
            Node::Section(key, inner) => {
                let Some(value) = lookup(stack, key).filter(|v| v.is_truthy()) else {
                    continue;
                };
                let items: Vec<&'a Value> = match value {
                    Value::List(items) => items.iter().collect(),
                    other => vec![other],
                };
                for item in items {
                    stack.push(item);
                    render_nodes(inner, stack, out);
                    stack.pop();
                }
            }
            Node::Inverted(key, inner) => {
                if !lookup(stack, key).is_some_and(Value::is_truthy) {
                    render_nodes(inner, stack, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(template: &str, json: &str) -> String {
        render(template, &Value::from_json(json).unwrap()).unwrap()
    }

    #[test]
    fn variables_sections_and_values() {
        let data = r#"{"a": {"b": "x<&>"}, "n": 3, "l": [1, "s"], "d": {"k": true}, "f": false}"#;
        assert_eq!(r("{{a.b}} {{{a.b}}} {{&a.b}}", data), "x<&> x<&> x<&>");
        assert_eq!(
            r("{{n}} {{l}} {{d}} {{f}} {{missing}}.", data),
            "3 [1, \"s\"] {\"k\": true} false ."
        );
        assert_eq!(r("{{#l}}<{{.}}>{{/l}}", data), "<1><s>");
        assert_eq!(r("{{#d}}{{k}}{{n}}{{/d}}{{^f}}no{{/f}}", data), "true3no");
        assert_eq!(r("{{#a}}{{b}}{{/a}}{{^a}}x{{/a}}", data), "x<&>");
    }

    #[test]
    fn standalone_tags_take_their_line() {
        let data = r#"{"l": [1, 2]}"#;
        assert_eq!(
            r("a\n  {{#l}}\n- {{.}}\n  {{/l}}\nb\n", data),
            "a\n- 1\n- 2\nb\n"
        );
        assert_eq!(r("a\n {{! note }}\nb", data), "a\nb");
        // A trailing blank keeps the line, as in pystache.
        assert_eq!(r("{{#l}} \n{{/l}}", data), " \n \n");
    }

    #[test]
    fn delimiters_change() {
        assert_eq!(r("{{=<% %>=}}<% a %> {{a}}", r#"{"a": 1}"#), "1 {{a}}");
    }

    #[test]
    fn mismatched_and_unclosed_sections() {
        let v = Value::empty_map();
        assert!(matches!(
            render("{{#a}}{{/b}}", &v),
            Err(MustacheError::SectionMismatch { .. })
        ));
        // pystache renders only the innermost unclosed section's body.
        assert_eq!(render("a{{#a}}b{{^c}}d", &v).unwrap(), "d");
    }
}

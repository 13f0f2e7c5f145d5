//! os-release (`/etc/os-release`, else `/usr/lib/os-release`): the guest's
//! distribution, version and product name, shared by customize (which
//! password hash, which package manager) and inspect.

use serde::Serialize;

use crate::customize::guest::{GuestError, GuestRoot};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OsRelease {
    /// ID (`debian`, `fedora`, `rhel`), lower case.
    pub id: String,
    pub id_like: Vec<String>,
    /// VERSION_ID (`12`, `9.4`), may be empty (Debian testing).
    pub version_id: String,
    /// PRETTY_NAME, else NAME.
    pub pretty_name: String,
}

impl OsRelease {
    /// Parse os-release text: KEY=value lines, values optionally quoted.
    pub fn parse(text: &str) -> Self {
        let mut out = OsRelease::default();
        let mut name = String::new();
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            match key {
                "ID" => out.id = value.to_ascii_lowercase(),
                "ID_LIKE" => out.id_like = value.split_whitespace().map(String::from).collect(),
                "VERSION_ID" => out.version_id = value,
                "PRETTY_NAME" => out.pretty_name = value,
                "NAME" => name = value,
                _ => {}
            }
        }
        if out.pretty_name.is_empty() {
            out.pretty_name = name;
        }
        out
    }

    /// Read the guest's os-release; None when it has none.
    pub fn read(root: &GuestRoot) -> Result<Option<Self>, GuestError> {
        for path in ["/etc/os-release", "/usr/lib/os-release"] {
            if let Some(text) = root.read_string_opt(path)? {
                return Ok(Some(Self::parse(&text)));
            }
        }
        Ok(None)
    }

    pub fn major_version(&self) -> Option<u32> {
        self.version_id.split('.').next()?.parse().ok()
    }

    pub fn minor_version(&self) -> Option<u32> {
        self.version_id.split('.').nth(1)?.parse().ok()
    }
}

/// Shell-style value: "double" (with \" \\ \$ \` escapes) or 'single' quotes.
fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.to_string();
    }
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_values() {
        let os = OsRelease::parse(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian\"\nVERSION_ID=\"12\"\nID=debian\n",
        );
        assert_eq!(os.id, "debian");
        assert_eq!(os.major_version(), Some(12));
        assert_eq!(os.pretty_name, "Debian GNU/Linux 12 (bookworm)");
        let el = OsRelease::parse("ID='rhel'\nVERSION_ID=9.4\nID_LIKE=\"fedora\"\n");
        assert_eq!((el.major_version(), el.minor_version()), (Some(9), Some(4)));
        assert_eq!(el.id_like, vec!["fedora"]);
    }
}

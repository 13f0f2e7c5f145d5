//! Installed packages: dpkg's status file, and rpm's sqlite database
//! (EL9+, Fedora 33+; rpmdb.sqlite in /var/lib/rpm or /usr/lib/sysimage/rpm).

use serde::Serialize;

use crate::customize::guest::GuestRoot;
use crate::format::rpm::header::Header;

use super::InspectError;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub release: Option<String>,
    pub arch: String,
}

/// The package format (`deb`, `rpm`) and the installed packages, sorted.
pub fn installed(g: &GuestRoot) -> Result<(Option<&'static str>, Vec<Package>), InspectError> {
    if let Some(text) = g.read_string_opt("/var/lib/dpkg/status")? {
        return Ok((Some("deb"), parse_dpkg_status(&text)));
    }
    for path in [
        "/var/lib/rpm/rpmdb.sqlite",
        "/usr/lib/sysimage/rpm/rpmdb.sqlite",
    ] {
        if let Some(bytes) = g.read_opt(path)? {
            return Ok((Some("rpm"), read_rpmdb_sqlite(&bytes, path)?));
        }
    }
    for path in ["/var/lib/rpm/Packages", "/usr/lib/sysimage/rpm/Packages"] {
        if g.exists(path)? {
            return Err(InspectError::Packages {
                file: path.into(),
                reason: "Berkeley DB rpm databases (EL8 and older) are not read yet".into(),
            });
        }
    }
    Ok((None, Vec::new()))
}

/// Stanzas of the dpkg status file whose Status is `install ok installed`.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut arch = None;
        let mut installed = false;
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "Package" => name = Some(value.to_string()),
                "Version" => version = Some(value.to_string()),
                "Architecture" => arch = Some(value.to_string()),
                "Status" => installed = value.ends_with(" installed"),
                _ => {}
            }
        }
        if let (true, Some(name), Some(version)) = (installed, name, version) {
            out.push(Package {
                name,
                version,
                release: None,
                arch: arch.unwrap_or_default(),
            });
        }
    }
    out.sort();
    out
}

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_ARCH: u32 = 1022;

/// rpm's sqlite backend keeps each header as a blob in `Packages(hnum, blob)`.
/// sqlite needs a file: the bytes (read through the confined root) are copied
/// to a private temporary file first.
fn read_rpmdb_sqlite(bytes: &[u8], path: &str) -> Result<Vec<Package>, InspectError> {
    let bad = |reason: String| InspectError::Packages {
        file: path.to_string(),
        reason,
    };
    let tmp = tempfile::NamedTempFile::new().map_err(|e| bad(e.to_string()))?;
    std::fs::write(tmp.path(), bytes).map_err(|e| bad(e.to_string()))?;
    let db = rusqlite::Connection::open_with_flags(
        tmp.path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .map_err(|e| bad(e.to_string()))?;
    let mut stmt = db
        .prepare("SELECT hnum, blob FROM Packages ORDER BY hnum")
        .map_err(|e| bad(e.to_string()))?;
    let rows = stmt
        .query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for row in rows {
        let (hnum, blob) = row.map_err(|e| bad(e.to_string()))?;
        out.push(
            package_from_blob(&blob).map_err(|reason| bad(format!("package {hnum}: {reason}")))?,
        );
    }
    out.sort();
    Ok(out)
}

/// A database header blob lacks the 8-byte magic intro of a package file's header.
pub fn package_from_blob(blob: &[u8]) -> Result<Package, String> {
    let mut full = Vec::with_capacity(blob.len() + 8);
    full.extend_from_slice(&crate::format::rpm::header::HEADER_MAGIC);
    full.extend_from_slice(&[0; 4]);
    full.extend_from_slice(blob);
    let (h, _) = Header::parse(&full, "rpmdb header").map_err(|e| e.to_string())?;
    let get = |tag| h.string(tag).map_err(|e| e.to_string());
    Ok(Package {
        name: get(TAG_NAME)?.ok_or("no NAME tag")?,
        version: get(TAG_VERSION)?.ok_or("no VERSION tag")?,
        release: get(TAG_RELEASE)?,
        // Source-less headers (gpg-pubkey) have no ARCH.
        arch: get(TAG_ARCH)?.unwrap_or_default(),
    })
}

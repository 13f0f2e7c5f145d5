//! File names from the three naming schemes.

/// Drop an ISO `;N` version and, for names without an extension, the dot
/// that ISO requires (`USER_DAT.;1` is `USER_DAT`).
fn strip_version(name: &str) -> &str {
    let name = match name.rsplit_once(';') {
        Some((base, version)) if version.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    };
    name.strip_suffix('.').unwrap_or(name)
}

pub fn plain(identifier: &[u8]) -> String {
    strip_version(&String::from_utf8_lossy(identifier)).to_string()
}

/// Joliet identifiers are UCS-2 big-endian (genisoimage keeps `;1` on them).
pub fn joliet(identifier: &[u8]) -> String {
    let units: Vec<u16> = identifier
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    strip_version(&String::from_utf16_lossy(&units)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_lose_version_and_dot() {
        assert_eq!(plain(b"META_DAT.JSO;1"), "META_DAT.JSO");
        assert_eq!(plain(b"USER_DAT.;1"), "USER_DAT");
        assert_eq!(plain(b"OPENSTACK"), "OPENSTACK");
        assert_eq!(plain(b"A;B"), "A;B");
    }

    #[test]
    fn joliet_names_are_ucs2_big_endian() {
        let raw: Vec<u8> = "user_data;1"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        assert_eq!(joliet(&raw), "user_data");
        let raw: Vec<u8> = "é.json".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(joliet(&raw), "é.json");
    }
}

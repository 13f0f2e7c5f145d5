//! Volume descriptors: the primary one (label, block size, root directory)
//! and a Joliet supplementary one when present.

use super::record::Record;
use super::{IsoReadError, SECTOR};
use crate::format::ReadAt;

const FIRST: u64 = 16;
/// Real images have three or four descriptors; stop scanning long before
/// a corrupt set could make this slow.
const MAX_DESCRIPTORS: u64 = 32;
const PRIMARY: u8 = 1;
const SUPPLEMENTARY: u8 = 2;
const TERMINATOR: u8 = 255;

/// What one volume descriptor says about its directory tree.
#[derive(Debug, Clone)]
pub struct Tree {
    pub label: String,
    pub root: Record,
}

#[derive(Debug, Clone)]
pub struct Descriptors {
    pub block_size: u64,
    /// The volume size in logical blocks.
    pub blocks: u64,
    pub primary: Tree,
    pub joliet: Option<Tree>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Joliet marks its supplementary descriptor with a UCS-2 escape sequence
/// (levels 1 to 3: `%/@`, `%/C`, `%/E`).
fn is_joliet(sector: &[u8]) -> bool {
    sector[88..90] == *b"%/" && matches!(sector[90], b'@' | b'C' | b'E')
}

fn ucs2_text(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    String::from_utf16_lossy(&units)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

fn ascii_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

fn root_record(sector: &[u8]) -> Result<Record, IsoReadError> {
    Record::parse(&sector[156..190])
        .map_err(|_| IsoReadError::NotIso("the root directory record is malformed"))
}

impl Descriptors {
    pub fn read(dev: &dyn ReadAt) -> Result<Self, IsoReadError> {
        let mut primary = None;
        let mut joliet = None;
        let mut sector = vec![0u8; SECTOR as usize];
        for index in FIRST..FIRST + MAX_DESCRIPTORS {
            if dev.read_zero_padded(&mut sector, index * SECTOR)? < sector.len() {
                return Err(if index == FIRST {
                    IsoReadError::NotIso("no volume descriptor at sector 16")
                } else {
                    IsoReadError::NotIso("the volume descriptors are truncated")
                });
            }
            if sector[1..6] != *b"CD001" {
                return Err(IsoReadError::NotIso(if index == FIRST {
                    "no CD001 volume descriptor at sector 16"
                } else {
                    "the volume descriptor set does not end"
                }));
            }
            match sector[0] {
                TERMINATOR => break,
                PRIMARY if primary.is_none() => primary = Some(sector.clone()),
                SUPPLEMENTARY if joliet.is_none() && is_joliet(&sector) => {
                    joliet = Some(sector.clone())
                }
                _ => {}
            }
        }
        let primary = primary.ok_or(IsoReadError::NotIso("no primary volume descriptor"))?;
        let block_size = u64::from(le16(&primary, 128));
        if !block_size.is_power_of_two() || !(512..=SECTOR).contains(&block_size) {
            return Err(IsoReadError::NotIso("implausible logical block size"));
        }
        let joliet = match joliet {
            Some(s) => Some(Tree {
                label: ucs2_text(&s[40..72]),
                root: root_record(&s)?,
            }),
            None => None,
        };
        Ok(Descriptors {
            block_size,
            blocks: u64::from(le32(&primary, 80)),
            primary: Tree {
                label: ascii_text(&primary[40..72]),
                root: root_record(&primary)?,
            },
            joliet,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joliet_escape_sequences_are_recognised() {
        let mut s = vec![0u8; 2048];
        assert!(!is_joliet(&s));
        s[88..91].copy_from_slice(b"%/E");
        assert!(is_joliet(&s));
        s[90] = b'X';
        assert!(!is_joliet(&s));
    }

    #[test]
    fn labels_lose_their_padding() {
        assert_eq!(ascii_text(b"config-2                        "), "config-2");
        let raw: Vec<u8> = "cfg ".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(ucs2_text(&raw), "cfg");
    }

    #[test]
    fn zeros_are_not_iso() {
        let zeros = vec![0u8; 40 * 2048];
        assert!(matches!(
            Descriptors::read(&zeros),
            Err(IsoReadError::NotIso(_))
        ));
        let short = vec![0u8; 1000];
        assert!(matches!(
            Descriptors::read(&short),
            Err(IsoReadError::NotIso(_))
        ));
    }
}

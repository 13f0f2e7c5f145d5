//! Partition type codes as the block-device YAML writes them: sgdisk's four-digit
//! codes (`EF00`) or full GUIDs for GPT, one hex byte (`83`, `0xef`) for MBR.

use uuid::Uuid;

use crate::format::gpt;

/// sgdisk short codes kiln understands, with the GUID each stands for.
const GPT_CODES: &[(&str, Uuid)] = &[
    ("EF00", gpt::EFI_SYSTEM),
    ("EF02", gpt::BIOS_BOOT),
    ("8300", gpt::LINUX_FILESYSTEM),
    ("8304", gpt::LINUX_ROOT_X86_64),
    ("8200", gpt::LINUX_SWAP),
    ("8E00", gpt::LINUX_LVM),
    ("FD00", gpt::LINUX_RAID),
    ("0700", gpt::MICROSOFT_BASIC_DATA),
    (
        "EA00",
        Uuid::from_u128(0xBC13C2FF_59E6_4262_A352_B275FD6F7172),
    ),
    (
        "8302",
        Uuid::from_u128(0x933AC7E1_2EB4_4F13_B844_0E14E2AEF915),
    ),
    (
        "8310",
        Uuid::from_u128(0x4D21B016_B534_45C2_A9FB_5C16E091FD2D),
    ),
];

/// The type of one partition, already resolved for the table it goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionType {
    Gpt(Uuid),
    Mbr(u8),
}

impl PartitionType {
    /// The default of diskimage-builder: Linux filesystem.
    pub fn default_for(table: super::layout::TableKind) -> PartitionType {
        match table {
            super::layout::TableKind::Gpt => PartitionType::Gpt(gpt::LINUX_FILESYSTEM),
            super::layout::TableKind::Mbr => PartitionType::Mbr(0x83),
        }
    }

    pub fn is_bios_boot(self) -> bool {
        self == PartitionType::Gpt(gpt::BIOS_BOOT)
    }

    pub fn is_esp(self) -> bool {
        matches!(self, PartitionType::Gpt(g) if g == gpt::EFI_SYSTEM)
            || self == PartitionType::Mbr(0xEF)
    }
}

impl std::fmt::Display for PartitionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionType::Gpt(guid) => match gpt::type_name(guid) {
                Some(name) => write!(f, "{name} ({guid})"),
                None => write!(f, "{guid}"),
            },
            PartitionType::Mbr(id) => write!(f, "0x{id:02x}"),
        }
    }
}

/// A GPT type: an sgdisk code (any case) or a GUID.
pub fn parse_gpt_type(code: &str) -> Result<Uuid, String> {
    let upper = code.trim().to_ascii_uppercase();
    if let Some(&(_, guid)) = GPT_CODES.iter().find(|(c, _)| *c == upper) {
        return Ok(guid);
    }
    if let Ok(guid) = Uuid::parse_str(code.trim())
        && !guid.is_nil()
    {
        return Ok(guid);
    }
    let known: Vec<&str> = GPT_CODES.iter().map(|(c, _)| *c).collect();
    Err(format!(
        "unknown GPT partition type {code:?} (known codes: {}, or a type GUID)",
        known.join(", ")
    ))
}

/// An MBR type: one hex byte, with or without `0x`. Extended partition types and
/// the GPT protective type are refused: kiln writes primary partitions only.
pub fn parse_mbr_type(code: &str) -> Result<u8, String> {
    let digits = code.trim();
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(digits);
    let id = u8::from_str_radix(digits, 16).map_err(|_| {
        format!("unknown MBR partition type {code:?} (one hex byte such as 83 or ef)")
    })?;
    match id {
        0 => Err("MBR partition type 0 marks an unused entry".into()),
        0x05 | 0x0F | 0x85 => Err(format!(
            "MBR partition type {code:?} is an extended partition; kiln writes primary partitions only"
        )),
        0xEE => Err("MBR partition type ee is the GPT protective type; use label: gpt".into()),
        id => Ok(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_guids() {
        assert_eq!(parse_gpt_type("ef00"), Ok(gpt::EFI_SYSTEM));
        assert_eq!(parse_gpt_type("EF02"), Ok(gpt::BIOS_BOOT));
        assert_eq!(
            parse_gpt_type("0fc63daf-8483-4772-8e79-3d69d8477de4"),
            Ok(gpt::LINUX_FILESYSTEM)
        );
        let e = parse_gpt_type("ZZ99").unwrap_err();
        assert!(e.contains("ZZ99") && e.contains("EF00"), "{e}");
        assert_eq!(parse_mbr_type("83"), Ok(0x83));
        assert_eq!(parse_mbr_type("0xEF"), Ok(0xEF));
        assert!(parse_mbr_type("5").is_err());
        assert!(parse_mbr_type("1ff").is_err());
    }
}

//! Well-known partition type GUIDs.

use uuid::Uuid;

/// EFI System Partition (ESP).
pub const EFI_SYSTEM: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
/// BIOS boot partition (GRUB core image on BIOS machines booting a GPT disk).
pub const BIOS_BOOT: Uuid = Uuid::from_u128(0x21686148_6449_6E6F_744E_656564454649);
/// Linux filesystem data (generic).
pub const LINUX_FILESYSTEM: Uuid = Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);
/// Linux root filesystem on x86-64 (Discoverable Partitions Specification).
pub const LINUX_ROOT_X86_64: Uuid = Uuid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709);
/// Linux swap.
pub const LINUX_SWAP: Uuid = Uuid::from_u128(0x0657FD6D_A4AB_43C4_84E5_0933C84B4F4F);
/// Linux LVM physical volume.
pub const LINUX_LVM: Uuid = Uuid::from_u128(0xE6D6D379_F507_44C2_A23C_238F2A3DF928);
/// Linux software RAID member.
pub const LINUX_RAID: Uuid = Uuid::from_u128(0xA19D880F_05FC_4D3B_A006_743F0F84911E);
/// Microsoft basic data (also FAT/NTFS data partitions made by Linux tools).
pub const MICROSOFT_BASIC_DATA: Uuid = Uuid::from_u128(0xEBD0A0A2_B9E5_4433_87C0_68B6B72699C7);

const KNOWN: &[(Uuid, &str)] = &[
    (EFI_SYSTEM, "EFI System"),
    (BIOS_BOOT, "BIOS boot"),
    (LINUX_FILESYSTEM, "Linux filesystem"),
    (LINUX_ROOT_X86_64, "Linux root (x86-64)"),
    (
        Uuid::from_u128(0x44479540_F297_41B2_9AF7_D131D5F0458A),
        "Linux root (x86)",
    ),
    (
        Uuid::from_u128(0xB921B045_1DF0_41C3_AF44_4C6F280D3FAE),
        "Linux root (ARM64)",
    ),
    (
        Uuid::from_u128(0x8484680C_9521_48C6_9C11_B0720656F69E),
        "Linux /usr (x86-64)",
    ),
    (
        Uuid::from_u128(0xBC13C2FF_59E6_4262_A352_B275FD6F7172),
        "Linux extended boot",
    ),
    (
        Uuid::from_u128(0x933AC7E1_2EB4_4F13_B844_0E14E2AEF915),
        "Linux /home",
    ),
    (
        Uuid::from_u128(0x4D21B016_B534_45C2_A9FB_5C16E091FD2D),
        "Linux /var",
    ),
    (LINUX_SWAP, "Linux swap"),
    (LINUX_LVM, "Linux LVM"),
    (LINUX_RAID, "Linux RAID"),
    (
        Uuid::from_u128(0xCA7D7CCB_63ED_4C53_861C_1742536059CC),
        "Linux LUKS",
    ),
    (MICROSOFT_BASIC_DATA, "Microsoft basic data"),
    (
        Uuid::from_u128(0xE3C9E316_0B5C_4DB8_817D_F92DF00215AE),
        "Microsoft reserved",
    ),
    (
        Uuid::from_u128(0xDE94BBA4_06D1_4D40_A16A_BFD50179D6AC),
        "Windows recovery environment",
    ),
];

/// Human name of a well-known partition type GUID.
pub fn type_name(type_guid: &Uuid) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|(guid, _)| guid == type_guid)
        .map(|&(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_print_as_the_spec_spells_them() {
        assert_eq!(
            EFI_SYSTEM.hyphenated().to_string(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(
            BIOS_BOOT.hyphenated().to_string(),
            "21686148-6449-6e6f-744e-656564454649"
        );
        assert_eq!(type_name(&LINUX_ROOT_X86_64), Some("Linux root (x86-64)"));
        assert_eq!(type_name(&Uuid::nil()), None);
    }

    #[test]
    fn table_has_no_duplicates() {
        for (i, (a, _)) in KNOWN.iter().enumerate() {
            for (b, _) in &KNOWN[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}

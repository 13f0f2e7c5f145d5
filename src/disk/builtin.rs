//! Built-in layouts matching the defaults of diskimage-builder's block-device
//! elements, so a recipe can say `block-device-efi` without spelling the YAML.

use super::layout::{Layout, LayoutError};

/// GPT: a 550 MiB ESP at /boot/efi, an 8 MiB BIOS boot partition for GRUB's core
/// image, and an ext4 root taking the rest (UEFI and BIOS boot).
pub const EFI_YAML: &str = r#"
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: 'EF00'
        size: 550MiB
        mkfs:
          type: vfat
          mount:
            mount_point: /boot/efi
            fstab:
              options: "defaults"
              fsck-passno: 2
      - name: BSP
        type: 'EF02'
        size: 8MiB
      - name: root
        type: '8300'
        size: 100%
        mkfs:
          type: ext4
          mount:
            mount_point: /
            fstab:
              options: "defaults"
              fsck-passno: 1
"#;

/// MBR: one bootable primary partition with an ext4 root (BIOS boot).
pub const MBR_YAML: &str = r#"
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [ boot, primary ]
        size: 100%
        mkfs:
          mount:
            mount_point: /
            fstab:
              options: "defaults"
              fsck-passno: 1
"#;

/// GPT for BIOS only: BIOS boot partition and a bootable ext4 root.
pub const GPT_YAML: &str = r#"
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: BSP
        type: 'EF02'
        size: 8MiB
      - name: root
        flags: [ boot ]
        size: 100%
        mkfs:
          type: ext4
          mount:
            mount_point: /
            fstab:
              options: "defaults"
              fsck-passno: 1
"#;

/// Names accepted by [`builtin_layout`], as the elements are called.
pub const BUILTIN_NAMES: &[&str] = &["block-device-efi", "block-device-mbr", "block-device-gpt"];

/// The built-in layout of element `name` (`block-device-efi`, `-mbr`, `-gpt`; the
/// `block-device-` prefix may be left out).
pub fn builtin_layout(name: &str) -> Option<Result<Layout, LayoutError>> {
    let short = name.strip_prefix("block-device-").unwrap_or(name);
    let yaml = match short {
        "efi" => EFI_YAML,
        "mbr" => MBR_YAML,
        "gpt" => GPT_YAML,
        _ => return None,
    };
    Some(Layout::from_yaml_str(yaml))
}

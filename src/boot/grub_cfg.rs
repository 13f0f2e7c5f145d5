//! The text GRUB reads: the early configuration built into the GRUB image, and
//! /boot/grub/grub.cfg with the menu.

use uuid::Uuid;

use super::{BootError, BootSpec};

/// Built into core.img / BOOTX64.EFI. GRUB runs it before anything else, with only
/// the built-in modules, then enters normal mode, which reads `$prefix/grub.cfg`.
/// Finding the root filesystem by UUID makes the image independent of disk order
/// and of which partition the loader itself came from (BIOS boot partition, ESP).
pub fn early_config(root_uuid: &Uuid) -> String {
    format!(
        "search --no-floppy --fs-uuid --set=root {root_uuid}\n\
         set prefix=($root)/boot/grub\n"
    )
}

/// /boot/grub/grub.cfg: serial and screen console, one menu entry.
pub fn grub_cfg(spec: &BootSpec) -> Result<String, BootError> {
    let uuid = spec.root_uuid;
    let mut linux = format!(
        "linux {} root=UUID={uuid} ro",
        quote(&absolute(&spec.kernel))
    );
    for word in kernel_args(spec)? {
        linux.push(' ');
        linux.push_str(&quote(word));
    }
    let initrd = spec
        .initrd
        .as_deref()
        .map(|i| format!("\tinitrd {}\n", quote(&absolute(i))))
        .unwrap_or_default();
    let serial = spec
        .serial
        .map(|s| {
            format!(
                "serial --unit={} --speed={}\n\
                 terminal_input serial console\n\
                 terminal_output serial console\n",
                s.unit, s.speed
            )
        })
        .unwrap_or_default();
    Ok(format!(
        "# Written by kiln.\n\
         set timeout={timeout}\n\
         set default=0\n\
         {serial}\
         search --no-floppy --fs-uuid --set=root {uuid}\n\
         menuentry {title} {{\n\
         \t{linux}\n\
         {initrd}\
         }}\n",
        timeout = spec.timeout_secs,
        title = quote(checked_text("title", &spec.title)?),
    ))
}

/// The caller's kernel command line, split into words (GRUB joins them again with
/// single spaces). Control characters would end the line in every config format.
pub fn kernel_args(spec: &BootSpec) -> Result<Vec<&str>, BootError> {
    checked_text("kernel command line", &spec.cmdline)?;
    Ok(spec.cmdline.split_whitespace().collect())
}

/// `text` if it holds no control character (a newline would start a new command).
pub fn checked_text<'a>(key: &'static str, text: &'a str) -> Result<&'a str, BootError> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(BootError::BadSpec {
            key,
            problem: format!("{text:?} contains the control character {c:?}"),
        }),
        None => Ok(text),
    }
}

/// A path inside the root filesystem as GRUB names it.
pub fn absolute(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}

/// One GRUB script word: plain when only harmless characters occur, otherwise in
/// single quotes (literal in GRUB; a quote itself is closed, escaped, reopened).
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./,:=+@%-".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::SerialConsole;

    fn spec() -> BootSpec {
        let mut s = BootSpec::new(
            Uuid::parse_str("0e9f2a5c-1f39-4d6a-a0a4-3f3d2b7c8e11").unwrap(),
            "boot/vmlinuz",
        );
        s.initrd = Some("/boot/initrd.img".into());
        s.cmdline = "console=ttyS0,115200  quiet".into();
        s
    }

    #[test]
    fn menu_entry_boots_the_kernel_with_root_by_uuid() {
        let cfg = grub_cfg(&spec()).unwrap();
        assert!(cfg.contains(
            "\tlinux /boot/vmlinuz root=UUID=0e9f2a5c-1f39-4d6a-a0a4-3f3d2b7c8e11 ro console=ttyS0,115200 quiet\n"
        ), "{cfg}");
        assert!(cfg.contains("\tinitrd /boot/initrd.img\n"), "{cfg}");
        assert!(cfg.contains(
            "search --no-floppy --fs-uuid --set=root 0e9f2a5c-1f39-4d6a-a0a4-3f3d2b7c8e11\n"
        ));
        assert!(cfg.contains("serial --unit=0 --speed=115200\n"), "{cfg}");
        assert!(cfg.contains("terminal_output serial console\n"), "{cfg}");
    }

    #[test]
    fn no_serial_no_initrd() {
        let mut s = spec();
        s.serial = None;
        s.initrd = None;
        let cfg = grub_cfg(&s).unwrap();
        assert!(!cfg.contains("serial"), "{cfg}");
        assert!(!cfg.contains("initrd"), "{cfg}");
        s.serial = Some(SerialConsole {
            unit: 1,
            speed: 9600,
        });
        assert!(
            grub_cfg(&s)
                .unwrap()
                .contains("serial --unit=1 --speed=9600\n")
        );
    }

    #[test]
    fn special_characters_are_quoted_and_newlines_refused() {
        let mut s = spec();
        s.title = "Joe's image; reboot".into();
        s.cmdline = "a=$x b=\"c".into();
        let cfg = grub_cfg(&s).unwrap();
        assert!(
            cfg.contains(r"menuentry 'Joe'\''s image; reboot' {"),
            "{cfg}"
        );
        assert!(cfg.contains(r#" 'a=$x' 'b="c'"#), "{cfg}");
        s.cmdline = "quiet\nreboot".into();
        let err = grub_cfg(&s).unwrap_err();
        assert!(err.to_string().contains("kernel command line"), "{err}");
    }

    #[test]
    fn early_config_sets_root_and_prefix() {
        let u = Uuid::from_u128(1);
        assert_eq!(
            early_config(&u),
            format!("search --no-floppy --fs-uuid --set=root {u}\nset prefix=($root)/boot/grub\n")
        );
    }
}

//! The guest's architecture from the ELF header of one of its binaries.

use std::io::Read;

use crate::customize::guest::{GuestError, GuestRoot};

const CANDIDATES: &[&str] = &[
    "/bin/sh",
    "/bin/bash",
    "/usr/bin/ls",
    "/bin/ls",
    "/bin/busybox",
    "/usr/bin/env",
    "/sbin/init",
];

pub fn guest_arch(g: &GuestRoot) -> Result<Option<String>, GuestError> {
    for path in CANDIDATES {
        let mut f = match g.open_read(path) {
            Ok(f) => f,
            Err(_) => continue,
        };
        let mut head = [0u8; 20];
        if f.read_exact(&mut head).is_err() {
            continue;
        }
        if let Some(arch) = arch_of(&head) {
            return Ok(Some(arch.to_string()));
        }
    }
    Ok(None)
}

/// Architecture name (as virt-inspector spells it) from an ELF header's first 20 bytes.
pub fn arch_of(head: &[u8; 20]) -> Option<&'static str> {
    if head[..4] != *b"\x7fELF" {
        return None;
    }
    let class64 = head[4] == 2;
    let little = head[5] == 1;
    let machine = if little {
        u16::from_le_bytes([head[18], head[19]])
    } else {
        u16::from_be_bytes([head[18], head[19]])
    };
    Some(match machine {
        0x03 => "i386",
        0x3e => "x86_64",
        0xb7 => "aarch64",
        0x28 => "arm",
        0x15 if little => "ppc64le",
        0x15 => "ppc64",
        0x14 => "ppc",
        0x16 if class64 => "s390x",
        0x16 => "s390",
        0xf3 if class64 => "riscv64",
        0xf3 => "riscv32",
        0x08 if class64 => "mips64",
        0x08 => "mips",
        0x102 => "loongarch64",
        _ => return None,
    })
}

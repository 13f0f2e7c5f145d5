//! A small, bounds-checked ELF reader: just what dependency resolution needs.
//! 32- and 64-bit, little- and big-endian. From the program headers: the
//! interpreter (PT_INTERP) and the dynamic section (DT_NEEDED, DT_SONAME,
//! DT_RPATH, DT_RUNPATH, DT_FLAGS_1); from the section headers: a section's bytes
//! by name (a kernel module's `.modinfo`).

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;

const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
const DT_FLAGS_1: u64 = 0x6fff_fffb;
/// DF_1_NODEFLIB: do not search the default library directories.
pub const DF_1_NODEFLIB: u64 = 0x800;

/// Header fields that decide whether two objects can be linked together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    /// 1 = 32-bit, 2 = 64-bit.
    pub class: u8,
    /// 1 = little-endian, 2 = big-endian.
    pub data: u8,
    pub machine: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub needed: Vec<String>,
    pub soname: Option<String>,
    pub rpath: Option<String>,
    pub runpath: Option<String>,
    pub flags_1: u64,
}

#[derive(Debug, Clone)]
pub struct Elf<'a> {
    bytes: &'a [u8],
    pub ident: Ident,
    pub e_type: u16,
    phoff: u64,
    phentsize: u16,
    phnum: u16,
    shoff: u64,
    shentsize: u16,
    shnum: u16,
    shstrndx: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not an ELF file")]
    NotElf,
    #[error("unknown ELF class {0} or data encoding {1}")]
    BadIdent(u8, u8),
    #[error("{what} at offset {offset} runs past the end of the file ({len} bytes)")]
    Truncated {
        what: &'static str,
        offset: u64,
        len: usize,
    },
    #[error("{0} entry size {1} is too small")]
    EntSize(&'static str, u16),
    #[error("dynamic string table address {0:#x} is not in a loaded segment")]
    StrtabAddr(u64),
    #[error("string at offset {0} of {1} is not terminated")]
    Unterminated(u64, &'static str),
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
}

struct Phdr {
    p_type: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Only the identification bytes: enough to skip a library of the wrong kind
/// without reading it all. `head` must hold at least 20 bytes.
pub fn ident(head: &[u8]) -> Result<(Ident, u16), ParseError> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Err(ParseError::NotElf);
    }
    let (class, data) = (head[4], head[5]);
    if !matches!(class, 1 | 2) || !matches!(data, 1 | 2) {
        return Err(ParseError::BadIdent(class, data));
    }
    let be = data == 2;
    let rd = |o: usize| {
        let b = [head[o], head[o + 1]];
        if be {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    Ok((
        Ident {
            class,
            data,
            machine: rd(18),
        },
        rd(16),
    ))
}

impl<'a> Elf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let (ident, e_type) = ident(bytes)?;
        let mut e = Elf {
            bytes,
            ident,
            e_type,
            phoff: 0,
            phentsize: 0,
            phnum: 0,
            shoff: 0,
            shentsize: 0,
            shnum: 0,
            shstrndx: 0,
        };
        if ident.class == 2 {
            e.phoff = e.u64(0x20)?;
            e.shoff = e.u64(0x28)?;
            e.phentsize = e.u16(0x36)?;
            e.phnum = e.u16(0x38)?;
            e.shentsize = e.u16(0x3a)?;
            e.shnum = e.u16(0x3c)?;
            e.shstrndx = e.u16(0x3e)?;
        } else {
            e.phoff = e.u32(0x1c)? as u64;
            e.shoff = e.u32(0x20)? as u64;
            e.phentsize = e.u16(0x2a)?;
            e.phnum = e.u16(0x2c)?;
            e.shentsize = e.u16(0x2e)?;
            e.shnum = e.u16(0x30)?;
            e.shstrndx = e.u16(0x32)?;
        }
        Ok(e)
    }

    fn is64(&self) -> bool {
        self.ident.class == 2
    }

    fn slice(&self, what: &'static str, offset: u64, len: u64) -> Result<&'a [u8], ParseError> {
        let err = || ParseError::Truncated {
            what,
            offset,
            len: self.bytes.len(),
        };
        let start = usize::try_from(offset).map_err(|_| err())?;
        let len = usize::try_from(len).map_err(|_| err())?;
        let end = start.checked_add(len).ok_or_else(err)?;
        self.bytes.get(start..end).ok_or_else(err)
    }

    fn u16(&self, off: u64) -> Result<u16, ParseError> {
        let b = self.slice("header field", off, 2)?;
        let b = [b[0], b[1]];
        Ok(if self.ident.data == 2 {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32(&self, off: u64) -> Result<u32, ParseError> {
        let b = self.slice("header field", off, 4)?;
        let b = [b[0], b[1], b[2], b[3]];
        Ok(if self.ident.data == 2 {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn u64(&self, off: u64) -> Result<u64, ParseError> {
        let b = self.slice("header field", off, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(if self.ident.data == 2 {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        })
    }

    /// A word: 4 bytes in 32-bit files, 8 in 64-bit ones.
    fn word(&self, off: u64) -> Result<u64, ParseError> {
        if self.is64() {
            self.u64(off)
        } else {
            self.u32(off).map(u64::from)
        }
    }

    fn phdrs(&self) -> Result<Vec<Phdr>, ParseError> {
        let min = if self.is64() { 56 } else { 32 };
        if self.phnum == 0 {
            return Ok(Vec::new());
        }
        if self.phentsize < min {
            return Err(ParseError::EntSize("program header", self.phentsize));
        }
        let size = self.phentsize as u64;
        self.slice("program headers", self.phoff, size * self.phnum as u64)?;
        (0..self.phnum as u64)
            .map(|i| {
                let b = self.phoff + i * size;
                Ok(if self.is64() {
                    Phdr {
                        p_type: self.u32(b)?,
                        offset: self.u64(b + 8)?,
                        vaddr: self.u64(b + 16)?,
                        filesz: self.u64(b + 32)?,
                    }
                } else {
                    Phdr {
                        p_type: self.u32(b)?,
                        offset: self.u32(b + 4)? as u64,
                        vaddr: self.u32(b + 8)? as u64,
                        filesz: self.u32(b + 16)? as u64,
                    }
                })
            })
            .collect()
    }

    /// The program interpreter (PT_INTERP), if any.
    pub fn interp(&self) -> Result<Option<String>, ParseError> {
        for ph in self.phdrs()? {
            if ph.p_type == PT_INTERP {
                let b = self.slice("PT_INTERP", ph.offset, ph.filesz)?;
                let s = cstr(b, 0, "PT_INTERP")?;
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// The dynamic section's dependency entries, if the file has one.
    pub fn dynamic(&self) -> Result<Option<Dynamic>, ParseError> {
        let phdrs = self.phdrs()?;
        let Some(dynp) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) else {
            return Ok(None);
        };
        let ent = if self.is64() { 16 } else { 8 };
        let dynb = self.slice("PT_DYNAMIC", dynp.offset, dynp.filesz)?;
        let mut tags: Vec<(u64, u64)> = Vec::new();
        for i in 0..(dynb.len() as u64 / ent) {
            let o = dynp.offset + i * ent;
            let tag = self.word(o)?;
            if tag == DT_NULL {
                break;
            }
            tags.push((tag, self.word(o + ent / 2)?));
        }
        let find = |t: u64| tags.iter().find(|(k, _)| *k == t).map(|(_, v)| *v);
        let mut d = Dynamic {
            flags_1: find(DT_FLAGS_1).unwrap_or(0),
            ..Dynamic::default()
        };
        let uses_strings = tags
            .iter()
            .any(|(k, _)| matches!(*k, DT_NEEDED | DT_SONAME | DT_RPATH | DT_RUNPATH));
        if !uses_strings {
            return Ok(Some(d));
        }
        let addr = find(DT_STRTAB).ok_or(ParseError::StrtabAddr(0))?;
        let load = phdrs
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .find(|p| addr >= p.vaddr && addr - p.vaddr < p.filesz)
            .ok_or(ParseError::StrtabAddr(addr))?;
        let off = load
            .offset
            .checked_add(addr - load.vaddr)
            .ok_or(ParseError::StrtabAddr(addr))?;
        let avail = load.filesz - (addr - load.vaddr);
        let size = find(DT_STRSZ).map_or(avail, |s| s.min(avail));
        let strtab = self.slice("dynamic string table", off, size)?;
        for (tag, val) in &tags {
            let s = || cstr(strtab, *val, "dynamic string table");
            match *tag {
                DT_NEEDED => d.needed.push(s()?),
                DT_SONAME => d.soname = Some(s()?),
                DT_RPATH => d.rpath = Some(s()?),
                DT_RUNPATH => d.runpath = Some(s()?),
                _ => {}
            }
        }
        Ok(Some(d))
    }

    /// The bytes of the first section called `name`, if there is one.
    pub fn section(&self, name: &str) -> Result<Option<&'a [u8]>, ParseError> {
        if self.shnum == 0 || self.shoff == 0 {
            return Ok(None);
        }
        let min = if self.is64() { 64 } else { 40 };
        if self.shentsize < min {
            return Err(ParseError::EntSize("section header", self.shentsize));
        }
        let size = self.shentsize as u64;
        self.slice("section headers", self.shoff, size * self.shnum as u64)?;
        // (name offset, type, file offset, size)
        let hdr = |i: u64| -> Result<(u32, u32, u64, u64), ParseError> {
            let b = self.shoff + i * size;
            Ok(if self.is64() {
                (
                    self.u32(b)?,
                    self.u32(b + 4)?,
                    self.u64(b + 24)?,
                    self.u64(b + 32)?,
                )
            } else {
                (
                    self.u32(b)?,
                    self.u32(b + 4)?,
                    self.u32(b + 16)? as u64,
                    self.u32(b + 20)? as u64,
                )
            })
        };
        if self.shstrndx >= self.shnum {
            return Ok(None);
        }
        let (_, _, stroff, strsz) = hdr(self.shstrndx as u64)?;
        let names = self.slice("section name table", stroff, strsz)?;
        for i in 0..self.shnum as u64 {
            let (n, sh_type, off, sz) = hdr(i)?;
            if cstr_bytes(names, n as u64) == Some(name.as_bytes()) {
                const SHT_NOBITS: u32 = 8;
                if sh_type == SHT_NOBITS {
                    return Ok(Some(&[]));
                }
                return self.slice("section", off, sz).map(Some);
            }
        }
        Ok(None)
    }
}

fn cstr_bytes(table: &[u8], off: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let rest = table.get(start..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..end])
}

fn cstr(table: &[u8], off: u64, what: &'static str) -> Result<String, ParseError> {
    let b = cstr_bytes(table, off).ok_or(ParseError::Unterminated(off, what))?;
    String::from_utf8(b.to_vec()).map_err(|_| ParseError::NotUtf8(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal 32-bit big-endian ELF: one PT_LOAD covering the file, PT_INTERP,
    /// PT_DYNAMIC with NEEDED, RUNPATH and SONAME.
    fn tiny_be32() -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 1; // 32-bit
        f[5] = 2; // big-endian
        f[6] = 1;
        let put16 =
            |f: &mut Vec<u8>, o: usize, v: u16| f[o..o + 2].copy_from_slice(&v.to_be_bytes());
        let put32 =
            |f: &mut Vec<u8>, o: usize, v: u32| f[o..o + 4].copy_from_slice(&v.to_be_bytes());
        put16(&mut f, 16, 3); // ET_DYN
        put16(&mut f, 18, 8); // EM_MIPS
        put32(&mut f, 0x1c, 0x34); // phoff
        put16(&mut f, 0x2a, 32);
        put16(&mut f, 0x2c, 3);
        // strings at 0x100
        let strs = b"\0libc.so.6\0$ORIGIN/../lib\0libx.so.1\0/lib/ld.so.1\0";
        f[0x100..0x100 + strs.len()].copy_from_slice(strs);
        // PT_LOAD: offset 0, vaddr 0x10000, filesz 0x200
        let ph = 0x34;
        put32(&mut f, ph, PT_LOAD);
        put32(&mut f, ph + 8, 0x10000);
        put32(&mut f, ph + 16, 0x200);
        // PT_INTERP -> "/lib/ld.so.1" at 0x100 + 36
        put32(&mut f, ph + 32, PT_INTERP);
        put32(&mut f, ph + 36, 0x100 + 36);
        put32(&mut f, ph + 48, 13);
        // PT_DYNAMIC at 0x180
        put32(&mut f, ph + 64, PT_DYNAMIC);
        put32(&mut f, ph + 68, 0x180);
        put32(&mut f, ph + 80, 6 * 8);
        let dynv: [(u32, u32); 6] = [
            (DT_NEEDED as u32, 1),
            (DT_RUNPATH as u32, 11),
            (DT_SONAME as u32, 26),
            (DT_STRTAB as u32, 0x10100),
            (DT_STRSZ as u32, strs.len() as u32),
            (0, 0),
        ];
        for (i, (t, v)) in dynv.iter().enumerate() {
            put32(&mut f, 0x180 + i * 8, *t);
            put32(&mut f, 0x184 + i * 8, *v);
        }
        f
    }

    #[test]
    fn parses_big_endian_32bit() {
        let f = tiny_be32();
        let e = Elf::parse(&f).unwrap();
        assert_eq!(
            e.ident,
            Ident {
                class: 1,
                data: 2,
                machine: 8
            }
        );
        assert_eq!(e.interp().unwrap().as_deref(), Some("/lib/ld.so.1"));
        let d = e.dynamic().unwrap().unwrap();
        assert_eq!(d.needed, ["libc.so.6"]);
        assert_eq!(d.runpath.as_deref(), Some("$ORIGIN/../lib"));
        assert_eq!(d.soname.as_deref(), Some("libx.so.1"));
        assert_eq!(d.rpath, None);
    }

    #[test]
    fn hostile_bytes_give_errors_not_panics() {
        let f = tiny_be32();
        // Every truncation and every single-byte corruption of the header area
        // parses or fails cleanly.
        for n in 0..f.len() {
            if let Ok(e) = Elf::parse(&f[..n]) {
                let _ = e.interp();
                let _ = e.dynamic();
                let _ = e.section(".modinfo");
            }
        }
        for i in 0..0x1c0 {
            for v in [0u8, 0x7f, 0xff] {
                let mut g = f.clone();
                g[i] = v;
                if let Ok(e) = Elf::parse(&g) {
                    let _ = e.interp();
                    let _ = e.dynamic();
                    let _ = e.section(".modinfo");
                }
            }
        }
        assert_eq!(Elf::parse(b"#!/bin/sh\n").unwrap_err(), ParseError::NotElf);
    }
}

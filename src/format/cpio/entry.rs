//! One cpio entry and its file type.

use super::Blob;

/// One newc entry, every header field as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The name as stored, without the terminating NUL (e.g. `usr/bin/sh`, `.`).
    pub name: Vec<u8>,
    pub ino: u32,
    /// File type and permission bits, as `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    /// Seconds since the epoch.
    pub mtime: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Device number of a character or block device node.
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// A file's contents or a symlink's target.
    pub data: Blob,
}

/// The file type in the upper bits of `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
    /// A type value Linux does not define.
    Unknown,
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

impl FileType {
    pub fn from_mode(mode: u32) -> FileType {
        match mode & S_IFMT {
            S_IFREG => FileType::File,
            S_IFDIR => FileType::Dir,
            S_IFLNK => FileType::Symlink,
            S_IFCHR => FileType::Char,
            S_IFBLK => FileType::Block,
            S_IFIFO => FileType::Fifo,
            S_IFSOCK => FileType::Socket,
            _ => FileType::Unknown,
        }
    }

    /// The `S_IF*` bits of this type (0 for `Unknown`).
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::File => S_IFREG,
            FileType::Dir => S_IFDIR,
            FileType::Symlink => S_IFLNK,
            FileType::Char => S_IFCHR,
            FileType::Block => S_IFBLK,
            FileType::Fifo => S_IFIFO,
            FileType::Socket => S_IFSOCK,
            FileType::Unknown => 0,
        }
    }

    /// The letter `ls -l` shows.
    pub fn letter(self) -> char {
        match self {
            FileType::File => '-',
            FileType::Dir => 'd',
            FileType::Symlink => 'l',
            FileType::Char => 'c',
            FileType::Block => 'b',
            FileType::Fifo => 'p',
            FileType::Socket => 's',
            FileType::Unknown => '?',
        }
    }
}

/// `ls -l` style mode string: `drwxr-xr-x`, `-rwsr-xr-x`, `lrwxrwxrwx`.
pub fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(FileType::from_mode(mode).letter());
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, set_x, set_no_x)) in special.iter().enumerate() {
        let shift = 6 - 3 * i;
        let rwx = (mode >> shift) & 7;
        s.push(if rwx & 4 != 0 { 'r' } else { '-' });
        s.push(if rwx & 2 != 0 { 'w' } else { '-' });
        let x = rwx & 1 != 0;
        s.push(match (mode & bit != 0, x) {
            (true, true) => *set_x,
            (true, false) => *set_no_x,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

impl Entry {
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode)
    }

    /// The name for messages (invalid UTF-8 replaced).
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(0o40755), "drwxr-xr-x");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o102644), "-rw-r-Sr--");
        assert_eq!(mode_string(0o41777), "drwxrwxrwt");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx");
        assert_eq!(mode_string(0o20620), "crw--w----");
    }
}

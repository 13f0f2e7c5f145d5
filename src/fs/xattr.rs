//! Extended attributes of a path, never following a final symlink.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Call a size-probing libc function twice: once for the size, once for the data.
fn sized(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let need = call(std::ptr::null_mut(), 0);
        if need < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; need as usize];
        let got = call(buf.as_mut_ptr().cast(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        // Grew between the two calls: ask again.
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// All attributes of `path`, sorted by name. A filesystem without xattr support
/// gives an empty list.
pub fn list(path: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let cpath = c_path(path)?;
    // SAFETY: cpath is NUL-terminated; the buffer pointer and length come from `sized`.
    let names = match sized(|buf, len| unsafe { libc::llistxattr(cpath.as_ptr(), buf.cast(), len) })
    {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: as above.
        let value = match sized(|buf, len| unsafe {
            libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), buf, len)
        }) {
            Ok(v) => v,
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        out.push((OsString::from_vec(name.to_vec()), value));
    }
    out.sort();
    Ok(out)
}

/// Set one attribute on `path` (not following a final symlink).
pub fn set(path: &Path, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let cpath = c_path(path)?;
    let cname =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are NUL-terminated; value is a valid slice.
    let r = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

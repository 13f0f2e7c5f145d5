//! Cheaply clonable byte slices that share one buffer, so parsed entries point into
//! the decompressed archive instead of copying every file.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

/// An immutable slice of a shared buffer.
#[derive(Clone, Default)]
pub struct Blob {
    buf: Arc<Vec<u8>>,
    start: usize,
    end: usize,
}

impl Blob {
    /// A blob owning `bytes` (no copy).
    pub fn new(bytes: Vec<u8>) -> Self {
        let end = bytes.len();
        Blob {
            buf: Arc::new(bytes),
            start: 0,
            end,
        }
    }

    /// A sub-slice sharing the same buffer. `range` is relative to this blob and
    /// must lie inside it (callers check bounds first; out-of-range is clamped).
    pub fn slice(&self, range: Range<usize>) -> Blob {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        Blob {
            buf: Arc::clone(&self.buf),
            start: self.start + start,
            end: self.start + end,
        }
    }
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob::new(v)
    }
}

impl From<&[u8]> for Blob {
    fn from(v: &[u8]) -> Self {
        Blob::new(v.to_vec())
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Blob {}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_and_clamp() {
        let b = Blob::new(b"hello world".to_vec());
        let w = b.slice(6..11);
        assert_eq!(&*w, b"world");
        assert_eq!(&*w.slice(1..3), b"or");
        assert_eq!(&*w.slice(3..99), b"ld");
        assert!(w.slice(9..12).is_empty());
    }
}

//! The parser's view of the file stream: the received chunks that unfinished pieces
//! still need. Pieces are handed out as views of those chunks, not copies; only a
//! compressed cluster that straddles two chunks is copied, because the decompressor
//! needs it in one piece.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Received file bytes `[start, end)`, as the chunks they arrived in.
#[derive(Default)]
pub struct Window {
    chunks: VecDeque<Bytes>,
    start: u64,
    end: u64,
}

impl Window {
    pub fn new() -> Self {
        Self::default()
    }

    /// File offset of the first byte still held.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// File offset just past the last byte received.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Append the next chunk of the stream.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.end += chunk.len() as u64;
        self.chunks.push_back(chunk);
    }

    /// Views of file bytes `[from, to)`, one per chunk they lie in; empty if the
    /// range is not (wholly) held.
    pub fn views(&self, from: u64, to: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        if from < self.start || to > self.end || from >= to {
            return out;
        }
        let mut chunk_start = self.start;
        for chunk in &self.chunks {
            let chunk_end = chunk_start + chunk.len() as u64;
            if chunk_end > from && chunk_start < to {
                let a = from.max(chunk_start) - chunk_start;
                let b = to.min(chunk_end) - chunk_start;
                out.push(chunk.slice(a as usize..b as usize));
            }
            if chunk_end >= to {
                break;
            }
            chunk_start = chunk_end;
        }
        out
    }

    /// File bytes `[from, to)` as one buffer: a view when they lie in one chunk, a
    /// copy otherwise; None if the range is not (wholly) held.
    pub fn contiguous(&self, from: u64, to: u64) -> Option<Bytes> {
        if from == to && from >= self.start && to <= self.end {
            return Some(Bytes::new());
        }
        let mut views = self.views(from, to);
        match views.len() {
            0 => None,
            1 => views.pop(),
            _ => {
                let mut joined = BytesMut::with_capacity((to - from) as usize);
                for v in &views {
                    joined.extend_from_slice(v);
                }
                Some(joined.freeze())
            }
        }
    }

    /// Forget the chunks that lie wholly before `offset` (a chunk partly needed
    /// stays, so `start` may remain below `offset`).
    pub fn release_before(&mut self, offset: u64) {
        while let Some(first) = self.chunks.front() {
            let first_end = self.start + first.len() as u64;
            if first_end > offset {
                break;
            }
            self.start = first_end;
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes 0..n (mod 251) as chunks of the given sizes.
    fn window_of(sizes: &[usize]) -> (Window, Vec<u8>) {
        let total: usize = sizes.iter().sum();
        let all: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut w = Window::new();
        let mut at = 0;
        for &s in sizes {
            w.push(Bytes::copy_from_slice(&all[at..at + s]));
            at += s;
        }
        (w, all)
    }

    fn joined(views: &[Bytes]) -> Vec<u8> {
        views.iter().flat_map(|v| v.iter().copied()).collect()
    }

    #[test]
    fn views_cover_exactly_the_range_across_chunks() {
        let (w, all) = window_of(&[10, 0, 7, 13]);
        assert_eq!(w.len(), 30);
        for from in 0..=30u64 {
            for to in from..=30u64 {
                let views = w.views(from, to);
                assert_eq!(
                    joined(&views),
                    &all[from as usize..to as usize],
                    "{from}..{to}"
                );
                assert!(views.iter().all(|v| !v.is_empty()));
                let one = w.contiguous(from, to).expect("held");
                assert_eq!(&one[..], &all[from as usize..to as usize]);
            }
        }
        assert!(w.views(5, 31).is_empty());
        assert!(w.contiguous(29, 31).is_none());
    }

    #[test]
    fn a_range_inside_one_chunk_is_not_copied() {
        let (w, _) = window_of(&[16, 16]);
        let view = w.contiguous(18, 30).unwrap();
        let again = w.contiguous(18, 30).unwrap();
        // Both are views of the same received chunk, so they share memory.
        assert_eq!(view.as_ptr(), again.as_ptr());
    }

    #[test]
    fn release_keeps_a_partly_needed_chunk() {
        let (mut w, all) = window_of(&[8, 8, 8]);
        w.release_before(12);
        assert_eq!((w.start(), w.end()), (8, 24));
        assert_eq!(joined(&w.views(12, 20)), &all[12..20]);
        assert!(w.views(4, 10).is_empty(), "released bytes are gone");
        w.release_before(24);
        assert!(w.is_empty());
        assert_eq!(w.start(), 24);
    }
}

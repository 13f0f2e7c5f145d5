//! Large byte buffers (whole decompressed initramfs images: 100+ MiB) backed by
//! transparent huge pages where the kernel offers them: first touching 2 MiB
//! pages costs a fraction of faulting in 4 KiB ones, which was a tenth of a
//! repack's time.

/// Buffers smaller than this are left to the allocator as they are.
const HUGE_MIN: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// An empty Vec with room for `capacity` bytes, its whole 2 MiB pages advised
/// for huge pages (MADV_HUGEPAGE; a hint the kernel may ignore).
pub fn with_capacity(capacity: usize) -> Vec<u8> {
    let buf = Vec::with_capacity(capacity);
    if capacity >= HUGE_MIN {
        let start = (buf.as_ptr() as usize).next_multiple_of(HUGE_PAGE);
        let end = (buf.as_ptr() as usize + capacity) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: [start, end) lies inside this Vec's allocation; the advice
            // changes how pages are backed, never their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    #[test]
    fn buffers_are_empty_with_the_room_asked_for() {
        for cap in [0, 10, 5 << 20] {
            let b = super::with_capacity(cap);
            assert!(b.is_empty());
            assert!(b.capacity() >= cap);
        }
    }
}

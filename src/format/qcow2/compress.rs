//! Cluster compression as QEMU does it: raw deflate with a 4 KiB window (QEMU
//! inflates with windowBits -12, so longer distances would be unreadable there),
//! or one zstd frame. Compressors are per thread and reused.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress};

use super::header::CompressionType;

/// QEMU's deflate window: 2^12 bytes.
const QEMU_WINDOW_BITS: u8 = 12;
/// QEMU's zstd level.
const ZSTD_LEVEL: i32 = 3;

thread_local! {
    static DEFLATE: RefCell<Option<RawDeflater>> = const { RefCell::new(None) };
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
    static ZSTD_C: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("{0} stream is corrupt: {1}")]
    Corrupt(&'static str, String),
    #[error("{0} stream ends after {1} of {2} bytes")]
    Short(&'static str, usize, usize),
    #[error("zstd: {0}")]
    Zstd(String),
}

/// Compress one cluster into `out`, returning false (and leaving `out` unspecified)
/// when the result would not be smaller than `cluster.len() - 1` bytes, in which case
/// QEMU stores the cluster uncompressed and so do we.
pub fn compress_cluster(
    kind: CompressionType,
    cluster: &[u8],
    out: &mut Vec<u8>,
) -> Result<bool, CompressError> {
    let limit = cluster.len() - 1;
    out.clear();
    out.resize(limit, 0);
    match kind {
        CompressionType::Zlib => DEFLATE.with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = Some(RawDeflater::new()?);
            }
            match slot.as_mut() {
                Some(d) => d.compress(cluster, out),
                None => Ok(false),
            }
        }),
        CompressionType::Zstd => ZSTD_C.with_borrow_mut(|slot| {
            if slot.is_none() {
                let c = zstd::bulk::Compressor::new(ZSTD_LEVEL)
                    .map_err(|e| CompressError::Zstd(e.to_string()))?;
                *slot = Some(c);
            }
            let Some(c) = slot.as_mut() else {
                return Ok(false);
            };
            match c.compress_to_buffer(cluster, out.as_mut_slice()) {
                Ok(n) => {
                    out.truncate(n);
                    Ok(true)
                }
                // Destination too small: not worth compressing.
                Err(_) => Ok(false),
            }
        }),
    }
}

/// Raw deflate tuned for qcow2 clusters. zlib-rs hashes 4-byte prefixes at its
/// usual levels, which in QEMU's 4 KiB window loses many 3-byte matches (output
/// 3% larger than zlib's level 6). Its level 9 uses zlib's rolling 3-byte hash;
/// tuned down to a short chain it keeps zlib's ratio and stays faster than
/// zlib's level 6. The tuning is not in the safe API, hence the C interface.
struct RawDeflater {
    stream: Box<libz_rs_sys::z_stream>,
}

/// (good_length, max_lazy, nice_length, max_chain): within 1% of zlib level 6's
/// size on a Debian /usr image, about 1.6x faster.
const DEFLATE_TUNING: (i32, i32, i32, i32) = (4, 16, 64, 16);

impl RawDeflater {
    fn new() -> Result<Self, CompressError> {
        // SAFETY: an all-zero z_stream is the documented initial state (no custom
        // allocator); deflateInit2_ fills it in. It is boxed so it never moves.
        let mut stream: Box<libz_rs_sys::z_stream> = Box::new(unsafe { std::mem::zeroed() });
        let rc = unsafe {
            libz_rs_sys::deflateInit2_(
                stream.as_mut(),
                9,
                libz_rs_sys::Z_DEFLATED,
                -i32::from(QEMU_WINDOW_BITS),
                9,
                libz_rs_sys::Z_DEFAULT_STRATEGY,
                libz_rs_sys::zlibVersion(),
                std::mem::size_of::<libz_rs_sys::z_stream>() as i32,
            )
        };
        if rc != libz_rs_sys::Z_OK {
            return Err(CompressError::Corrupt(
                "deflate",
                format!("init failed ({rc})"),
            ));
        }
        Ok(Self { stream })
    }

    /// Compress `input` into `out` (its length is the limit); true if it fit.
    fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<bool, CompressError> {
        let (good, lazy, nice, chain) = DEFLATE_TUNING;
        let s = self.stream.as_mut();
        // SAFETY: the stream was initialized in new(); next_in/next_out point into
        // live slices whose lengths are given, and are reset before each use.
        let rc = unsafe {
            libz_rs_sys::deflateReset(s);
            // Reset restores the level's parameters, so tune after it.
            libz_rs_sys::deflateTune(s, good, lazy, nice, chain);
            s.next_in = input.as_ptr();
            s.avail_in = input.len() as u32;
            s.next_out = out.as_mut_ptr();
            s.avail_out = out.len() as u32;
            libz_rs_sys::deflate(s, libz_rs_sys::Z_FINISH)
        };
        let written = out.len() - s.avail_out as usize;
        s.next_in = std::ptr::null();
        s.next_out = std::ptr::null_mut();
        match rc {
            libz_rs_sys::Z_STREAM_END => {
                out.truncate(written);
                Ok(true)
            }
            libz_rs_sys::Z_OK | libz_rs_sys::Z_BUF_ERROR => Ok(false),
            rc => Err(CompressError::Corrupt(
                "deflate",
                format!("deflate failed ({rc})"),
            )),
        }
    }
}

impl Drop for RawDeflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialized by deflateInit2_ and is ended once.
        unsafe {
            libz_rs_sys::deflateEnd(self.stream.as_mut());
        }
    }
}

/// Decompress one cluster from `input` (which may carry trailing bytes of the next
/// compressed cluster, as the sector-rounded length in the L2 entry includes them)
/// into exactly `out.len()` bytes.
pub fn decompress_cluster(
    kind: CompressionType,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), CompressError> {
    match kind {
        CompressionType::Zlib => INFLATE.with_borrow_mut(|d| {
            d.reset(false);
            match d.decompress(input, out, FlushDecompress::Finish) {
                Ok(_) if d.total_out() as usize == out.len() => Ok(()),
                Ok(_) => Err(CompressError::Short(
                    "deflate",
                    d.total_out() as usize,
                    out.len(),
                )),
                Err(e) => Err(CompressError::Corrupt("deflate", e.to_string())),
            }
        }),
        CompressionType::Zstd => ZSTD_D.with_borrow_mut(|slot| {
            let dctx = slot.get_or_insert_with(zstd::zstd_safe::DCtx::create);
            zstd_stream_into(dctx, input, out)
        }),
    }
}

/// Streaming decompression until `out` is full: a one-shot call would reject the
/// trailing bytes after the frame.
fn zstd_stream_into(
    dctx: &mut zstd::zstd_safe::DCtx<'static>,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), CompressError> {
    use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective};
    dctx.reset(ResetDirective::SessionOnly)
        .map_err(|c| CompressError::Zstd(zstd::zstd_safe::get_error_name(c).to_string()))?;
    let want = out.len();
    let mut src = InBuffer::around(input);
    let mut dst = OutBuffer::around(out);
    loop {
        let before = (src.pos(), dst.pos());
        let hint = dctx.decompress_stream(&mut dst, &mut src).map_err(|c| {
            CompressError::Corrupt("zstd", zstd::zstd_safe::get_error_name(c).to_string())
        })?;
        if dst.pos() == want {
            return Ok(());
        }
        if hint == 0 || (src.pos(), dst.pos()) == before || src.pos() == input.len() {
            return Err(CompressError::Short("zstd", dst.pos(), want));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 / 5 % 251) as u8).collect()
    }

    #[test]
    fn both_kinds_round_trip_with_trailing_garbage() {
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            let data = sample(65536);
            let mut packed = Vec::new();
            assert!(compress_cluster(kind, &data, &mut packed).unwrap());
            assert!(packed.len() < data.len());
            packed.extend_from_slice(&[0xa5; 700]);
            let mut back = vec![0u8; data.len()];
            decompress_cluster(kind, &packed, &mut back).unwrap();
            assert_eq!(back, data, "{kind:?}");
        }
    }

    #[test]
    fn incompressible_clusters_are_left_alone() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut out = Vec::new();
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            assert!(!compress_cluster(kind, &noise, &mut out).unwrap());
        }
    }

    #[test]
    fn deflate_output_never_reaches_back_beyond_qemu_window() {
        // A block repeated at 8 KiB distance: with a 32 KiB window deflate would
        // reference it; QEMU's 4 KiB window inflater must still decode our output.
        let block = sample(8192);
        let data: Vec<u8> = block.iter().chain(block.iter()).copied().collect();
        let mut packed = Vec::new();
        compress_cluster(CompressionType::Zlib, &data, &mut packed).unwrap();
        let mut narrow = Decompress::new_with_window_bits(false, QEMU_WINDOW_BITS);
        let mut back = vec![0u8; data.len()];
        narrow
            .decompress(&packed, &mut back, FlushDecompress::Finish)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn truncated_streams_are_errors() {
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            let data = sample(65536);
            let mut packed = Vec::new();
            compress_cluster(kind, &data, &mut packed).unwrap();
            let mut back = vec![0u8; data.len()];
            assert!(decompress_cluster(kind, &packed[..packed.len() / 2], &mut back).is_err());
        }
    }
}

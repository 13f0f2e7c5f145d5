//! Cluster compression as QEMU does it: raw deflate with a 4 KiB window (QEMU
//! inflates with windowBits -12, so longer distances would be unreadable there),
//! or one zstd frame. Compressors are per thread and reused.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::header::CompressionType;

/// QEMU's deflate window: 2^12 bytes.
const QEMU_WINDOW_BITS: u8 = 12;
/// Level 6 is zlib's default and what QEMU uses; zlib-rs at 6 matches its ratio.
const ZLIB_LEVEL: u32 = 6;
/// QEMU's zstd level.
const ZSTD_LEVEL: i32 = 3;

thread_local! {
    static DEFLATE: RefCell<Compress> =
        RefCell::new(Compress::new_with_window_bits(Compression::new(ZLIB_LEVEL), false, QEMU_WINDOW_BITS));
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
        CompressionType::Zlib => DEFLATE.with_borrow_mut(|c| {
            c.reset();
            match c.compress(cluster, out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => {
                    out.truncate(c.total_out() as usize);
                    Ok(true)
                }
                Ok(_) => Ok(false),
                Err(e) => Err(CompressError::Corrupt("deflate", e.to_string())),
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

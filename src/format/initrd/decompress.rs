//! Decompressing exactly one stream from the front of a buffer and reporting how
//! many bytes it occupied, so the segment after it can be found.

use std::io::{self, Read};

use super::Compression;

pub(super) enum Error {
    /// The output would exceed the caller's limit.
    TooLarge,
    Corrupt(String),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Corrupt(e.to_string())
    }
}

/// Memory the xz decoder may use (xz -9 needs 65 MiB); bounds hostile dictionary sizes.
const XZ_MEMLIMIT: u64 = 512 << 20;
/// Uncompressed size of every block but the last in an lz4 legacy frame.
const LZ4_BLOCK: usize = 8 << 20;
const LZ4_MAGIC: u32 = 0x184C_2102;

/// Decompress the stream at the start of `input`: (data, bytes of `input` consumed).
pub(super) fn decompress(
    compression: Compression,
    input: &[u8],
    limit: u64,
) -> Result<(Vec<u8>, usize), Error> {
    let mut rest = input;
    let out = match compression {
        Compression::None => return Err(Error::Corrupt("not a compressed stream".into())),
        Compression::Gzip => read_limited(
            flate2::bufread::GzDecoder::new(&mut rest),
            limit,
            expected_size(input, None),
        )?,
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            read_limited(
                liblzma::bufread::XzDecoder::new_stream(&mut rest, stream),
                limit,
                expected_size(input, None),
            )?
        }
        Compression::Bzip2 => read_limited(
            bzip2::bufread::BzDecoder::new(&mut rest),
            limit,
            expected_size(input, None),
        )?,
        Compression::Zstd => return zstd_frame(input, limit),
        Compression::Lz4 => return lz4_legacy(input, limit),
    };
    Ok((out, input.len() - rest.len()))
}

/// A guess of the decompressed size: what the header says, else four times the
/// compressed bytes (initramfs content compresses about 3-4x).
fn expected_size(input: &[u8], declared: Option<u64>) -> usize {
    declared.unwrap_or(input.len() as u64 * 4).min(1 << 32) as usize
}

fn read_limited(reader: impl Read, limit: u64, expected: usize) -> Result<Vec<u8>, Error> {
    let mut out = crate::util::bigbuf::with_capacity(expected.min(limit as usize));
    reader.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(Error::TooLarge);
    }
    Ok(out)
}

fn zstd_frame(input: &[u8], limit: u64) -> Result<(Vec<u8>, usize), Error> {
    let len = zstd::zstd_safe::find_frame_compressed_size(input).map_err(|code| {
        Error::Corrupt(format!(
            "cannot find the end of the frame ({})",
            zstd::zstd_safe::get_error_name(code)
        ))
    })?;
    let frame = input
        .get(..len)
        .ok_or_else(|| Error::Corrupt("frame size past the end".into()))?;
    let declared = zstd::zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten();
    let decoder = zstd::stream::read::Decoder::with_buffer(frame)?.single_frame();
    let out = read_limited(decoder, limit, expected_size(frame, declared))?;
    Ok((out, len))
}

/// The lz4 legacy frame: magic, then blocks (4-byte little-endian compressed size,
/// compressed block) that each expand to 8 MiB except the last. The frame ends at
/// the end of the input, at a short block, at zero padding, or at a word too large
/// to be a block size (the next segment). A repeated magic continues the frame.
fn lz4_legacy(input: &[u8], limit: u64) -> Result<(Vec<u8>, usize), Error> {
    let max_block = lz4_flex::block::get_maximum_output_size(LZ4_BLOCK);
    let mut pos = 4;
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_BLOCK];
    while let Some(word) = input.get(pos..pos + 4) {
        let size = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        if size == LZ4_MAGIC {
            pos += 4;
            continue;
        }
        if size == 0 || size as usize > max_block {
            break;
        }
        let start = pos + 4;
        let compressed = input.get(start..start + size as usize).ok_or_else(|| {
            Error::Corrupt(format!(
                "block at {pos} of {size} bytes runs past the end ({} left)",
                input.len() - start
            ))
        })?;
        let n = lz4_flex::block::decompress_into(compressed, &mut block)
            .map_err(|e| Error::Corrupt(format!("block at {pos}: {e}")))?;
        if (out.len() + n) as u64 > limit {
            return Err(Error::TooLarge);
        }
        out.extend_from_slice(&block[..n]);
        pos = start + size as usize;
        if n < LZ4_BLOCK {
            break;
        }
    }
    if out.is_empty() {
        return Err(Error::Corrupt("lz4 frame without data".into()));
    }
    Ok((out, pos))
}

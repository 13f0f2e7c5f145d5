//! The image the conductor serves, as the ordered writes that put it on a disk.
//!
//! The guest disk is cut into units of at least 1 MiB; batches of units are
//! decoded (qcow2 clusters decompressed) on rayon while the previous batch is
//! being written, so at most a few batches (`BATCH_BYTES` each) are in memory.
//! Only bytes the image holds as data become writes; holes, zero clusters and
//! data that reads as zeros become zero ranges, or nothing when the disk is
//! known to be erased.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

use rayon::prelude::*;

use super::{BlockWriter, ImageWriteReport, InitiatorError};
use crate::format::source::is_zero;
use crate::format::{BlockSource, ExtentKind, open_image};

const MIN_UNIT: u64 = 1 << 20;
/// Guest bytes decoded per batch; with one batch queued and one being written,
/// decoded data in memory stays under about 3 x this.
const BATCH_BYTES: u64 = 16 << 20;
/// The head of the disk (partition table, boot loader) is written last, so a
/// deploy that fails half-way never leaves a disk that looks bootable.
const HEAD_BYTES: u64 = 1 << 20;
/// Writes handed to the disk at once (each at most one unit).
const WRITES_IN_FLIGHT: usize = 8;

/// One step of putting the image on a disk, in guest order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes to write at `offset`.
    Data { offset: u64, bytes: Vec<u8> },
    /// A range to make read as zero; `image_data` of its bytes were image data
    /// that happened to be zeros (the rest were holes).
    Zero {
        offset: u64,
        len: u64,
        image_data: u64,
    },
    /// Image data that reads as zeros, on a disk known to be erased: nothing to
    /// write, only progress to count.
    Skip { image_data: u64 },
}

impl Piece {
    /// How many bytes of the image's data this piece accounts for.
    pub fn image_data(&self) -> u64 {
        match self {
            Piece::Data { bytes, .. } => bytes.len() as u64,
            Piece::Zero { image_data, .. } | Piece::Skip { image_data } => *image_data,
        }
    }
}

/// An image opened for walking.
pub struct ImageExtents {
    path: PathBuf,
    source: Box<dyn BlockSource>,
    unit: u64,
}

impl ImageExtents {
    /// Open a qcow2 or raw image (the format is probed).
    pub fn open(path: &Path) -> Result<Self, InitiatorError> {
        let (_, source) = open_image(path, None)?;
        let unit = MIN_UNIT.max(source.io_granularity().min(8 << 20));
        Ok(Self {
            path: path.to_path_buf(),
            source,
            unit,
        })
    }

    pub fn virtual_size(&self) -> u64 {
        self.source.virtual_size()
    }

    fn read_err(&self, offset: u64) -> impl Fn(std::io::Error) -> InitiatorError + '_ {
        move |source| InitiatorError::ImageRead {
            path: self.path.clone(),
            offset,
            source,
        }
    }

    /// Bytes the image's metadata marks as data (what progress counts).
    pub fn data_bytes(&self) -> Result<u64, InitiatorError> {
        let size = self.virtual_size();
        let mut pos = 0;
        let mut data = 0;
        while pos < size {
            let ext = self
                .source
                .extent_at(pos, size - pos)
                .map_err(self.read_err(pos))?;
            let len = ext.len.clamp(1, size - pos);
            if ext.kind == ExtentKind::Data {
                data += len;
            }
            pos += len;
        }
        Ok(data)
    }

    /// The pieces of the unit at `offset`, in order.
    fn decode_unit(
        &self,
        offset: u64,
        len: u64,
        disk_erased: bool,
    ) -> Result<Vec<Piece>, InitiatorError> {
        let mut pieces = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let ext = self
                .source
                .extent_at(pos, end - pos)
                .map_err(self.read_err(pos))?;
            let n = ext.len.clamp(1, end - pos);
            let piece = match ext.kind {
                ExtentKind::Zero => Piece::Zero {
                    offset: pos,
                    len: n,
                    image_data: 0,
                },
                ExtentKind::Data => {
                    let mut bytes = vec![0u8; n as usize];
                    self.source
                        .read_exact_at(&mut bytes, pos)
                        .map_err(self.read_err(pos))?;
                    if !is_zero(&bytes) {
                        Piece::Data { offset: pos, bytes }
                    } else if disk_erased {
                        Piece::Skip { image_data: n }
                    } else {
                        Piece::Zero {
                            offset: pos,
                            len: n,
                            image_data: n,
                        }
                    }
                }
            };
            match piece {
                Piece::Zero { image_data: 0, .. } if disk_erased => {}
                piece => pieces.push(piece),
            }
            pos += n;
        }
        Ok(pieces)
    }

    /// Hand every piece to `emit` in guest order, adjacent zero ranges merged.
    /// Decoding runs ahead on rayon; an error from `emit` stops the walk.
    pub fn walk<E: From<InitiatorError>>(
        &self,
        disk_erased: bool,
        mut emit: impl FnMut(Piece) -> Result<(), E>,
    ) -> Result<(), E> {
        let size = self.virtual_size();
        let unit = self.unit;
        let units = size.div_ceil(unit);
        let per_batch = (BATCH_BYTES / unit).max(1);
        let (tx, rx) = mpsc::sync_channel::<Result<Vec<Piece>, InitiatorError>>(1);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for first in (0..units).step_by(per_batch as usize) {
                    let last = (first + per_batch).min(units);
                    let batch = (first..last)
                        .into_par_iter()
                        .map(|i| {
                            let offset = i * unit;
                            self.decode_unit(offset, unit.min(size - offset), disk_erased)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(|units| units.into_iter().flatten().collect());
                    let failed = batch.is_err();
                    // A closed channel means the consumer stopped: stop too.
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            });
            let mut zero: Option<(u64, u64, u64)> = None;
            for batch in rx {
                for piece in batch? {
                    match piece {
                        Piece::Zero {
                            offset,
                            len,
                            image_data,
                        } => match &mut zero {
                            Some((start, zlen, data)) if *start + *zlen == offset => {
                                *zlen += len;
                                *data += image_data;
                            }
                            _ => {
                                if let Some((offset, len, image_data)) = zero.take() {
                                    emit(Piece::Zero {
                                        offset,
                                        len,
                                        image_data,
                                    })?;
                                }
                                zero = Some((offset, len, image_data));
                            }
                        },
                        other => {
                            if let Some((offset, len, image_data)) = zero.take() {
                                emit(Piece::Zero {
                                    offset,
                                    len,
                                    image_data,
                                })?;
                            }
                            emit(other)?;
                        }
                    }
                }
            }
            if let Some((offset, len, image_data)) = zero {
                emit(Piece::Zero {
                    offset,
                    len,
                    image_data,
                })?;
            }
            Ok(())
        })
    }
}

/// Split `piece` at guest offset `at`: (part before, part from `at` on).
fn split_piece(piece: Piece, at: u64) -> (Option<Piece>, Option<Piece>) {
    match piece {
        Piece::Data { offset, mut bytes } if offset < at && offset + bytes.len() as u64 > at => {
            let tail = bytes.split_off((at - offset) as usize);
            (
                Some(Piece::Data { offset, bytes }),
                Some(Piece::Data {
                    offset: at,
                    bytes: tail,
                }),
            )
        }
        Piece::Zero {
            offset,
            len,
            image_data,
        } if offset < at && offset + len > at => {
            let head = at - offset;
            let head_data = image_data.min(head);
            (
                Some(Piece::Zero {
                    offset,
                    len: head,
                    image_data: head_data,
                }),
                Some(Piece::Zero {
                    offset: at,
                    len: len - head,
                    image_data: image_data - head_data,
                }),
            )
        }
        Piece::Data { offset, .. } | Piece::Zero { offset, .. } if offset < at => {
            (Some(piece), None)
        }
        other => (None, Some(other)),
    }
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

/// Totals of what reached the disk.
#[derive(Default)]
struct Tally {
    written: AtomicU64,
    zeroed: AtomicU64,
    image_data: AtomicU64,
}

/// Do one piece on the disk. A short tail (an image whose size is not a whole
/// number of blocks) is padded with zeros up to the block.
fn apply(disk: &dyn BlockWriter, piece: Piece, tally: &Tally) -> Result<(), InitiatorError> {
    let bs = u64::from(disk.block_size().max(1));
    let data = piece.image_data();
    match piece {
        Piece::Data { offset, mut bytes } => {
            let padded = round_up(bytes.len() as u64, bs) as usize;
            bytes.resize(padded, 0);
            disk.write_at(offset, &bytes)?;
            tally.written.fetch_add(padded as u64, Ordering::Relaxed);
        }
        Piece::Zero { offset, len, .. } => {
            let start = round_up(offset, bs);
            let end = round_up(offset + len, bs).min(disk.size());
            if end > start {
                disk.zero(start, end - start)?;
                tally.zeroed.fetch_add(end - start, Ordering::Relaxed);
            }
        }
        Piece::Skip { .. } => {}
    }
    tally.image_data.fetch_add(data, Ordering::Relaxed);
    Ok(())
}

/// Write IMAGE onto `disk`: data where the image has data, zeros elsewhere
/// unless `disk_erased`; the first MiB goes last; then flush.
/// `progress(done, total)` counts the image's data bytes.
pub fn write_image_to(
    disk: &dyn BlockWriter,
    image: &Path,
    disk_erased: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ImageWriteReport, InitiatorError> {
    let extents = ImageExtents::open(image)?;
    let virtual_size = extents.virtual_size();
    if virtual_size > disk.size() {
        return Err(InitiatorError::ImageTooLarge {
            path: image.to_path_buf(),
            image_size: virtual_size,
            disk_size: disk.size(),
        });
    }
    let total = extents.data_bytes()?;
    let tally = Tally::default();
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<InitiatorError>> = Mutex::new(None);
    let mut head = Vec::new();
    let (tx, rx) = mpsc::sync_channel::<Piece>(WRITES_IN_FLIGHT);
    let rx = Mutex::new(rx);

    let walked = std::thread::scope(|scope| {
        for _ in 0..WRITES_IN_FLIGHT {
            scope.spawn(|| {
                loop {
                    let next = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(piece) = next else { return };
                    // After a failure keep draining so the walker never blocks.
                    if failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    match apply(disk, piece, &tally) {
                        Ok(()) => progress(tally.image_data.load(Ordering::Relaxed), total),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
        let walked = extents.walk(disk_erased, |piece| -> Result<(), InitiatorError> {
            if failed.load(Ordering::Relaxed) {
                return Err(InitiatorError::SessionClosed {
                    target: "disk".into(),
                    reason: "a write failed".into(),
                });
            }
            let (before, after) = split_piece(piece, HEAD_BYTES);
            head.extend(before);
            if let Some(piece) = after {
                // The workers only go away when the channel closes, below.
                let _ = tx.send(piece);
            }
            Ok(())
        });
        drop(tx);
        walked
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    walked?;
    for piece in head {
        apply(disk, piece, &tally)?;
    }
    disk.flush()?;
    progress(total, total);
    Ok(ImageWriteReport {
        bytes_written: tally.written.into_inner(),
        bytes_zeroed: tally.zeroed.into_inner(),
        virtual_size,
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::iscsi::initiator::FileDisk;

    const MIB: u64 = 1 << 20;

    fn run(program: &str, args: &[&str]) {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} (package qemu-utils) cannot run: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A 24 MiB raw image: random data, a hole, a run of written zeros, data
    /// inside the first MiB and an unaligned tail region.
    fn make_raw(dir: &Path) -> PathBuf {
        let path = dir.join("disk.raw");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(24 * MIB).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(&pseudo_random(4096, 1), 0).unwrap();
        file.write_all_at(&pseudo_random(3 * MIB as usize + 512, 2), 2 * MIB + 4096)
            .unwrap();
        file.write_all_at(&vec![0u8; 2 * MIB as usize], 8 * MIB)
            .unwrap();
        file.write_all_at(&pseudo_random(65536, 3), 11 * MIB - 8192)
            .unwrap();
        file.write_all_at(&pseudo_random(MIB as usize, 4), 23 * MIB)
            .unwrap();
        path
    }

    fn make_qcow2(dir: &Path, raw: &Path, compression: &str) -> PathBuf {
        let path = dir.join(format!("disk-{compression}.qcow2"));
        run(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-c",
                "-o",
                &format!("compression_type={compression}"),
                raw.to_str().unwrap(),
                path.to_str().unwrap(),
            ],
        );
        // Zero clusters over what was data, and fresh data after compression.
        run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -z 3M 1M",
                "-c",
                "write -P 0x5a 16M 192k",
                path.to_str().unwrap(),
            ],
        );
        path
    }

    /// A "used" disk: every byte random, so anything not written shows.
    fn used_disk(dir: &Path, size: u64) -> PathBuf {
        let path = dir.join("target.img");
        std::fs::write(&path, pseudo_random(size as usize, 99)).unwrap();
        path
    }

    fn assert_identical(image: &Path, disk: &Path) {
        let out = Command::new("qemu-img")
            .args([
                "compare",
                "-q",
                image.to_str().unwrap(),
                disk.to_str().unwrap(),
            ])
            .output()
            .expect("qemu-img (package qemu-utils)");
        assert!(
            out.status.success(),
            "qemu-img compare {image:?} {disk:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn replaying_the_pieces_onto_a_used_disk_reproduces_each_image() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        for image in [
            raw.clone(),
            make_qcow2(dir.path(), &raw, "zlib"),
            make_qcow2(dir.path(), &raw, "zstd"),
        ] {
            let disk_path = used_disk(dir.path(), 24 * MIB);
            let disk = FileDisk::open(&disk_path).unwrap();
            let seen = Mutex::new(0u64);
            let report = write_image_to(&disk, &image, false, &|done, total| {
                assert!(done <= total, "progress {done} of {total}");
                *seen.lock().unwrap() = done;
            })
            .unwrap();
            assert_identical(&image, &disk_path);
            assert_eq!(report.virtual_size, 24 * MIB);
            assert_eq!(
                report.bytes_written + report.bytes_zeroed,
                24 * MIB,
                "{image:?}: every byte of a used disk is either written or zeroed"
            );
            assert_eq!(
                *seen.lock().unwrap(),
                ImageExtents::open(&image).unwrap().data_bytes().unwrap()
            );
        }
    }

    #[test]
    fn an_erased_disk_only_gets_the_non_zero_data() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        let image = make_qcow2(dir.path(), &raw, "zstd");
        let disk_path = dir.path().join("erased.img");
        std::fs::File::create(&disk_path)
            .unwrap()
            .set_len(32 * MIB)
            .unwrap();
        let disk = FileDisk::open(&disk_path).unwrap();
        let report = write_image_to(&disk, &image, true, &|_, _| {}).unwrap();
        assert_eq!(report.bytes_zeroed, 0);
        // Non-zero 512-byte blocks of the image, as qemu-img sees them.
        let flat = dir.path().join("flat.raw");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "raw",
                image.to_str().unwrap(),
                flat.to_str().unwrap(),
            ],
        );
        let bytes = std::fs::read(&flat).unwrap();
        let nonzero = bytes.chunks(512).filter(|c| !is_zero(c)).count() as u64 * 512;
        assert!(report.bytes_written >= nonzero);
        assert!(
            report.bytes_written < 12 * MIB,
            "{} bytes written for {nonzero} non-zero bytes",
            report.bytes_written
        );
        // The disk is bigger than the image: compare the image's span only.
        std::fs::File::options()
            .write(true)
            .open(&disk_path)
            .unwrap()
            .set_len(24 * MIB)
            .unwrap();
        assert_identical(&flat, &disk_path);
    }

    #[test]
    fn pieces_come_in_guest_order_without_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        let image = make_qcow2(dir.path(), &raw, "zlib");
        let extents = ImageExtents::open(&image).unwrap();
        let mut next = 0u64;
        extents
            .walk(false, |piece| -> Result<(), InitiatorError> {
                let (offset, len) = match &piece {
                    Piece::Data { offset, bytes } => (*offset, bytes.len() as u64),
                    Piece::Zero { offset, len, .. } => (*offset, *len),
                    Piece::Skip { .. } => panic!("skip on a disk that is not erased"),
                };
                assert_eq!(offset, next, "gap or overlap before {piece:?}");
                next = offset + len;
                Ok(())
            })
            .unwrap();
        assert_eq!(next, 24 * MIB);
    }

    #[test]
    fn the_head_of_the_disk_is_split_off_exactly() {
        let piece = Piece::Zero {
            offset: 0,
            len: 3 * MIB,
            image_data: 2 * MIB,
        };
        let (before, after) = split_piece(piece, MIB);
        assert_eq!(
            before,
            Some(Piece::Zero {
                offset: 0,
                len: MIB,
                image_data: MIB
            })
        );
        assert_eq!(
            after,
            Some(Piece::Zero {
                offset: MIB,
                len: 2 * MIB,
                image_data: MIB
            })
        );
        let data = Piece::Data {
            offset: MIB - 4,
            bytes: vec![1, 2, 3, 4, 5, 6],
        };
        let (before, after) = split_piece(data, MIB);
        assert_eq!(
            before,
            Some(Piece::Data {
                offset: MIB - 4,
                bytes: vec![1, 2, 3, 4]
            })
        );
        assert_eq!(
            after,
            Some(Piece::Data {
                offset: MIB,
                bytes: vec![5, 6]
            })
        );
    }

    /// A disk that refuses writes past a point: the error reaches the caller and
    /// the head of the disk is never written.
    struct FailingDisk {
        inner: FileDisk,
        fail_from: u64,
        head_written: AtomicBool,
    }

    impl BlockWriter for FailingDisk {
        fn block_size(&self) -> u32 {
            self.inner.block_size()
        }
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), InitiatorError> {
            if offset < HEAD_BYTES {
                self.head_written.store(true, Ordering::Relaxed);
            }
            if offset >= self.fail_from {
                return Err(InitiatorError::OutOfRange {
                    what: "test write",
                    offset,
                    len: data.len() as u64,
                    size: self.fail_from,
                });
            }
            self.inner.write_at(offset, data)
        }
        fn zero(&self, offset: u64, len: u64) -> Result<(), InitiatorError> {
            self.inner.zero(offset, len)
        }
        fn flush(&self) -> Result<(), InitiatorError> {
            self.inner.flush()
        }
    }

    #[test]
    fn a_failed_write_stops_the_deploy_before_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        let disk = FailingDisk {
            inner: FileDisk::open(&used_disk(dir.path(), 24 * MIB)).unwrap(),
            fail_from: 20 * MIB,
            head_written: AtomicBool::new(false),
        };
        let err = write_image_to(&disk, &raw, false, &|_, _| {}).unwrap_err();
        assert!(matches!(err, InitiatorError::OutOfRange { offset, .. } if offset >= 20 * MIB));
        assert!(!disk.head_written.load(Ordering::Relaxed));
    }
}

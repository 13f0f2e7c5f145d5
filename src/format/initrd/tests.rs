use super::*;
use crate::format::cpio::ArchiveWriter;

fn archive(names: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = ArchiveWriter::new();
    for (i, (name, data)) in names.iter().enumerate() {
        w.add(&Entry {
            name: name.as_bytes().to_vec(),
            ino: i as u32 + 1,
            mode: 0o100644,
            nlink: 1,
            data: Blob::from(*data),
            ..Entry::default()
        })
        .unwrap();
    }
    w.finish().unwrap()
}

fn names(seg: &Segment) -> Vec<String> {
    seg.entries.iter().map(|e| e.name_lossy()).collect()
}

fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = 0x184C_2102u32.to_le_bytes().to_vec();
    for block in data.chunks(8 << 20) {
        let c = lz4_flex::block::compress(block);
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(&c);
    }
    out
}

fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

use std::io::Write;

#[test]
fn segments_of_every_compression_with_padding() {
    let early = archive(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
    let main = archive(&[("init", b"#!/bin/sh\n"), ("etc/fstab", b"")]);
    let mut file = early.clone();
    file.extend_from_slice(&[0; 512]);
    let mut expect = vec![(
        Compression::None,
        vec!["kernel/x86/microcode/GenuineIntel.bin"],
    )];
    for c in [Compression::Gzip, Compression::Zstd, Compression::Xz] {
        file.extend(compress(&main, c).unwrap());
        file.extend_from_slice(&[0; 3]);
        expect.push((c, vec!["init", "etc/fstab"]));
    }
    file.extend(bzip2(&main));
    expect.push((Compression::Bzip2, vec!["init", "etc/fstab"]));
    file.extend(lz4_legacy(&main));
    expect.push((Compression::Lz4, vec!["init", "etc/fstab"]));
    file.extend_from_slice(&[0; 7]);
    let initrd = Initrd::parse(file.clone()).unwrap();
    let got: Vec<_> = initrd
        .segments
        .iter()
        .map(|s| (s.compression, names(s)))
        .collect();
    let expect: Vec<_> = expect
        .into_iter()
        .map(|(c, n)| (c, n.into_iter().map(String::from).collect::<Vec<_>>()))
        .collect();
    assert_eq!(got, expect);
    assert_eq!(&*initrd.segments[0].raw, &early[..]);
    // Segments tile the file apart from zero padding.
    for w in initrd.segments.windows(2) {
        let gap = &file[(w[0].offset + w[0].len) as usize..w[1].offset as usize];
        assert!(gap.iter().all(|&b| b == 0));
    }
}

#[test]
fn gzip_output_is_one_member_however_many_chunks() {
    // Over 3 MiB of poorly compressible data: several parallel deflate chunks.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..3_500_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 7) as u8
        })
        .collect();
    let data = archive(&[("a", &big), ("b", b"2")]);
    let file = compress(&data, Compression::Gzip).unwrap();
    // A single-member decoder must see everything: one member, valid CRC and size.
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&file[..]), &mut back).unwrap();
    assert_eq!(back, data);
    let initrd = Initrd::parse(file).unwrap();
    assert_eq!(initrd.segments.len(), 1);
    assert_eq!(names(&initrd.segments[0]), vec!["a", "b"]);
}

#[test]
fn separately_compressed_gzip_members_are_separate_segments() {
    let member = |data: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, data).unwrap();
        enc.finish().unwrap()
    };
    let mut file = member(&archive(&[("a", b"1")]));
    file.extend(member(&archive(&[("b", b"2")])));
    let initrd = Initrd::parse(file).unwrap();
    assert_eq!(initrd.segments.len(), 2);
    assert_eq!(names(&initrd.segments[1]), vec!["b"]);
}

#[test]
fn several_archives_in_one_stream() {
    let mut data = archive(&[("a", b"1")]);
    data.extend_from_slice(&[0; 8]);
    data.extend(archive(&[("b", b"2")]));
    let file = compress(&data, Compression::Zstd).unwrap();
    let initrd = Initrd::parse(file).unwrap();
    assert_eq!(names(&initrd.segments[0]), vec!["a", "b"]);
    assert_eq!(initrd.segments[0].archive_starts, vec![0, 1]);
}

#[test]
fn cut_and_damaged_streams_are_errors() {
    let main = archive(&[("init", &[7u8; 5000])]);
    for c in [Compression::Gzip, Compression::Zstd, Compression::Xz] {
        let full = compress(&main, c).unwrap();
        for cut in [1, 2, full.len() / 2, full.len() - 1] {
            let r = Initrd::parse(full[..cut].to_vec());
            assert!(r.is_err(), "{c} cut at {cut} parsed");
        }
        let mut garbage = full.clone();
        garbage.extend_from_slice(b"\0\0junk");
        assert!(matches!(
            Initrd::parse(garbage),
            Err(InitrdFormatError::UnknownData { .. })
        ));
    }
    for full in [bzip2(&main), lz4_legacy(&main)] {
        assert!(Initrd::parse(full.clone()).is_ok());
        assert!(Initrd::parse(full[..full.len() - 1].to_vec()).is_err());
    }
    assert!(matches!(
        Initrd::parse(vec![0; 100]),
        Err(InitrdFormatError::Empty)
    ));
}

#[test]
fn expansion_is_bounded() {
    let big = archive(&[("zeros", &vec![0u8; 1 << 20])]);
    let file = compress(&big, Compression::Zstd).unwrap();
    assert!(matches!(
        Initrd::parse_with_limit(file, 1000),
        Err(InitrdFormatError::TooLarge { .. })
    ));
}

/// Pseudo-random bytes with some redundancy, so deflate has work to do.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 11) as u8
        })
        .collect()
}

/// Stream `data` through a [`SegmentEncoder`] in uneven writes.
fn encode_streaming(data: &[u8], compression: Compression) -> Vec<u8> {
    let mut enc = SegmentEncoder::new(compression, Vec::new(), Some(data.len() as u64)).unwrap();
    let mut rest = data;
    let mut step = 1usize;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        std::io::Write::write_all(&mut enc, &rest[..n]).unwrap();
        rest = &rest[n..];
        step = step * 7 % 3_000_017 + 1;
    }
    enc.finish().unwrap()
}

#[test]
fn streamed_gzip_is_one_member_gnu_gzip_reads_at_chunk_and_batch_edges() {
    const MIB: usize = 1 << 20;
    // Empty, tiny, exactly one chunk, and more than one batch of chunks (16) with
    // and without a partial last chunk.
    for len in [0, 1, MIB, 17 * MIB, 17 * MIB + 5] {
        let data = noise(len, len as u64 + 3);
        let file = encode_streaming(&data, Compression::Gzip);
        assert_eq!(file, compress(&data, Compression::Gzip).unwrap(), "{len}");
        let mut gzip = std::process::Command::new("gzip")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip");
        let mut stdin = gzip.stdin.take().unwrap();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &file));
        let out = gzip.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "gzip -dc failed for {len} bytes");
        assert!(out.stdout == data, "gzip -dc gives other bytes for {len}");
    }
}

#[test]
fn output_does_not_depend_on_the_thread_count() {
    let data = noise(5 << 20, 9);
    for c in [Compression::Gzip, Compression::Zstd, Compression::Xz] {
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| compress(&data, c).unwrap());
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| compress(&data, c).unwrap());
        assert!(one == three, "{c}: output depends on the thread count");
    }
}

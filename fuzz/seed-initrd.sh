#!/bin/bash
# Seed corpus for the `initrd` fuzz target: small initramfs images of every
# compression kiln reads, with and without an early uncompressed archive.
# Needs cpio, gzip, zstd, xz, lz4, bzip2.
set -euo pipefail
cd "$(dirname "$0")"
corpus=corpus/initrd
mkdir -p "$corpus"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/t/bin" "$work/t/etc" "$work/e/kernel/x86/microcode"
printf '#!/bin/sh\n' > "$work/t/init"
chmod 755 "$work/t/init"
echo fstab > "$work/t/etc/fstab"
ln "$work/t/etc/fstab" "$work/t/etc/fstab2"
ln -s ../init "$work/t/bin/sh"
mkfifo "$work/t/etc/fifo"
echo ucode > "$work/e/kernel/x86/microcode/GenuineIntel.bin"
(cd "$work/t" && find . | LC_ALL=C sort | cpio -o -H newc --quiet > "$work/main.cpio")
(cd "$work/t" && find . | LC_ALL=C sort | cpio -o -H crc --quiet > "$work/crc.cpio")
(cd "$work/e" && find . | LC_ALL=C sort | cpio -o -H newc --quiet > "$work/early.cpio")
cp "$work/main.cpio" "$corpus/plain"
cp "$work/crc.cpio" "$corpus/crc"
gzip -9 -n -c "$work/main.cpio" > "$corpus/gzip"
zstd -q -c "$work/main.cpio" > "$corpus/zstd"
xz --check=crc32 -c "$work/main.cpio" > "$corpus/xz"
lz4 -l -q -c "$work/main.cpio" > "$corpus/lz4"
bzip2 -c "$work/main.cpio" > "$corpus/bzip2"
{ cat "$work/early.cpio"; head -c 16 /dev/zero; cat "$corpus/zstd"; } > "$corpus/early-zstd"
{ cat "$work/early.cpio"; cat "$corpus/gzip" "$corpus/gzip"; } > "$corpus/early-gzip2"
ls -l "$corpus"

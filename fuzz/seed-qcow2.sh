#!/bin/bash
# Seed corpus for the qcow2 target: small images qemu-img makes with every feature
# the reader handles (compat levels, cluster sizes, compression, extended L2,
# refcount widths, zero clusters). Needs qemu-img and qemu-io.
set -euo pipefail
cd "$(dirname "$0")"
out=corpus/qcow2
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
for opts in compat=0.10 compat=1.1 cluster_size=512 cluster_size=4096 \
    compression_type=zstd extended_l2=on,cluster_size=16384 refcount_bits=1 \
    refcount_bits=64 lazy_refcounts=on; do
    img="$tmp/i.qcow2"
    qemu-img create -q -f qcow2 -o "$opts" "$img" 1M
    qemu-io -f qcow2 -c 'write -P 0x5a 0 3k' -c 'write -z 64k 8k' -c 'write -c -P 7 128k 64k' \
        "$img" >/dev/null 2>&1 || qemu-io -f qcow2 -c 'write -P 0x5a 0 3k' "$img" >/dev/null
    cp "$img" "$out/seed-$n"
    n=$((n + 1))
done
echo "$n seeds in fuzz/$out"

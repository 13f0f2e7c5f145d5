#!/bin/sh
# Seed corpus for the `gpt` fuzz target: small GPT disks made by sgdisk whose
# geometry matches what the target builds from [ctl, gap, head], so every seed
# reads back as a valid table (ctl 0x37: protective MBR, mirrored backup pointed
# at the end, both CRCs resealed). Needs sgdisk (package gdisk).
set -eu
out=$(dirname "$0")/corpus/gpt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

seed() { # NAME GAP SGDISK-ARGS...
    name=$1 gap=$2
    shift 2
    # 34 head sectors (MBR, header, 32 entry sectors), the gap, 33 backup sectors.
    truncate -s $(((34 + gap + 33) * 512)) "$tmp/$name.img"
    sgdisk -a 1 -o -U 11111111-2222-4333-8444-555555555555 "$@" "$tmp/$name.img" >/dev/null
    { printf "\\067\\$(printf %03o "$gap")"; head -c $((34 * 512)) "$tmp/$name.img"; } >"$out/$name"
}

seed three 200 -n 1:34:+50 -t 1:ef00 -c 1:EFI -n 2:0:+60 -t 2:8300 -c 2:données \
    -n 3:0:0 -t 3:8304 -c 3:root
seed sparse-slots 100 -n 2:40:+10 -n 5:60:+10 -A 5:set:2 -n 128:80:+5
seed empty 8
seed whole-disk 255 -n 1:0:0 -t 1:fd00
echo "seeds in $out"

#!/usr/bin/env bash
# Benchmark: write throughput of kiln's iSCSI initiator (`kiln iscsi write-image`)
# onto kiln's own target (`kiln agent export`) against the same initiator onto
# tgtd, both on 127.0.0.1 with a file backing store, same 2 GiB raw image.
#
# Run by hand, never in CI (see benches/README.md). Both targets are measured in
# the same invocation, so only the ratio is meaningful.
#
#   benches/iscsi.sh
#
# Environment:
#   KILN_BENCH_DIR  work dir (/var/tmp/kiln-bench); this script uses its iscsi/ folder
#   KILN            kiln binary (default: <repo>/target/release/kiln)
#   REPS            repetitions per target (3)
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SCRIPT")")
# shellcheck source=benches/lib/common.sh
. "$REPO/benches/lib/common.sh"

die() { printf 'iscsi.sh: error: %s\n' "$*" >&2; exit 1; }

BENCH_DIR=${KILN_BENCH_DIR:-/var/tmp/kiln-bench}
DIR=$BENCH_DIR/iscsi
KILN=${KILN:-$REPO/target/release/kiln}
REPS=${REPS:-3}
DISK_BYTES=$((2 * 1024 * 1024 * 1024))
GOAL_KILN_VS_TGTD=1.0
IQN=iqn.2026-11.org.kiln:bench
USER_NAME=bench
export KILN_CHAP_SECRET=bench-secret-0123

[[ -x $KILN ]] || die "no kiln binary at $KILN (cargo build --release)"
for tool in qemu-img python3 tgtd tgtadm; do
	command -v "$tool" >/dev/null || die "$tool is needed (packages qemu-utils, tgt)"
done
mkdir -p "$DIR"

# The image: 2 GiB raw, mostly seeded random data, with two 128 MiB holes.
IMG=$DIR/image.raw
if [[ ! -f $IMG ]]; then
	say "building $IMG"
	truncate -s "$DISK_BYTES" "$IMG.tmp"
	python3 - "$IMG.tmp" <<'PY'
import random, sys
rng = random.Random(8)
with open(sys.argv[1], "r+b") as f:
    for mib in range(2048):
        if 512 <= mib < 640 or 1536 <= mib < 1664:
            continue  # holes
        f.seek(mib << 20)
        f.write(rng.randbytes(1 << 20))
PY
	mv "$IMG.tmp" "$IMG"
fi
DISK=$DIR/disk.img

PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	rm -f "$DISK"
}
trap cleanup EXIT

fresh_disk() { rm -f "$DISK"; truncate -s "$DISK_BYTES" "$DISK"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

now() { date +%s.%N; }
# Writes the image REPS times onto a fresh disk behind PORTAL; prints the median seconds.
measure() {   # PORTAL
	local -a times=()
	local r t0 t1
	for ((r = 0; r < REPS; r++)); do
		sync
		t0=$(now)
		"$KILN" iscsi write-image --portal "$1" --target-iqn "$IQN" --chap-user "$USER_NAME" "$IMG" >/dev/null
		t1=$(now)
		times+=("$(fcalc "$t1" "$t0" 'printf "%.3f", a - b')")
	done
	printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

T0=$(busy_ticks)

# kiln's target.
fresh_disk
"$KILN" agent export --disk "$DISK" --listen 127.0.0.1:0 --target-iqn "$IQN" --chap-user "$USER_NAME" >"$DIR/export.addr" &
PIDS+=($!)
for _ in $(seq 50); do [[ -s $DIR/export.addr ]] && break; sleep 0.1; done
KILN_PORTAL=$(head -1 "$DIR/export.addr")
[[ -n $KILN_PORTAL ]] || die "kiln agent export did not start"
t_kiln=$(measure "$KILN_PORTAL")
qemu-img compare -q -f raw -F raw "$IMG" "$DISK" || die "the disk behind kiln's target differs from the image"
kill -9 "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

# tgtd, same disk file.
fresh_disk
PORT=$(free_port)
CONTROL=$((1000 + PORT % 30000))
tgtd -f --iscsi "portal=127.0.0.1:$PORT" --control-port "$CONTROL" >/dev/null 2>&1 &
PIDS+=($!)
adm() { tgtadm -C "$CONTROL" --lld iscsi "$@"; }
for _ in $(seq 100); do adm --mode target --op show >/dev/null 2>&1 && break; sleep 0.1; done
adm --mode target --op new --tid 1 -T "$IQN"
adm --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$DISK" --bstype rdwr
adm --mode account --op new --user "$USER_NAME" --password "$KILN_CHAP_SECRET"
adm --mode account --op bind --tid 1 --user "$USER_NAME"
adm --mode target --op bind --tid 1 -I ALL
t_tgtd=$(measure "127.0.0.1:$PORT")
qemu-img compare -q -f raw -F raw "$IMG" "$DISK" || die "the disk behind tgtd differs from the image"

T1=$(busy_ticks)
r=$(ratio "$t_tgtd" "$t_kiln")
mbps() { fcalc "$DISK_BYTES" "$1" 'printf "%.0f", a / b / 1048576'; }
result=$(if fge "$r" "$GOAL_KILN_VS_TGTD"; then echo met; else echo "**missed**"; fi)
{
	printf '#### %s, kiln %s (REPS=%s)\n\n' "$(date -u +%F)" "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" "$REPS"
	printf 'Image: 2 GiB raw, 1792 MiB random data, two 128 MiB holes; disk: a sparse file. CPU busy while measuring: %s ticks.\n\n' "$((T1 - T0))"
	printf '| initiator -> target (127.0.0.1) | median s | MiB/s |\n|---|--:|--:|\n'
	printf '| kiln iscsi write-image -> kiln agent export | %s | %s |\n' "$t_kiln" "$(mbps "$t_kiln")"
	printf '| kiln iscsi write-image -> tgtd (bstype rdwr) | %s | %s |\n\n' "$t_tgtd" "$(mbps "$t_tgtd")"
	printf '| goal | measured | result |\n|---|--:|---|\n'
	printf '| kiln target >= %sx the speed of tgtd | %sx | %s |\n' "$GOAL_KILN_VS_TGTD" "$r" "$result"
} | tee "$DIR/results.md"

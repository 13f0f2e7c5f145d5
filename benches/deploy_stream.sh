#!/usr/bin/env bash
# Benchmark: `kiln agent write-image` streaming a 2 GiB zstd qcow2 from a local
# image server to a disk file, against a local `kiln image convert -O raw` of the
# same file.
#
# Run by hand, never in CI (see benches/README.md). Both commands run on the same
# input in the same invocation, so only the ratio is meaningful.
#
#   benches/deploy_stream.sh
#
# Environment:
#   KILN_BENCH_DIR  work dir (/var/tmp/kiln-bench); this script uses its stream/ folder
#                   and reuses convert.sh's data disk (src.raw) when it is there
#   KILN            kiln binary (default: <repo>/target/release/kiln)
#   REPS            repetitions per command (3)
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SCRIPT")")
# shellcheck source=benches/lib/common.sh
. "$REPO/benches/lib/common.sh"

die() { printf 'deploy_stream.sh: error: %s\n' "$*" >&2; exit 1; }

BENCH_DIR=${KILN_BENCH_DIR:-/var/tmp/kiln-bench}
DIR=$BENCH_DIR/stream
KILN=${KILN:-$REPO/target/release/kiln}
REPS=${REPS:-3}
DISK_BYTES=$((2 * 1024 * 1024 * 1024))
GOAL_STREAM_VS_CONVERT=0.9
GOAL_RSS_MIB=256

[[ -x $KILN ]] || die "no kiln binary at $KILN (cargo build --release)"
for tool in qemu-img sha256sum /usr/bin/time python3; do
	command -v "$tool" >/dev/null || die "$tool is needed"
done
mkdir -p "$DIR/images"

# The source disk: convert.sh's ext4 disk of /usr files when present, else our own:
# a 2 GiB sparse disk with 1 GiB of a tar of /usr at 1 MiB, 64 MiB of seeded
# random bytes at 1.5 GiB, zeros elsewhere.
SRC_RAW=$BENCH_DIR/src.raw
if [[ ! -f $SRC_RAW ]]; then
	SRC_RAW=$DIR/src.raw
	if [[ ! -f $SRC_RAW ]]; then
		say "building $SRC_RAW"
		truncate -s "$DISK_BYTES" "$SRC_RAW.tmp"
		# head stops reading after 1 GiB: tar's SIGPIPE is expected, not a failure.
		{ tar -C / -cf - usr/bin usr/lib 2>/dev/null || true; } | head -c $((1024 * 1024 * 1024)) |
			dd of="$SRC_RAW.tmp" bs=1M seek=1 conv=notrunc,sparse status=none
		python3 -c 'import random,sys; sys.stdout.buffer.write(random.Random(6).randbytes(64 << 20))' |
			dd of="$SRC_RAW.tmp" bs=1M seek=1536 conv=notrunc status=none
		mv "$SRC_RAW.tmp" "$SRC_RAW"
	fi
fi
QCOW=$DIR/images/stream-zstd.qcow2
if [[ ! -f $QCOW || $QCOW -ot $SRC_RAW ]]; then
	say "compressing $SRC_RAW into $QCOW (kiln image convert -c --compression zstd)"
	"$KILN" image convert -q -c --compression zstd -O qcow2 "$SRC_RAW" "$QCOW"
fi
SUM=sha256:$(sha256sum "$QCOW" | cut -d' ' -f1)
OUT=$DIR/out.raw

rm -f "$DIR/server.url"
"$KILN" agent serve-images --dir "$DIR/images" --cache-dir "$DIR" >"$DIR/server.url" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; rm -f "$OUT"' EXIT
for _ in $(seq 50); do [[ -s $DIR/server.url ]] && break; sleep 0.1; done
[[ -s $DIR/server.url ]] || die "the image server did not start"
URL=$(cat "$DIR/server.url")stream-zstd.qcow2

now() { date +%s.%N; }
# Runs a command REPS times on a fresh output; prints "median_seconds max_rss_kib".
measure() {
	local -a times=() rss=()
	local r t0 t1
	for ((r = 0; r < REPS; r++)); do
		rm -f "$OUT"
		sync
		t0=$(now)
		/usr/bin/time -f %M -o "$DIR/rss" "$@" >/dev/null
		t1=$(now)
		times+=("$(fcalc "$t1" "$t0" 'printf "%.3f", a - b')")
		rss+=("$(cat "$DIR/rss")")
	done
	printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "%s ", a[int((NR + 1) / 2)] }'
	printf '%s\n' "${rss[@]}" | sort -n | tail -1
}
convert_synced() { "$KILN" image convert -q -O raw "$QCOW" "$OUT" && sync "$OUT"; }

T0=$(busy_ticks)
read -r t_convert rss_convert < <(measure "$KILN" image convert -q -O raw "$QCOW" "$OUT")
read -r t_convert_sync _ < <(measure bash -c "$(declare -f convert_synced); KILN='$KILN' QCOW='$QCOW' OUT='$OUT' convert_synced")
read -r t_stream rss_stream < <(measure "$KILN" agent write-image -q --url "$URL" --checksum "$SUM" "$OUT")
T1=$(busy_ticks)
# The last streamed disk must equal the image.
qemu-img compare -q -f raw -F qcow2 "$OUT" "$QCOW" || die "streamed disk differs from $QCOW"

file_size=$(file_bytes "$QCOW")
ratio_sync=$(ratio "$t_convert_sync" "$t_stream")
ratio_plain=$(ratio "$t_convert" "$t_stream")
mbps=$(fcalc "$DISK_BYTES" "$t_stream" 'printf "%.0f", a / b / 1048576')
rss_mib=$(mib "$rss_stream")
ok() { if fge "$1" "$2"; then echo met; else echo "**missed**"; fi; }
rss_ok=$(fcalc "$rss_mib" "$GOAL_RSS_MIB" 'exit !(a + 0 <= b + 0)' && echo met || echo "**missed**")

{
	printf '#### %s, kiln %s (REPS=%s)\n\n' "$(date -u +%F)" "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" "$REPS"
	printf 'Input: %s, 2 GiB virtual, %s bytes as zstd qcow2 (64 KiB clusters). CPU busy while measuring: %s ticks.\n\n' \
		"$(basename "$SRC_RAW")" "$file_size" "$((T1 - T0))"
	printf '| command | median s | max RSS MiB |\n|---|--:|--:|\n'
	printf '| kiln image convert -O raw (local file) | %s | %s |\n' "$t_convert" "$(mib "$rss_convert")"
	printf '| kiln image convert -O raw, then sync the output | %s | |\n' "$t_convert_sync"
	printf '| kiln agent write-image (HTTP on loopback, sha256 verified, fsync) | %s | %s |\n\n' "$t_stream" "$rss_mib"
	printf '| goal | measured | result |\n|---|--:|---|\n'
	printf '| write-image >= %sx the speed of convert + sync | %sx | %s |\n' "$GOAL_STREAM_VS_CONVERT" "$ratio_sync" "$(ok "$ratio_sync" "$GOAL_STREAM_VS_CONVERT")"
	printf '| write-image vs convert without sync (for information) | %sx | |\n' "$ratio_plain"
	printf '| write-image peak RSS <= %s MiB | %s MiB | %s |\n' "$GOAL_RSS_MIB" "$rss_mib" "$rss_ok"
	printf '\nStreaming rate: %s MiB/s of guest disk.\n' "$mbps"
} | tee "$DIR/results.md"

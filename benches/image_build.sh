#!/usr/bin/env bash
# Benchmark: `kiln image build` wall time for the shipped recipes.
#
# Run by hand, never in CI (see benches/README.md). Cases:
#   busybox   recipes/busybox-vm.yaml (busybox-static + host kernel, GPT, GRUB
#             BIOS + UEFI, qcow2): goal < 10 s on this machine
#   debian    recipes/debian-vm.yaml (mmdebstrap): cold (empty DIB_IMAGE_CACHE)
#             and warm (the cache of the cold run); reported, no goal
#
#   benches/image_build.sh [CASE...]     (default: busybox debian)
#
# Environment: KILN (default <repo>/target/release/kiln), REPS (busybox runs, 5),
# KILN_BENCH_DIR (/var/tmp/kiln-bench; uses $KILN_BENCH_DIR/image-build and
# writes $KILN_BENCH_DIR/image-build-results.md).
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SCRIPT")")
KILN=${KILN:-$REPO/target/release/kiln}
REPS=${REPS:-5}
BENCH_DIR=${KILN_BENCH_DIR:-/var/tmp/kiln-bench}
WORK=$BENCH_DIR/image-build
GOAL_BUSYBOX_SECONDS=10

die() { printf 'image_build.sh: error: %s\n' "$*" >&2; exit 1; }
[[ -x $KILN ]] || die "no kiln binary at $KILN (cargo build --release)"
[[ $(id -u) == 0 ]] || die "kiln image build needs root"
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer"

CASES=("$@")
((${#CASES[@]})) || CASES=(busybox debian)
mkdir -p "$WORK"
RESULTS=()
GOALS=()

# Runs "$@" once; prints "seconds peak-RSS-KiB" of the whole command.
timed() {
	local tf=$WORK/time.txt
	/usr/bin/time -f '%e %M' -o "$tf" "$@" >"$WORK/last.log" 2>&1 || {
		cat "$WORK/last.log" >&2
		die "failed: $*"
	}
	cat "$tf"
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

busybox_case() {
	local out=$WORK/busybox times=() t rss
	for ((i = 1; i <= REPS; i++)); do
		rm -rf "$out"
		read -r t rss < <(timed "$KILN" image build "$REPO/recipes/busybox-vm.yaml" -o "$out")
		times+=("$t")
		printf 'busybox rep %d: %ss (peak RSS %s KiB)\n' "$i" "$t" "$rss" >&2
	done
	local med size
	med=$(printf '%s\n' "${times[@]}" | median)
	size=$(stat -c %s "$out/busybox-vm.qcow2")
	RESULTS+=("| busybox VM (qcow2) | \`kiln image build recipes/busybox-vm.yaml\` | $REPS | $med | $(printf '%s\n' "${times[@]}" | sort -n | head -n1)–$(printf '%s\n' "${times[@]}" | sort -n | tail -n1) | $size |")
	if awk -v m="$med" -v g="$GOAL_BUSYBOX_SECONDS" 'BEGIN { exit !(m < g) }'; then
		GOALS+=("| busybox VM builds in under ${GOAL_BUSYBOX_SECONDS} s | ${med} s | PASS |")
	else
		GOALS+=("| busybox VM builds in under ${GOAL_BUSYBOX_SECONDS} s | ${med} s | FAIL |")
	fi
}

debian_case() {
	local recipe=$REPO/recipes/debian-vm.yaml cache=$WORK/debian-cache out=$WORK/debian t rss
	[[ -f $recipe ]] || die "no $recipe"
	rm -rf "$cache" "$out"
	read -r t rss < <(DIB_IMAGE_CACHE=$cache timed "$KILN" image build "$recipe" -o "$out")
	RESULTS+=("| Debian VM, cold cache | \`DIB_IMAGE_CACHE=empty kiln image build recipes/debian-vm.yaml\` | 1 | $t | | $(stat -c %s "$out"/*.qcow2) |")
	rm -rf "$out"
	read -r t rss < <(DIB_IMAGE_CACHE=$cache timed "$KILN" image build "$recipe" -o "$out")
	RESULTS+=("| Debian VM, warm cache | same, second run | 1 | $t | | $(stat -c %s "$out"/*.qcow2) |")
}

for c in "${CASES[@]}"; do
	case $c in
	busybox) busybox_case ;;
	debian) debian_case ;;
	*) die "unknown case $c (busybox, debian)" ;;
	esac
done

{
	printf '# kiln image build\n\n'
	printf -- '- date: %s; machine: %s CPUs, %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "$(uname -sr)"
	printf -- '- kiln: %s (%s)\n' "$KILN" "$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?')"
	printf -- '- load average before: %s\n\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf '| case | command | runs | median s | min–max s | output bytes |\n|---|---|--:|--:|--:|--:|\n'
	printf '%s\n' "${RESULTS[@]}"
	if ((${#GOALS[@]})); then
		printf '\n| goal | measured | result |\n|---|--:|---|\n'
		printf '%s\n' "${GOALS[@]}"
	fi
} | tee "$BENCH_DIR/image-build-results.md"

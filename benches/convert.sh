#!/usr/bin/env bash
# Benchmark: `kiln image convert` against Debian's `qemu-img convert`.
#
# Run by hand, never in CI (see benches/README.md). Every case runs both tools
# on the same input in the same invocation and reports time ratios, so the
# numbers are comparable only within one run on one machine.
#
#   benches/convert.sh [CASE...]        CASE: zlib zstd zlib-raw zstd-raw qcow2 raw (default: all)
#
# Environment:
#   KILN_BENCH_DIR  work dir for the cached data disk, outputs, logs, results (/var/tmp/kiln-bench)
#   KILN            kiln binary (default: <repo>/target/release/kiln, built with cargo build --release)
#   REPS            repetitions per command (3)
#   QEMU_IMG        qemu-img binary (qemu-img)
#   KEEP_OUTPUTS=1  keep the last output of every command in $KILN_BENCH_DIR/out
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SCRIPT")")
# shellcheck source=benches/lib/common.sh
. "$REPO/benches/lib/common.sh"
ALL_CASES=(zlib zstd zlib-raw zstd-raw qcow2 raw)

# ---------------------------------------------------------------------------
# The data disk recipe. Changing anything here must bump DISK_RECIPE so a cached
# disk built from an older recipe is rebuilt.
DISK_RECIPE=2
DISK_BYTES=$((2 * 1024 * 1024 * 1024))   # 2 GiB virtual size
TREE_BYTES=1288490189                    # 1.2 GiB of files from /usr, as du counts them
# The tree is filled from these roots (relative to /), in this order; inside a
# root, regular files and symlinks are taken in byte-wise (LC_ALL=C) path order
# until TREE_BYTES is reached, each regular file counted as its size rounded up
# to whole 4 KiB blocks (what it takes in the ext4), symlinks and further hard
# links counted as 0. A root nested in an earlier one is skipped while
# walking the outer root. On a Debian 12 machine this is all of usr/bin,
# usr/sbin and usr/share, and usr/lib/x86_64-linux-gnu up to TREE_BYTES:
# a mix of ELF binaries, shared libraries, text, locales and compressed docs.
TREE_ROOTS=(usr/bin usr/sbin usr/share usr/lib/x86_64-linux-gnu usr/lib)
# Fixed identifiers, so that rebuilds of the disk differ only in inode times.
DISK_GUID=6b696c6e-0000-4000-8000-62656e636831
PART_GUID=6b696c6e-0001-4000-8000-62656e636831
FS_UUID=6b696c6e-0002-4000-8000-62656e636831
FS_HASH_SEED=6b696c6e-0003-4000-8000-62656e636831
PART_START_SECTOR=2048                   # 1 MiB
# ---------------------------------------------------------------------------

GOAL_ZLIB_VS_QEMU=3.0
GOAL_ZLIB_VS_QEMU_M16W=1.5
GOAL_ZLIB_SIZE=1.02
GOAL_ZSTD_VS_QEMU=1.5
GOAL_ZLIB_TO_RAW=1.3
GOAL_UNCOMPRESSED=1.0
GOAL_RSS_MIB=256

die() { printf 'convert.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
	cat <<EOF
usage: benches/convert.sh [CASE...]

Cases (default: all, in this order):
  zlib      raw -> qcow2, zlib compression (kiln vs qemu-img, and vs qemu-img -m 16 -W)
  zstd      raw -> qcow2, zstd compression (kiln vs qemu-img, and vs qemu-img -m 16 -W)
  zlib-raw  qcow2 (zlib, made by qemu-img) -> raw
  zstd-raw  qcow2 (zstd, made by qemu-img) -> raw
  qcow2     raw -> qcow2, uncompressed
  raw       qcow2 (uncompressed, made by qemu-img) -> raw

Environment: KILN_BENCH_DIR (default /var/tmp/kiln-bench), KILN (default
<repo>/target/release/kiln, built with cargo build --release), REPS (default 3),
QEMU_IMG (default qemu-img), KEEP_OUTPUTS=1 keeps the last outputs.
Results: a Markdown table on stdout and in \$KILN_BENCH_DIR/results.md.
EOF
}

fle()   { fcalc "$1" "$2" 'exit !(a + 0 <= b + 0)'; }
flt()   { fcalc "$1" "$2" 'exit !(a + 0 < b + 0)'; }
alloc_bytes() { du -B1 -- "$1" | cut -f1; }

# Bytes of guest data a raw or qcow2 image holds, from qemu-img map.
mapped_bytes() {
	"$QEMU_IMG" map --output=json -- "$1" |
		awk '/"data": true/ { if (match($0, /"length": [0-9]+/)) s += substr($0, RSTART + 10, RLENGTH - 10) }
		     END { printf "%.0f\n", s }'
}
# Bytes of guest data stored in compressed clusters (qcow2).
compressed_bytes() {
	"$QEMU_IMG" map --output=json -- "$1" |
		awk '/"compressed": true/ { if (match($0, /"length": [0-9]+/)) s += substr($0, RSTART + 10, RLENGTH - 10) }
		     END { printf "%.0f\n", s }'
}
image_info() {   # FILE KEY -> value of "KEY: value" in qemu-img info's text output
	"$QEMU_IMG" info -- "$1" | awk -v k="$2" 'index($0, k ": ") == 1 { print substr($0, length(k) + 3); exit }'
}
virtual_size() { image_info "$1" "virtual size" | sed -n 's/.*(\([0-9]*\) bytes).*/\1/p'; }

# ---------------------------------------------------------------------------
# Per-case definitions

case_src() {
	case $1 in
	zlib | zstd | qcow2) echo "$BENCH_DIR/src.raw" ;;
	zlib-raw) echo "$BENCH_DIR/src-zlib.qcow2" ;;
	zstd-raw) echo "$BENCH_DIR/src-zstd.qcow2" ;;
	raw) echo "$BENCH_DIR/src.qcow2" ;;
	esac
}
case_out_fmt() { case $1 in zlib | zstd | qcow2) echo qcow2 ;; *) echo raw ;; esac; }
case_compression() { case $1 in zlib | zstd) echo "$1" ;; *) echo none ;; esac; }
case_variants() { case $1 in zlib | zstd) echo "qemu qemu-m16W kiln" ;; *) echo "qemu kiln" ;; esac; }
case_title() {
	case $1 in
	zlib) echo "raw -> qcow2 (zlib)" ;;
	zstd) echo "raw -> qcow2 (zstd)" ;;
	zlib-raw) echo "qcow2 (zlib) -> raw" ;;
	zstd-raw) echo "qcow2 (zstd) -> raw" ;;
	qcow2) echo "raw -> qcow2 (uncompressed)" ;;
	raw) echo "qcow2 (uncompressed) -> raw" ;;
	esac
}

# Sets CMD to the argv of VARIANT in CASE, without SRC and DST.
set_cmd() {
	local q=$QEMU_IMG k=$KILN
	if [[ ${DISPLAY_NAMES:-0} == 1 ]]; then q=qemu-img k=kiln; fi
	case "$1:$2" in
	zlib:qemu) CMD=("$q" convert -c -O qcow2) ;;
	zlib:qemu-m16W) CMD=("$q" convert -m 16 -W -c -O qcow2) ;;
	zlib:kiln) CMD=("$k" image convert -c -O qcow2) ;;
	zstd:qemu) CMD=("$q" convert -c -O qcow2 -o compression_type=zstd) ;;
	zstd:qemu-m16W) CMD=("$q" convert -m 16 -W -c -O qcow2 -o compression_type=zstd) ;;
	zstd:kiln) CMD=("$k" image convert -c --compression zstd -O qcow2) ;;
	zlib-raw:qemu | zstd-raw:qemu | raw:qemu) CMD=("$q" convert -O raw) ;;
	zlib-raw:kiln | zstd-raw:kiln | raw:kiln) CMD=("$k" image convert -O raw) ;;
	qcow2:qemu) CMD=("$q" convert -O qcow2) ;;
	qcow2:kiln) CMD=("$k" image convert -O qcow2) ;;
	*) die "no command for $1:$2" ;;
	esac
}
display_cmd() {   # CASE VARIANT -> the command line as shown in the table
	local -a CMD
	DISPLAY_NAMES=1 set_cmd "$1" "$2"
	printf '%s ' "${CMD[@]}"
	printf '%s out.%s' "$(basename "$(case_src "$1")")" "$(case_out_fmt "$1")"
}
variant_label() {
	case $1 in qemu) echo qemu-img ;; qemu-m16W) echo "qemu-img -m 16 -W" ;; kiln) echo kiln ;; esac
}

# ---------------------------------------------------------------------------
# Inputs

disk_stamp() {
	printf 'recipe=%s disk=%s tree=%s roots=%s start=%s\n' \
		"$DISK_RECIPE" "$DISK_BYTES" "$TREE_BYTES" "${TREE_ROOTS[*]}" "$PART_START_SECTOR"
}

# Writes the NUL-separated list of tree paths (relative to /) to $1 and prints
# "BLOCK_BYTES DATA_BYTES FILES" of what was selected.
select_tree() {
	local list=$1 root other
	local -a prune
	{
		for root in "${TREE_ROOTS[@]}"; do
			[[ -d /$root ]] || continue
			prune=()
			for other in "${TREE_ROOTS[@]}"; do
				[[ $other == "$root"/* ]] && prune+=(-path "$other" -prune -o)
			done
			(cd / && find "$root" "${prune[@]}" \( -type f -o -type l \) -printf '%y%s\t%D:%i\t%p\0') |
				LC_ALL=C sort -z -t "$(printf '\t')" -k3
		done
	} | LC_ALL=C awk -v RS='\0' -v ORS='\0' -v target="$TREE_BYTES" -v summary="$list.summary" '
		{
			i = index($0, "\t"); type = substr($0, 1, 1); size = substr($0, 2, i - 2); rest = substr($0, i + 1)
			j = index(rest, "\t"); ino = substr(rest, 1, j - 1); path = substr(rest, j + 1)
			if (path in seen || total >= target) next
			seen[path] = 1
			if (type == "f" && !(ino in inodes)) {
				inodes[ino] = 1; data += size; total += int((size + 4095) / 4096) * 4096
			}
			files++
			print path
		}
		END { printf "%.0f %.0f %d\n", total, data, files > summary }' >"$list"
	cat "$list.summary"
}

build_disk() {
	local tmp=$BENCH_DIR/build.tmp
	rm -rf "$tmp"
	mkdir -p "$tmp/tree"
	trap 'rm -rf "$tmp"' EXIT
	say "building the data disk in $BENCH_DIR (takes a few minutes, cached afterwards)"

	local summary tree_bytes tree_data tree_files
	summary=$(select_tree "$tmp/tree.list")
	read -r tree_bytes tree_data tree_files <<<"$summary"
	say "  tree: $tree_files files from ${TREE_ROOTS[*]}: $tree_data bytes of data, $tree_bytes in 4 KiB blocks"
	tar -C / --null --no-unquote --verbatim-files-from --no-recursion -T "$tmp/tree.list" -cf - |
		tar -C "$tmp/tree" --same-owner -xpf -

	truncate -s "$DISK_BYTES" "$tmp/disk.raw"
	sgdisk -o -U "$DISK_GUID" \
		-n "1:$PART_START_SECTOR:0" -t 1:8300 -u "1:$PART_GUID" -c 1:kiln-bench-root \
		"$tmp/disk.raw" >/dev/null
	local first last
	first=$(sgdisk -i 1 "$tmp/disk.raw" | awk '/^First sector:/ { print $3 }')
	last=$(sgdisk -i 1 "$tmp/disk.raw" | awk '/^Last sector:/ { print $3 }')
	[[ $first == "$PART_START_SECTOR" && -n $last ]] || die "unexpected partition layout: $first..$last"
	local fs_blocks=$(((last - first + 1) * 512 / 4096))

	truncate -s $((fs_blocks * 4096)) "$tmp/fs.img"
	E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -F -t ext4 -b 4096 -L kiln-bench -U "$FS_UUID" \
		-E "hash_seed=$FS_HASH_SEED,root_owner=0:0" -d "$tmp/tree" "$tmp/fs.img" "$fs_blocks"
	rm -rf "$tmp/tree"
	e2fsck -fn "$tmp/fs.img" >"$tmp/e2fsck.log" 2>&1 || { cat "$tmp/e2fsck.log" >&2; die "e2fsck failed on the new file system"; }
	dd if="$tmp/fs.img" of="$tmp/disk.raw" bs=1M seek=$((first * 512 / 1048576)) conv=notrunc,sparse status=none
	rm -f "$tmp/fs.img"
	sgdisk -v "$tmp/disk.raw" >"$tmp/sgdisk.log" 2>&1 || { cat "$tmp/sgdisk.log" >&2; die "sgdisk -v failed"; }

	tr '\0' '\n' <"$tmp/tree.list" >"$BENCH_DIR/tree.manifest"
	printf '%s %s %s\n' "$tree_bytes" "$tree_data" "$tree_files" >"$BENCH_DIR/tree.summary"
	rm -f "$BENCH_DIR"/src*.qcow2
	mv "$tmp/disk.raw" "$BENCH_DIR/src.raw"
	disk_stamp >"$BENCH_DIR/src.raw.stamp"
	rm -rf "$tmp"
	trap - EXIT
}

check_disk() {
	local src=$BENCH_DIR/src.raw mapped du lo hi
	mapped=$(mapped_bytes "$src")
	du=$(alloc_bytes "$src")
	lo=$((TREE_BYTES * 90 / 100)) hi=$((TREE_BYTES * 125 / 100))
	say "  src.raw: virtual $(file_bytes "$src") bytes, qemu-img map data $mapped bytes, du $du bytes"
	((mapped >= lo && mapped <= hi && du >= lo && du <= hi)) ||
		die "src.raw has $mapped mapped / $du allocated bytes, expected about $TREE_BYTES; delete $BENCH_DIR/src.raw* to rebuild"
}

# Derived qcow2 inputs, made by qemu-img from src.raw and checked against it.
make_input() {   # NAME (src-zlib.qcow2 | src-zstd.qcow2 | src.qcow2)
	local out=$BENCH_DIR/$1 src=$BENCH_DIR/src.raw
	[[ -f $out && $out -nt $src ]] && return 0
	local -a opts
	case $1 in
	src-zlib.qcow2) opts=(-c -O qcow2) ;;
	src-zstd.qcow2) opts=(-c -O qcow2 -o compression_type=zstd) ;;
	src.qcow2) opts=(-O qcow2) ;;
	esac
	say "making input $1: qemu-img convert ${opts[*]}"
	rm -f "$out.tmp"
	"$QEMU_IMG" convert "${opts[@]}" "$src" "$out.tmp"
	"$QEMU_IMG" check -q "$out.tmp"
	"$QEMU_IMG" compare -q -f raw -F qcow2 "$src" "$out.tmp" || die "$1 differs from src.raw"
	mv "$out.tmp" "$out"
}

prepare_inputs() {
	mkdir -p "$BENCH_DIR"
	if [[ ! -f $BENCH_DIR/src.raw || "$(cat "$BENCH_DIR/src.raw.stamp" 2>/dev/null)" != "$(disk_stamp)" ]]; then
		build_disk
	else
		say "using cached data disk $BENCH_DIR/src.raw"
	fi
	check_disk
	local c
	for c in "$@"; do
		case $c in
		zlib-raw) make_input src-zlib.qcow2 ;;
		zstd-raw) make_input src-zstd.qcow2 ;;
		raw) make_input src.qcow2 ;;
		esac
	done
}

# ---------------------------------------------------------------------------
# Running one case (in its own bash process, so errexit holds everywhere and a
# failed case does not stop the others).

verify_output() {   # CASE FILE -> exit status; says why on failure
	local c=$1 out=$2 fmt comp got vs_src vs_out cbytes
	fmt=$(case_out_fmt "$c") comp=$(case_compression "$c")
	[[ -s $out ]] || { say "verify: $out is missing or empty"; return 1; }
	got=$(image_info "$out" "file format")
	[[ $got == "$fmt" ]] || { say "verify: $out is '$got', expected $fmt"; return 1; }
	vs_src=$(virtual_size "$BENCH_DIR/src.raw") vs_out=$(virtual_size "$out")
	[[ $vs_out == "$vs_src" ]] || { say "verify: virtual size $vs_out, expected $vs_src"; return 1; }
	if [[ $fmt == qcow2 ]]; then
		"$QEMU_IMG" check -q "$out" >&2 || { say "verify: qemu-img check failed on $out"; return 1; }
		cbytes=$(compressed_bytes "$out")
		if [[ $comp == none ]]; then
			[[ $cbytes == 0 ]] || { say "verify: $cbytes bytes in compressed clusters, none expected"; return 1; }
		else
			got=$(image_info "$out" "    compression type")
			[[ $got == "$comp" ]] || { say "verify: compression type '$got', expected $comp"; return 1; }
			[[ $cbytes -gt 0 ]] || { say "verify: no compressed clusters in $out"; return 1; }
		fi
	fi
	# The derived qcow2 inputs were compared with src.raw when they were made,
	# so src.raw stands for the source of every case.
	"$QEMU_IMG" compare -f raw -F "$fmt" "$BENCH_DIR/src.raw" "$out" >&2 ||
		{ say "verify: qemu-img compare: $out differs from the source"; return 1; }
}

run_case() {
	local c=$1 src fmt rep v out log tf rc secs rss usr sys cpu other b0 b1 line
	local -a CMD variants
	src=$(case_src "$c") fmt=$(case_out_fmt "$c")
	read -r -a variants <<<"$(case_variants "$c")"
	local runs=$RUN_DIR/$c.runs status=$RUN_DIR/$c.status
	: >"$runs"
	echo running >"$status"
	mkdir -p "$BENCH_DIR/out" "$BENCH_DIR/logs"

	say "[$c] $(case_title "$c"): warm-up read of the inputs"
	cat "$src" "$BENCH_DIR/src.raw" >/dev/null
	for ((rep = 1; rep <= REPS; rep++)); do
		for v in "${variants[@]}"; do
			out=$BENCH_DIR/out/$c-$v.$fmt log=$BENCH_DIR/logs/$c-$v-$rep.log tf=$BENCH_DIR/logs/$c-$v-$rep.time
			set_cmd "$c" "$v"
			rm -f "$out"
			sync
			rc=0 b0=$(busy_ticks)
			/usr/bin/time -f '%e %M %U %S' -o "$tf" -- "${CMD[@]}" "$src" "$out" >"$log" 2>&1 || rc=$?
			if ((rc != 0)); then
				tail -n 20 "$log" >&2
				echo "error: $(variant_label "$v") exited with status $rc (log: $log)" >"$status"
				say "[$c] $(cat "$status")"
				exit 1
			fi
			b1=$(busy_ticks)
			read -r secs rss usr sys <<<"$(tail -n 1 "$tf")"
			if [[ $v == kiln ]] && ! verify_output "$c" "$out"; then
				echo "error: verification of kiln's output failed (rep $rep, output: $out)" >"$status"
				say "[$c] $(cat "$status")"
				exit 1
			fi
			cpu=$(fcalc "$usr" "$sys" 'printf "%.2f", a + b')
			# Share of the machine's CPU time used by anything but the command.
			other=$(awk -v busy=$((b1 - b0)) -v hz="$CLK_TCK" -v n="$NCPU" -v cpu="$cpu" -v t="$secs" \
				'BEGIN { x = t > 0 ? (busy / hz - cpu) / (t * n) : 0; printf "%.0f", (x < 0 ? 0 : x) * 100 }')
			line=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$v" "$rep" "$secs" "$rss" "$(file_bytes "$out")" "$(alloc_bytes "$out")" "$cpu" "$other")
			printf '%s\n' "$line" >>"$runs"
			say "[$c] rep $rep/$REPS $(variant_label "$v"): ${secs}s (CPU ${cpu}s, others ${other}%), peak RSS $(mib "$rss") MiB, $(file_bytes "$out") bytes"
			if [[ ${KEEP_OUTPUTS:-0} != 1 || $rep != "$REPS" ]]; then rm -f "$out"; fi
		done
	done
	echo ok >"$status"
}

# ---------------------------------------------------------------------------
# Report

# Summary of one variant of a case: median seconds, max RSS KiB, last output
# bytes, last allocated bytes, fastest and slowest seconds, median CPU seconds,
# largest share (%) of CPU time used by other processes.
summary() {   # CASE VARIANT -> "secs rss bytes alloc min max cpu other"
	awk -F '\t' -v v="$2" '
		$1 == v { n++; t[n] = $3 + 0; u[n] = $7 + 0; if ($8 + 0 > other) other = $8 + 0; if ($4 + 0 > rss) rss = $4 + 0; size = $5; alloc = $6 }
		END {
			if (n == 0) exit 1
			for (i = 2; i <= n; i++) { x = t[i]; for (j = i - 1; j >= 1 && t[j] > x; j--) t[j + 1] = t[j]; t[j + 1] = x }
			for (i = 2; i <= n; i++) { x = u[i]; for (j = i - 1; j >= 1 && u[j] > x; j--) u[j + 1] = u[j]; u[j + 1] = x }
			med = (n % 2) ? t[(n + 1) / 2] : (t[n / 2] + t[n / 2 + 1]) / 2
			cpu = (n % 2) ? u[(n + 1) / 2] : (u[n / 2] + u[n / 2 + 1]) / 2
			printf "%.2f %d %s %s %.2f %.2f %.2f %d\n", med, rss, size, alloc, t[1], t[n], cpu, other
		}' "$RUN_DIR/$1.runs"
}

GOALS=()
GOAL_FAILS=0
goal() {   # TEXT MEASURED PASS(0|1|-)
	local verdict
	case $3 in 0) verdict=PASS ;; 1) verdict=FAIL GOAL_FAILS=$((GOAL_FAILS + 1)) ;; *) verdict="not measured" ;; esac
	GOALS+=("| $1 | $2 | $verdict |")
}
goal_speed() {   # CASE VARIANT MIN TEXT
	local c=$1 v=$2 min=$3 text=$4 q k r
	if [[ "$(cat "$RUN_DIR/$c.status" 2>/dev/null)" != ok ]]; then goal "$text" "case failed" 1; return; fi
	read -r q _ <<<"$(summary "$c" "$v")"
	read -r k _ <<<"$(summary "$c" kiln)"
	r=$(ratio "$q" "$k")
	if fge "$r" "$min"; then goal "$text" "${r}x" 0; else goal "$text" "${r}x" 1; fi
}

# shellcheck disable=SC2016 # backquotes in single quotes are Markdown here
report() {
	local c v s q k label rss qs ks alloc tmin tmax cpu other cells status any_error=0 busy=0
	local -a variants
	printf '# kiln image convert vs qemu-img convert\n\n'
	printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf -- '- machine: %s CPUs (%s), %s, %s\n' "$(nproc)" \
		"$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
		"$(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)" "$(uname -sr)"
	printf -- '- qemu-img: %s\n' "$("$QEMU_IMG" --version | head -n 1)"
	printf -- '- kiln: %s%s\n' "$KILN" "${KILN_REV:+ ($KILN_REV)}"
	local tree_bytes tree_data tree_files
	read -r tree_bytes tree_data tree_files <"$BENCH_DIR/tree.summary"
	printf -- '- input: %s, 2 GiB raw, GPT + ext4 holding %s files from /usr (%s bytes of data, %s in 4 KiB blocks);\n' \
		"$BENCH_DIR/src.raw" "$tree_files" "$tree_data" "$tree_bytes"
	printf '  %s bytes allocated. Derived inputs made by `qemu-img convert [-c] [-o compression_type=zstd] -O qcow2`.\n' \
		"$(alloc_bytes "$BENCH_DIR/src.raw")"
	printf -- '- %s repetitions per command; median wall time, maximum peak RSS.\n' "$REPS"
	printf '  Warm cache: every input was read once before its case and the page cache was never dropped; `sync` (untimed) before each run.\n'
	printf -- '- load average (1 min) before the first case: %s. "other load %%" is the largest share of the\n' "$LOAD_START"
	printf '  time of all CPUs that other processes (and steal) took during one run of the command; above %s%%\n' "$OTHER_MAX"
	printf '  the timing is disturbed. "CPU s" is the median user + system time of the command.\n\n'

	printf '| case | tool | command | median s | min–max s | CPU s | other load %% | peak RSS MiB | output bytes | allocated bytes | qemu time / kiln time | kiln size / qemu size |\n'
	printf '|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n'
	for c in "${CASES[@]}"; do
		status=$(cat "$RUN_DIR/$c.status" 2>/dev/null || echo "error: not run")
		[[ $status == ok ]] || any_error=1
		read -r -a variants <<<"$(case_variants "$c")"
		read -r k _ ks _ <<<"$(summary "$c" kiln 2>/dev/null || echo - - - -)"
		for v in "${variants[@]}"; do
			label=$(variant_label "$v")
			if [[ $v == kiln && $status != ok ]]; then
				cells="| **${status}** | | | | | | | | |"
			elif ! s=$(summary "$c" "$v" 2>/dev/null); then
				cells="| — | — | — | — | — | — | — | — | — |"
			else
				read -r q rss qs alloc tmin tmax cpu other <<<"$s"
				((other <= OTHER_MAX)) || busy=1
				cells="| $q | $tmin–$tmax | $cpu | $other | $(mib "$rss") | $qs | $alloc"
				if [[ $v == kiln ]]; then
					cells+=" | | |"
				elif [[ $status == ok ]]; then
					cells+=" | $(ratio "$q" "$k")x | $(size_ratio "$ks" "$qs") |"
				else
					cells+=" | — | — |"
				fi
			fi
			printf '| %s | %s | `%s` %s\n' "$(case_title "$c")" "$label" "$(display_cmd "$c" "$v")" "$cells"
		done
	done

	in_run() { [[ " ${CASES[*]} " == *" $1 "* ]]; }
	if in_run zlib; then
		goal_speed zlib qemu "$GOAL_ZLIB_VS_QEMU" "raw -> qcow2 zlib: kiln >= ${GOAL_ZLIB_VS_QEMU}x faster than \`qemu-img convert -c\`"
		goal_speed zlib qemu-m16W "$GOAL_ZLIB_VS_QEMU_M16W" "raw -> qcow2 zlib: kiln >= ${GOAL_ZLIB_VS_QEMU_M16W}x faster than \`qemu-img convert -m 16 -W -c\`"
		local text="raw -> qcow2 zlib: kiln output <= ${GOAL_ZLIB_SIZE}x the size of qemu-img's"
		if [[ "$(cat "$RUN_DIR/zlib.status")" == ok ]]; then
			read -r _ _ qs _ <<<"$(summary zlib qemu)"
			read -r _ _ ks _ <<<"$(summary zlib kiln)"
			s=$(size_ratio "$ks" "$qs")
			if fle "$s" "$GOAL_ZLIB_SIZE"; then goal "$text" "${s}x" 0; else goal "$text" "${s}x" 1; fi
		else goal "$text" "case failed" 1; fi
	fi
	in_run zstd && goal_speed zstd qemu "$GOAL_ZSTD_VS_QEMU" "raw -> qcow2 zstd: kiln >= ${GOAL_ZSTD_VS_QEMU}x faster than \`qemu-img convert -c -o compression_type=zstd\`"
	in_run zlib-raw && goal_speed zlib-raw qemu "$GOAL_ZLIB_TO_RAW" "qcow2 zlib -> raw: kiln >= ${GOAL_ZLIB_TO_RAW}x faster than qemu-img"
	in_run qcow2 && goal_speed qcow2 qemu "$GOAL_UNCOMPRESSED" "raw -> qcow2 uncompressed: kiln >= ${GOAL_UNCOMPRESSED}x faster than qemu-img"
	in_run raw && goal_speed raw qemu "$GOAL_UNCOMPRESSED" "qcow2 -> raw uncompressed: kiln >= ${GOAL_UNCOMPRESSED}x faster than qemu-img"
	for c in "${CASES[@]}"; do
		local text
		text="$(case_title "$c"): kiln peak RSS < ${GOAL_RSS_MIB} MiB"
		if [[ "$(cat "$RUN_DIR/$c.status" 2>/dev/null)" == ok ]]; then
			read -r _ rss _ <<<"$(summary "$c" kiln)"
			if flt "$(mib "$rss")" "$GOAL_RSS_MIB"; then goal "$text" "$(mib "$rss") MiB" 0; else goal "$text" "$(mib "$rss") MiB" 1; fi
		else goal "$text" "case failed" 1; fi
	done
	report_goals "$busy" "$any_error"
}

# ---------------------------------------------------------------------------
# Main

BENCH_DIR=${KILN_BENCH_DIR:-/var/tmp/kiln-bench}
REPS=${REPS:-3}
QEMU_IMG=${QEMU_IMG:-qemu-img}
RUN_DIR=$BENCH_DIR/runs
NCPU=$(nproc)
CLK_TCK=$(getconf CLK_TCK)
OTHER_MAX=5
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer, not '$REPS'"

if [[ ${1:-} == --run-case ]]; then   # internal: one case, in its own process
	run_case "$2"
	exit 0
fi

CASES=()
for arg in "$@"; do
	case $arg in
	-h | --help) usage; exit 0 ;;
	all) CASES+=("${ALL_CASES[@]}") ;;
	zlib | zstd | zlib-raw | zstd-raw | qcow2 | raw) CASES+=("$arg") ;;
	*) usage >&2; die "unknown case '$arg'" ;;
	esac
done
((${#CASES[@]})) || CASES=("${ALL_CASES[@]}")

missing=()
for tool in "$QEMU_IMG" sgdisk mke2fs e2fsck tar dd awk sed du stat truncate; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -x /usr/bin/time ]] || missing+=("/usr/bin/time (apt-get install time)")
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (Debian: apt-get install qemu-utils gdisk e2fsprogs time)"

KILN_REV=
if [[ -z ${KILN:-} ]]; then
	KILN=$REPO/target/release/kiln
	say "building kiln: cargo build --release"
	(cd "$REPO" && cargo build --release --quiet --bin kiln) || die "cargo build --release failed"
	KILN_REV=$(git -C "$REPO" describe --always --dirty 2>/dev/null || true)
else
	KILN=$(readlink -f -- "$KILN" || true)
	[[ -n $KILN && -x $KILN ]] || die "KILN=${KILN:-?} is not an executable file"
fi
QEMU_IMG=$(command -v "$QEMU_IMG")
export BENCH_DIR REPS QEMU_IMG KILN RUN_DIR KEEP_OUTPUTS

prepare_inputs "${CASES[@]}"
mkdir -p "$RUN_DIR"
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
for c in "${CASES[@]}"; do
	rm -f "$RUN_DIR/$c.runs" "$RUN_DIR/$c.status"
	bash "$SCRIPT" --run-case "$c" || true   # the status file says what happened
done

rc=0
report >"$RUN_DIR/results.md.tmp" || rc=1
mv "$RUN_DIR/results.md.tmp" "$BENCH_DIR/results.md"
say ""
cat "$BENCH_DIR/results.md"
say ""
say "results written to $BENCH_DIR/results.md"
exit "$rc"

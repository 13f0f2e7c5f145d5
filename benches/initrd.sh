#!/usr/bin/env bash
# Benchmark: `kiln initrd add` / `kiln initrd pack` against the shell pipeline
# a partner runs today to put one kernel module into Debian's initramfs
# (unmkinitramfs, cp, depmod, find | sort | cpio | gzip) and against `zstd -T0`.
#
# Run by hand, never in CI (see benches/README.md). Every case runs both tools
# on the same input in the same invocation and reports time ratios, so the
# numbers are comparable only within one run on one machine.
#
#   benches/initrd.sh [CASE...]        CASE: gzip zstd (default: all)
#
# Environment:
#   KILN_BENCH_DIR  work dir; this script uses $KILN_BENCH_DIR/initrd and writes
#                   $KILN_BENCH_DIR/initrd-results.md (/var/tmp/kiln-bench)
#   KILN            kiln binary (default: <repo>/target/release/kiln, built with cargo build --release)
#   REPS            repetitions per command (3)
#   INITRD          input initramfs (default: the newest /boot/initrd.img-*)
#   KVER            its kernel version (default: from the file name, initrd.img-KVER)
#   MODULE          module to add, not yet in INITRD and without dependencies (dummy)
#   KEEP_OUTPUTS=1  keep the last output of every command in $KILN_BENCH_DIR/initrd/out
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SCRIPT")")
# shellcheck source=benches/lib/common.sh
. "$REPO/benches/lib/common.sh"
ALL_CASES=(gzip zstd)

GOAL_GZIP_VS_SHELL=3.0
GOAL_ZSTD_VS_ZSTD=1.0

die() { printf 'initrd.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
	cat <<EOF
usage: benches/initrd.sh [CASE...]

Cases (default: all, in this order):
  gzip  add one module to INITRD and write a gzip initramfs:
        unmkinitramfs + cp + depmod + find | sort | cpio | gzip (one bash -c)
        vs kiln initrd add --module --compression gzip
  zstd  zstd initramfs of the same content: zstd -T0 (level 3) on the
        prepared uncompressed cpio vs kiln repacking that same cpio
        (kiln initrd add main.cpio --compression zstd) and kiln initrd pack
        --compression zstd of the prepared tree (goals: at least as fast);
        shown without a goal: the whole kiln initrd add --module with zstd
        (it also decompresses the input and runs depmod) and zstd -T0 -9
        (mkinitramfs' level, for size)

Environment: KILN_BENCH_DIR (default /var/tmp/kiln-bench), KILN (default
<repo>/target/release/kiln, built with cargo build --release), REPS (default 3),
INITRD (default: newest /boot/initrd.img-*), KVER (default: from INITRD's name),
MODULE (default dummy), KEEP_OUTPUTS=1 keeps the last outputs.
Results: a Markdown table on stdout and in \$KILN_BENCH_DIR/initrd-results.md.
EOF
}


# ---------------------------------------------------------------------------
# A newc cpio walker independent of kiln and of GNU cpio (which stops at the
# first TRAILER!!!). Reads a byte stream on stdin.
#   cpio_walk early        prints the length of the uncompressed cpio archives at
#                          the start of the stream (0 if there are none)
#   cpio_walk main LIST [NAME DUMP]
#                          the stream must be nothing but newc archives, each
#                          ending in TRAILER!!!, separated by zero padding and
#                          starting on a 4-byte boundary (as the kernel wants);
#                          writes every entry name to LIST, the data of entry
#                          NAME to DUMP, and prints "ARCHIVES ENTRIES"
cpio_walk() {
	perl -e '
		use strict; use warnings;
		my ($mode, $list, $want, $dump) = @ARGV;
		binmode STDIN;
		my $pos = 0;
		my $pending = "";
		sub rd {   # exactly n bytes, or fewer only at EOF
			my ($n) = @_;
			my $buf = substr($pending, 0, $n, "");
			while (length($buf) < $n) {
				my $got = read(STDIN, my $chunk, $n - length($buf));
				die "read error: $!\n" unless defined $got;
				last if $got == 0;
				$buf .= $chunk;
			}
			$pos += length($buf);
			return $buf;
		}
		sub unread { my ($b) = @_; $pending = $b . $pending; $pos -= length($b); }
		sub skip {
			my ($n) = @_;
			while ($n > 0) { my $k = $n > 1048576 ? 1048576 : $n; my $b = rd($k); die "truncated data at byte $pos\n" if length($b) < $k; $n -= $k; }
		}
		my ($LIST, $DUMP);
		if ($mode eq "main") { open($LIST, ">", $list) or die "$list: $!\n"; }
		my ($archives, $entries, $in_archive) = (0, 0, 0);
		while (1) {
			if (!$in_archive) {   # between archives: zero padding, then a header or EOF
				my $b;
				while (1) { $b = rd(1); last if $b eq "" || $b ne "\0"; }
				last if $b eq "";
				unread($b);
				my $magic = rd(6); unread($magic);
				if ($magic ne "070701" && $magic ne "070702") {
					last if $mode eq "early";
					die "no cpio header at byte $pos\n";
				}
				die "archive at byte $pos does not start on a 4-byte boundary\n" if $pos % 4;
				$in_archive = 1; $archives++;
			}
			my $hdr = rd(110);
			die "truncated header at byte $pos\n" if length($hdr) < 110;
			my $magic = substr($hdr, 0, 6);
			die sprintf("bad cpio magic at byte %d\n", $pos - 110) if $magic ne "070701" && $magic ne "070702";
			my @f = map { hex(substr($hdr, 6 + 8 * $_, 8)) } 0 .. 12;
			my ($filesize, $namesize) = ($f[6], $f[11]);
			my $name = rd($namesize);
			die "truncated name at byte $pos\n" if length($name) < $namesize;
			$name =~ s/\0.*//s;
			skip((4 - (110 + $namesize) % 4) % 4);
			if ($name eq "TRAILER!!!") { $in_archive = 0; skip($filesize); next; }
			$entries++;
			$name =~ s{^(\./+|/+)}{};   # find . | cpio writes ./usr/...
			if ($mode eq "main") {
				print $LIST "$name\n";
				if (defined $want && $name eq $want) {
					my $data = rd($filesize);
					die "truncated data at byte $pos\n" if length($data) < $filesize;
					open($DUMP, ">", $dump) or die "$dump: $!\n"; print $DUMP $data; close($DUMP);
				} else { skip($filesize); }
			} else { skip($filesize); }
			skip((4 - $filesize % 4) % 4);
		}
		die "stream ends inside an archive (no TRAILER!!!) at byte $pos\n" if $in_archive;
		if ($mode eq "early") {
			# the padding after the last early archive was consumed: back up to
			# the first byte that is not a zero
			print $pos, "\n";
		} else {
			close($LIST);
			print "$archives $entries\n";
		}
	' "$@"
}

# ---------------------------------------------------------------------------
# Per-case definitions

case_variants() { case $1 in gzip) echo "shell kiln" ;; zstd) echo "zstd zstd9 kiln-pack kiln-repack kiln-add" ;; esac; }
case_title() { case $1 in gzip) echo "add module, gzip" ;; zstd) echo "same content, zstd" ;; esac; }
case_comp() { echo "$1"; }
variant_label() {
	case $1 in
	shell) echo "shell pipeline" ;; zstd) echo "zstd -T0" ;; zstd9) echo "zstd -T0 -9 (no goal)" ;;
	kiln) echo "kiln initrd add" ;;
	kiln-add) echo "kiln initrd add (also decompresses the input and runs depmod; no goal)" ;;
	kiln-pack) echo "kiln initrd pack" ;; kiln-repack) echo "kiln repack of main.cpio" ;;
	esac
}

# The timed shell pipeline of the gzip case, as one script for bash -c. With
# DISPLAY_NAMES=1 the paths are the short names used in the table.
shell_script() {
	local i=$INITRD w=$WORK/x o=$1 m=$MOD_FILE
	if [[ ${DISPLAY_NAMES:-0} == 1 ]]; then i=initrd.img w=x o=out.img m=/lib/modules/V/$MOD_REL; fi
	local v=$KVER
	[[ ${DISPLAY_NAMES:-0} == 1 ]] && v=V
	# unmkinitramfs extracts into DIR/early, DIR/early2, ... and DIR/main when
	# the initrd starts with uncompressed archives, else straight into DIR.
	cat <<EOF
set -e
unmkinitramfs $i $w
r=$w; [ -d $w/main ] && r=$w/main
cp $m \$r/$MOD_PREFIX/modules/$v/$(dirname "$MOD_REL")/
depmod -b \$r $v
{ n=1; e=$w/early; while [ -d \$e ]; do (cd \$e && find . | LC_ALL=C sort | cpio -o -H newc); n=\$((n + 1)); e=$w/early\$n; done
  cd \$r && find . | LC_ALL=C sort | cpio -o -H newc | gzip; } > $o
EOF
}

# Sets CMD to the argv of VARIANT in CASE writing OUT.
set_cmd() {
	local c=$1 v=$2 out=$3 k=$KILN i=$INITRD t=$WORK/tree mc=$WORK/main.cpio ec=$WORK/early.cpio v_=$KVER
	if [[ ${DISPLAY_NAMES:-0} == 1 ]]; then
		k=kiln i=initrd.img t=tree mc=main.cpio ec=early.cpio v_=V out=out.img
	fi
	local early=()
	[[ -d $WORK/tree/early ]] && early=(--early "$t/early")
	case "$c:$v" in
	gzip:shell) CMD=(bash -c "$(shell_script "$out")") ;;
	gzip:kiln) CMD=("$k" initrd add "$i" -o "$out" --module "$MODULE" --kernel-version "$v_" --compression gzip) ;;
	zstd:zstd | zstd:zstd9)
		local lvl=()
		[[ $v == zstd9 ]] && lvl=(-9)
		if [[ -s $WORK/early.cpio ]]; then
			CMD=(bash -c "cat $ec > $out && zstd -T0 ${lvl[*]} -q -c $mc >> $out")
		else
			CMD=(zstd -T0 "${lvl[@]}" -q "$mc" -o "$out")
		fi
		;;
	zstd:kiln-add) CMD=("$k" initrd add "$i" -o "$out" --module "$MODULE" --kernel-version "$v_" --compression zstd) ;;
	zstd:kiln-pack) CMD=("$k" initrd pack "$t/main" -o "$out" --compression zstd "${early[@]}") ;;
	# The same cpio zstd -T0 compresses, repacked by kiln (parse, sort, write, compress).
	zstd:kiln-repack) CMD=("$k" initrd add "$mc" -o "$out" --compression zstd) ;;
	*) die "no command for $c:$v" ;;
	esac
}
display_cmd() {   # CASE VARIANT -> the command line as shown in the table
	local -a CMD
	DISPLAY_NAMES=1 set_cmd "$1" "$2" out.img
	if [[ ${CMD[0]} == bash ]]; then
		printf "bash -c '%s'" "$(printf '%s' "${CMD[2]}" | sed -e '/^set -e$/d' | tr '\n' ';' | sed -e 's/; *$//' -e 's/;/; /g' -e 's/  */ /g')"
	else
		printf '%s ' "${CMD[@]}" | sed -e 's/ $//'
	fi
}

# ---------------------------------------------------------------------------
# Inputs

# Extracts INITRD, adds the module and runs depmod exactly as the timed shell
# pipeline does, then writes the uncompressed archives the zstd case
# compresses: $WORK/tree/{early,main}, $WORK/early.cpio, $WORK/main.cpio.
prepare_inputs() {
	local ls=$WORK/input.ls n e root
	mkdir -p "$WORK"
	say "input: $INITRD ($(file_bytes "$INITRD") bytes), kernel $KVER, module $MODULE ($MOD_FILE)"
	"$KILN" initrd ls "$INITRD" >"$ls" || die "kiln initrd ls $INITRD failed"
	if grep -qE "/$MODULE\.ko(\.[a-z]+)?\$" "$ls"; then
		die "$INITRD already holds a $MODULE.ko (see $ls); pick another MODULE"
	fi
	grep -q "modules/$KVER/modules.dep\$" "$ls" || die "$INITRD has no modules for $KVER (see $ls)"

	say "preparing the extracted tree and the uncompressed cpio (untimed)"
	rm -rf "$WORK/tree" "$WORK/main.cpio" "$WORK/early.cpio"
	unmkinitramfs "$INITRD" "$WORK/tree"
	if [[ ! -d $WORK/tree/main ]]; then   # no early archives: move it all to tree/main
		mkdir "$WORK/tree.main"
		mv "$WORK/tree" "$WORK/tree.main/main"
		mv "$WORK/tree.main" "$WORK/tree"
	fi
	root=$WORK/tree/main
	if [[ -d $root/usr/lib/modules/$KVER ]]; then MOD_PREFIX=usr/lib; else MOD_PREFIX=lib; fi
	[[ -d $root/$MOD_PREFIX/modules/$KVER/$(dirname "$MOD_REL") ]] ||
		die "$INITRD has no directory $MOD_PREFIX/modules/$KVER/$(dirname "$MOD_REL") to copy $MODULE.ko into"
	cp "$MOD_FILE" "$root/$MOD_PREFIX/modules/$KVER/$(dirname "$MOD_REL")/"
	depmod -b "$root" "$KVER"
	: >"$WORK/early.cpio"
	n=1 e=$WORK/tree/early
	while [[ -d $e ]]; do
		(cd "$e" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >>"$WORK/early.cpio"
		n=$((n + 1)) e=$WORK/tree/early$n
	done
	(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$WORK/main.cpio"
	EARLY_DIRS=$((n - 1))
	((EARLY_DIRS <= 1)) || say "note: $EARLY_DIRS early archives; kiln initrd pack takes one --early, so its output lacks early2+"
	printf '%s %s %s %s\n' "$EARLY_DIRS" "$(file_bytes "$WORK/early.cpio")" "$(file_bytes "$WORK/main.cpio")" \
		"$(find "$root" | wc -l)" >"$WORK/input.summary"
}

# ---------------------------------------------------------------------------
# Verification of an output. Writes "ENTRIES ARCHIVES" to $2 and returns
# non-zero with a message when something is wrong. Outputs of the reference
# tools get the same checks, so that both sides are known to do the same work.
verify_output() {
	local out=$1 res=$2 comp=$3 tmp=$WORK/verify mpath ls off dec walk archives entries early_entries kentries lastcomp
	mpath=$MOD_PREFIX/modules/$KVER/$MOD_REL
	rm -rf "$tmp" && mkdir -p "$tmp"
	ls=$tmp/kiln.ls
	# 1. kiln's own listing (to a file: kiln must not be cut off by a pipe).
	"$KILN" initrd ls "$out" >"$ls" 2>"$tmp/kiln.ls.err" || { say "verify: kiln initrd ls $out failed: $(head -n 3 "$tmp/kiln.ls.err")"; return 1; }
	grep -q " $mpath\$" "$ls" || { say "verify: kiln initrd ls does not list $mpath"; return 1; }
	lastcomp=$(awk -F ', ' '/^segment / { c = $3 } END { print c }' "$ls")
	[[ $lastcomp == "$comp" ]] || { say "verify: last segment is '$lastcomp', expected $comp"; return 1; }
	kentries=$(awk '/^segment / { for (i = 1; i < NF; i++) if ($(i + 1) == "entries") n += $i } END { print n + 0 }' "$ls")
	# 2. Independent of kiln: skip the leading uncompressed archives, decompress
	#    the rest with zcat / zstdcat (both read every gzip member or zstd
	#    frame), walk every cpio archive in it and count the TRAILER!!!s.
	off=$(cpio_walk early <"$out") || { say "verify: malformed early cpio in $out"; return 1; }
	case $comp in gzip) dec=(zcat) ;; zstd) dec=(zstdcat -q) ;; *) dec=(cat) ;; esac
	tail -c +$((off + 1)) -- "$out" | "${dec[@]}" >"$tmp/main.cpio" || { say "verify: ${dec[*]} failed on $out (after byte $off)"; return 1; }
	walk=$(cpio_walk main "$tmp/main.list" "$MOD_PREFIX/modules/$KVER/modules.dep" "$tmp/modules.dep" <"$tmp/main.cpio" 2>"$tmp/walk.err") ||
		{ say "verify: $out: $(cat "$tmp/walk.err")"; return 1; }
	read -r archives entries <<<"$walk"
	grep -qxF "$mpath" "$tmp/main.list" || { say "verify: ${dec[0]} | cpio: $mpath not in $out"; return 1; }
	[[ -s $tmp/modules.dep ]] || { say "verify: no $MOD_PREFIX/modules/$KVER/modules.dep in $out"; return 1; }
	grep -q "^\(/lib/modules/$KVER/\)\?$MOD_REL:" "$tmp/modules.dep" || { say "verify: modules.dep in $out has no line for $MOD_REL"; return 1; }
	# GNU cpio, as lsinitramfs uses it, sees only the first archive.
	(cd "$tmp" && cpio -t --quiet <main.cpio 2>/dev/null | sed -e 's#^\./##' >cpio-t.list) || true
	if ((archives == 1)); then
		grep -qxF "$mpath" "$tmp/cpio-t.list" || { say "verify: cpio -t does not list $mpath"; return 1; }
	else
		say "verify: $archives cpio archives after decompression; cpio -t (and lsinitramfs) see only the first ($(wc -l <"$tmp/cpio-t.list") entries)"
	fi
	# kiln's listing and the independent walk must agree on the number of entries.
	read -r _ early_entries <<<"$(head -c "$off" -- "$out" | cpio_walk main /dev/null)"
	((kentries == early_entries + entries)) ||
		{ say "verify: kiln initrd ls counts $kentries entries, the cpio walk $early_entries early + $entries"; return 1; }
	printf '%s %s %s\n' "$entries" "$archives" "$kentries" >"$res"
	rm -rf "$tmp"
}

run_case() {
	local c=$1 rep v out log tf rc secs rss usr sys cpu other b0 b1 line entries archives kentries
	local -a CMD variants
	read -r -a variants <<<"$(case_variants "$c")"
	local runs=$RUN_DIR/$c.runs status=$RUN_DIR/$c.status
	: >"$runs"
	echo running >"$status"
	mkdir -p "$OUT_DIR" "$LOG_DIR"

	say "[$c] $(case_title "$c"): warm-up read of the inputs"
	cat "$INITRD" "$MOD_FILE" "/lib/modules/$KVER"/modules.* >/dev/null
	if [[ $c == zstd ]]; then
		cat "$WORK/main.cpio" "$WORK/early.cpio" >/dev/null
		find "$WORK/tree" -type f -exec cat {} + >/dev/null
	fi
	for ((rep = 1; rep <= REPS; rep++)); do
		for v in "${variants[@]}"; do
			out=$OUT_DIR/$c-$v.img log=$LOG_DIR/$c-$v-$rep.log tf=$LOG_DIR/$c-$v-$rep.time
			set_cmd "$c" "$v" "$out"
			rm -rf "$out" "$WORK/x"
			sync
			rc=0 b0=$(busy_ticks)
			/usr/bin/time -f '%e %M %U %S' -o "$tf" -- "${CMD[@]}" >"$log" 2>&1 || rc=$?
			b1=$(busy_ticks)
			if ((rc != 0)); then
				tail -n 20 "$log" >&2
				echo "error: $(variant_label "$v") exited with status $rc (log: $log)" >"$status"
				say "[$c] $(cat "$status")"
				exit 1
			fi
			read -r secs rss usr sys <<<"$(tail -n 1 "$tf")"
			if ! verify_output "$out" "$LOG_DIR/$c-$v-$rep.verify" "$(case_comp "$c")" 2>>"$log"; then
				tail -n 5 "$log" >&2
				echo "error: verification of $(variant_label "$v")'s output failed (rep $rep, output: $out, log: $log)" >"$status"
				say "[$c] $(cat "$status")"
				exit 1
			fi
			read -r entries archives kentries <"$LOG_DIR/$c-$v-$rep.verify"
			cpu=$(fcalc "$usr" "$sys" 'printf "%.2f", a + b')
			# Share of the machine's CPU time used by anything but the command.
			other=$(awk -v busy=$((b1 - b0)) -v hz="$CLK_TCK" -v n="$NCPU" -v cpu="$cpu" -v t="$secs" \
				'BEGIN { x = t > 0 ? (busy / hz - cpu) / (t * n) : 0; printf "%.0f", (x < 0 ? 0 : x) * 100 }')
			line=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$v" "$rep" "$secs" "$rss" "$(file_bytes "$out")" "$cpu" "$other" "$entries" "$archives")
			printf '%s\n' "$line" >>"$runs"
			say "[$c] rep $rep/$REPS $(variant_label "$v"): ${secs}s (CPU ${cpu}s, others ${other}%), peak RSS $(mib "$rss") MiB, $(file_bytes "$out") bytes, $entries entries in $archives cpio archive(s)"
			if [[ ${KEEP_OUTPUTS:-0} != 1 || $rep != "$REPS" ]]; then rm -f "$out"; fi
			rm -rf "$WORK/x"
		done
	done
	echo ok >"$status"
}

# ---------------------------------------------------------------------------
# Report

# Summary of one variant of a case: median seconds, max RSS KiB, last output
# bytes, fastest and slowest seconds, median CPU seconds, largest share (%) of
# CPU time used by other processes, entries and cpio archives of the last output.
summary() {   # CASE VARIANT -> "secs rss bytes min max cpu other entries archives"
	awk -F '\t' -v v="$2" '
		$1 == v { n++; t[n] = $3 + 0; u[n] = $6 + 0; if ($7 + 0 > other) other = $7 + 0; if ($4 + 0 > rss) rss = $4 + 0; size = $5; ent = $8; arc = $9 }
		END {
			if (n == 0) exit 1
			for (i = 2; i <= n; i++) { x = t[i]; for (j = i - 1; j >= 1 && t[j] > x; j--) t[j + 1] = t[j]; t[j + 1] = x }
			for (i = 2; i <= n; i++) { x = u[i]; for (j = i - 1; j >= 1 && u[j] > x; j--) u[j + 1] = u[j]; u[j + 1] = x }
			med = (n % 2) ? t[(n + 1) / 2] : (t[n / 2] + t[n / 2 + 1]) / 2
			cpu = (n % 2) ? u[(n + 1) / 2] : (u[n / 2] + u[n / 2 + 1]) / 2
			printf "%.2f %d %s %.2f %.2f %.2f %d %s %s\n", med, rss, size, t[1], t[n], cpu, other, ent, arc
		}' "$RUN_DIR/$1.runs"
}
ref_variant() { case $1 in gzip) echo shell ;; zstd) echo zstd ;; esac; }

GOALS=()
GOAL_FAILS=0
goal() {   # TEXT MEASURED PASS(0|1)
	local verdict=PASS
	if (($3 != 0)); then verdict=FAIL GOAL_FAILS=$((GOAL_FAILS + 1)); fi
	GOALS+=("| $1 | $2 | $verdict |")
}
goal_speed() {   # CASE REF KILN-VARIANT MIN TEXT
	local c=$1 rv=$2 kv=$3 min=$4 text=$5 q k r
	if [[ "$(cat "$RUN_DIR/$c.status" 2>/dev/null)" != ok ]]; then goal "$text" "case failed" 1; return; fi
	read -r q _ <<<"$(summary "$c" "$rv")"
	read -r k _ <<<"$(summary "$c" "$kv")"
	r=$(ratio "$q" "$k")
	if fge "$r" "$min"; then goal "$text" "${r}x" 0; else goal "$text" "${r}x" 1; fi
}

# shellcheck disable=SC2016 # backquotes in single quotes are Markdown here
report() {
	local c v s q k label rss qs ks tmin tmax cpu other ent arc cells status rv any_error=0 busy=0
	local early_dirs early_bytes main_bytes tree_entries
	local -a variants
	read -r early_dirs early_bytes main_bytes tree_entries <"$WORK/input.summary"
	printf '# kiln initrd add / pack vs unmkinitramfs + depmod + cpio | gzip, and vs zstd -T0\n\n'
	printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf -- '- machine: %s CPUs (%s), %s, %s\n' "$(nproc)" \
		"$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
		"$(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)" "$(uname -sr)"
	printf -- '- tools: initramfs-tools-core %s, kmod %s, cpio %s, gzip %s, zstd %s\n' \
		"$(dpkg-query -W -f '${Version}' initramfs-tools-core 2>/dev/null || echo '?')" \
		"$(dpkg-query -W -f '${Version}' kmod 2>/dev/null || echo '?')" \
		"$(cpio --version | awk 'NR == 1 { print $NF }')" "$(gzip --version | awk 'NR == 1 { print $NF }')" \
		"$(zstd --version | sed -n 's/.*\(v[0-9][0-9.]*\).*/\1/p')"
	printf -- '- kiln: %s (%s, sha256 %s)%s\n' "$KILN" "$("$KILN" --version 2>/dev/null || echo '?')" \
		"$(sha256sum "$KILN" | cut -c1-12)" "${KILN_REV:+, $KILN_REV}"
	printf -- '- input: `%s` (%s bytes; %s early uncompressed archive(s)), kernel `%s`; module `%s` (`%s`, not in the input).\n' \
		"$INITRD" "$(file_bytes "$INITRD")" "$early_dirs" "$KVER" "$MODULE" "$MOD_FILE"
	printf '  Prepared (untimed) for the zstd case: the tree after unmkinitramfs + cp + depmod (`tree/`, %s entries), its\n' "$tree_entries"
	printf '  `find | LC_ALL=C sort | cpio -o -H newc` (`main.cpio`, %s bytes) and the early archives (`early.cpio`, %s bytes).\n' "$main_bytes" "$early_bytes"
	printf -- '- %s repetitions per command; median wall time, maximum peak RSS (of the largest process, for pipelines).\n' "$REPS"
	printf '  Warm cache: inputs read once before each case, page cache never dropped; `sync` (untimed) before each run.\n'
	printf -- '- every output (reference tools'"'"' too) checked: `kiln initrd ls` lists the module; independently, the bytes after the\n'
	printf '  early archives decompressed with `zcat`/`zstdcat` hold the module and a modules.dep line for it; "entries" and\n'
	printf '  "cpio archives" (TRAILER!!! count) come from that stream. GNU cpio and lsinitramfs read only the first archive.\n'
	printf -- '- load average (1 min) before the first case: %s. "other load %%" is the largest share of the time of all CPUs\n' "$LOAD_START"
	printf '  that other processes (and steal) took during one run; above %s%% the timing is disturbed. "CPU s": median user + system.\n\n' "$OTHER_MAX"

	printf '| case | tool | command | median s | min–max s | CPU s | other load %% | peak RSS MiB | output bytes | entries | cpio archives | ref time / this time | this size / ref size |\n'
	printf '|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n'
	for c in "${CASES[@]}"; do
		status=$(cat "$RUN_DIR/$c.status" 2>/dev/null || echo "error: not run")
		[[ $status == ok ]] || any_error=1
		rv=$(ref_variant "$c")
		read -r q _ qs _ <<<"$(summary "$c" "$rv" 2>/dev/null || echo - - - -)"
		read -r -a variants <<<"$(case_variants "$c")"
		for v in "${variants[@]}"; do
			label=$(variant_label "$v")
			if ! s=$(summary "$c" "$v" 2>/dev/null); then
				if [[ $status != ok ]]; then cells="| **${status}** | | | | | | | | | |"; else cells="| — | — | — | — | — | — | — | — | — | — |"; fi
			else
				read -r k rss ks tmin tmax cpu other ent arc <<<"$s"
				((other <= OTHER_MAX)) || busy=1
				cells="| $k | $tmin–$tmax | $cpu | $other | $(mib "$rss") | $ks | $ent | $arc"
				if [[ $v == "$rv" ]]; then
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
	if in_run gzip; then
		goal_speed gzip shell kiln "$GOAL_GZIP_VS_SHELL" "add module, gzip: \`kiln initrd add\` >= ${GOAL_GZIP_VS_SHELL}x faster than the shell pipeline"
	fi
	if in_run zstd; then
		goal_speed zstd zstd kiln-repack "$GOAL_ZSTD_VS_ZSTD" "zstd repack: kiln repacking main.cpio >= ${GOAL_ZSTD_VS_ZSTD}x as fast as \`zstd -T0\` on the same cpio"
		goal_speed zstd zstd kiln-pack "$GOAL_ZSTD_VS_ZSTD" "zstd: \`kiln initrd pack\` of the tree >= ${GOAL_ZSTD_VS_ZSTD}x as fast as \`zstd -T0\` on its cpio"
	fi
	report_goals "$busy" "$any_error"
}

# ---------------------------------------------------------------------------
# Main

BENCH_DIR=${KILN_BENCH_DIR:-/var/tmp/kiln-bench}
REPS=${REPS:-3}
MODULE=${MODULE:-dummy}
WORK=$BENCH_DIR/initrd
RUN_DIR=$WORK/runs OUT_DIR=$WORK/out LOG_DIR=$WORK/logs
NCPU=$(nproc)
CLK_TCK=$(getconf CLK_TCK)
OTHER_MAX=5
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer, not '$REPS'"

if [[ -z ${INITRD:-} ]]; then
	INITRD=$(find /boot -maxdepth 1 -name 'initrd.img-*' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-)
	[[ -n $INITRD ]] || die "no /boot/initrd.img-*; set INITRD"
fi
INITRD=$(readlink -f -- "$INITRD")
[[ -f $INITRD ]] || die "INITRD=$INITRD is not a file"
KVER=${KVER:-$(basename "$INITRD" | sed -n 's/^initrd\.img-//p')}
[[ -n $KVER && -d /lib/modules/$KVER ]] || die "no /lib/modules/${KVER:-?}; set KVER"

if [[ ${1:-} == --run-case ]]; then   # internal: one case, in its own process
	MOD_FILE=$2 MOD_REL=$3 MOD_PREFIX=$4
	run_case "$5"
	exit 0
fi

CASES=()
for arg in "$@"; do
	case $arg in
	-h | --help) usage; exit 0 ;;
	all) CASES+=("${ALL_CASES[@]}") ;;
	gzip | zstd) CASES+=("$arg") ;;
	*) usage >&2; die "unknown case '$arg'" ;;
	esac
done
((${#CASES[@]})) || CASES=("${ALL_CASES[@]}")

missing=()
for tool in unmkinitramfs depmod modinfo cpio gzip zcat zstd zstdcat perl find sort awk sed stat sha256sum; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -x /usr/bin/time ]] || missing+=("/usr/bin/time")
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (Debian: apt-get install initramfs-tools-core kmod cpio zstd time)"

MOD_FILE=$(modinfo -k "$KVER" -F filename "$MODULE" 2>/dev/null) || die "modinfo -k $KVER: no module '$MODULE'"
[[ $MOD_FILE == /lib/modules/$KVER/* || $MOD_FILE == /usr/lib/modules/$KVER/* ]] || die "module $MODULE is $MOD_FILE, not under /lib/modules/$KVER"
[[ $MOD_FILE == *.ko ]] || die "$MOD_FILE is compressed; the shell pipeline copies it as is, pick an uncompressed module"
MOD_REL=${MOD_FILE#*/modules/"$KVER"/}
[[ -z "$(modinfo -k "$KVER" -F depends "$MODULE")$(modinfo -k "$KVER" -F softdep "$MODULE")" ]] ||
	die "module $MODULE has dependencies; the shell pipeline copies one file, so pick a module without any (e.g. dummy)"

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
export BENCH_DIR REPS KILN WORK RUN_DIR OUT_DIR LOG_DIR KEEP_OUTPUTS INITRD KVER MODULE

prepare_inputs
mkdir -p "$RUN_DIR"
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
for c in "${CASES[@]}"; do
	rm -f "$RUN_DIR/$c.runs" "$RUN_DIR/$c.status"
	bash "$SCRIPT" --run-case "$MOD_FILE" "$MOD_REL" "$MOD_PREFIX" "$c" || true   # the status file says what happened
done

rc=0
report >"$RUN_DIR/results.md.tmp" || rc=1
mv "$RUN_DIR/results.md.tmp" "$BENCH_DIR/initrd-results.md"
say ""
cat "$BENCH_DIR/initrd-results.md"
say ""
say "results written to $BENCH_DIR/initrd-results.md"
exit "$rc"

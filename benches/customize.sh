#!/usr/bin/env bash
# Benchmark: `kiln image customize` and `kiln image inspect` against
# libguestfs' virt-customize and virt-inspector on the same Debian qcow2.
#
# Run by hand, never in CI (see benches/README.md). Both tools run on the same
# image in the same invocation and the report gives time ratios, so the numbers
# are comparable only within one run on one machine. libguestfs runs with
# LIBGUESTFS_BACKEND=direct and, since KVM is not available here, TCG
# (LIBGUESTFS_BACKEND_SETTINGS=force_tcg).
#
#   benches/customize.sh [CASE...]     CASE: customize inspect (default: both)
#
# Environment:
#   KILN_BENCH_DIR  work dir; this script uses $KILN_BENCH_DIR/customize and writes
#                   $KILN_BENCH_DIR/customize-results.md (/var/tmp/kiln-bench)
#   KILN            kiln binary (default: <repo>/target/release/kiln, built with cargo build --release)
#   REPS            repetitions per command (3)
#   IMAGE           the Debian qcow2 (default: built once, untimed, with
#                   `kiln image build recipes/debian-vm.yaml` into
#                   $KILN_BENCH_DIR/customize/debian/ and reused by later runs)
#   KEEP_OUTPUTS=1  keep the last customized copy of each tool in $KILN_BENCH_DIR/customize/out
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SCRIPT")")
# shellcheck source=benches/lib/common.sh
. "$REPO/benches/lib/common.sh"
ALL_CASES=(customize inspect)

GOAL_CUSTOMIZE=10.0
GOAL_INSPECT=20.0
# The operations, the same for both tools. PASSWORD is what root's hash is
# checked against afterwards.
PASSWORD=kiln-bench-pw
OPS=(--root-password "password:$PASSWORD" --write /etc/kiln-bench:hello --mkdir /opt/bench
	--hostname benchhost --run-command 'echo ok > /opt/bench/ran')
OPS_SHOWN="--root-password password:X --write /etc/kiln-bench:hello --mkdir /opt/bench --hostname benchhost --run-command 'echo ok > /opt/bench/ran'"

die() { printf 'customize.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
	cat <<EOF
usage: benches/customize.sh [CASE...]

Cases (default: all, in this order):
  customize  on a fresh copy of IMAGE each run (cp, untimed):
             virt-customize -a COPY OPS vs kiln image customize -a COPY OPS, with
             OPS = $OPS_SHOWN
             (goal: kiln >= ${GOAL_CUSTOMIZE}x faster)
  inspect    virt-inspector -a IMAGE vs kiln image inspect --json IMAGE
             (goal: kiln >= ${GOAL_INSPECT}x faster)

Environment: KILN_BENCH_DIR (default /var/tmp/kiln-bench), KILN (default
<repo>/target/release/kiln, built with cargo build --release), REPS (default 3),
IMAGE (default: built once from recipes/debian-vm.yaml), KEEP_OUTPUTS=1.
libguestfs always runs with LIBGUESTFS_BACKEND=direct and
LIBGUESTFS_BACKEND_SETTINGS=force_tcg.
Results: a Markdown table on stdout and in \$KILN_BENCH_DIR/customize-results.md.
EOF
}


# ---------------------------------------------------------------------------
# Input

ensure_image() {
	if [[ -n ${IMAGE:-} ]]; then
		IMAGE=$(readlink -f -- "$IMAGE")
		[[ -f $IMAGE ]] || die "IMAGE=$IMAGE is not a file"
		return
	fi
	IMAGE=$WORK/debian/debian-vm.qcow2
	[[ -f $IMAGE ]] && return
	say "building the Debian image (untimed, about a minute): kiln image build recipes/debian-vm.yaml"
	rm -rf "$WORK/debian"
	"$KILN" image build "$REPO/recipes/debian-vm.yaml" -o "$WORK/debian" >"$WORK/debian-build.log" 2>&1 ||
		{ tail -n 20 "$WORK/debian-build.log" >&2; die "kiln image build failed (log: $WORK/debian-build.log)"; }
	[[ -f $IMAGE ]] || die "kiln image build wrote no $IMAGE"
}

# ---------------------------------------------------------------------------
# Verification, independent of both tools: qemu-img, sfdisk, debugfs, python3.

# Byte offset of the ext4 root file system inside a raw disk: the largest
# partition that debugfs recognises as ext2/3/4.
root_offset() {   # RAW
	local raw=$1 start off
	while read -r start _; do
		off=$((start * 512))
		if debugfs -R 'stats -h' "$raw?offset=$off" 2>/dev/null | grep -q '^Filesystem magic number:  *0xEF53'; then
			echo "$off"
			return 0
		fi
	done < <(sfdisk -J "$raw" | /usr/bin/python3 -c '
import json, sys
parts = json.load(sys.stdin)["partitiontable"]["partitions"]
for p in sorted(parts, key=lambda p: -p["size"]):
    print(p["start"], p["size"])')
	return 1
}

guest_cat() { debugfs -R "cat $2" "$1" 2>/dev/null; }   # FS PATH

verify_customize() {   # QCOW2 LOG
	local img=$1 log=$2 raw off fs v shadow
	qemu-img check -f qcow2 "$img" >"$log" 2>&1 || { say "verify: qemu-img check $img failed"; return 1; }
	grep -q 'No errors were found' "$log" || { say "verify: qemu-img check reports problems"; return 1; }
	raw=$WORK/verify.raw
	rm -f "$raw"
	qemu-img convert -f qcow2 -O raw "$img" "$raw"
	off=$(root_offset "$raw") || { rm -f "$raw"; say "verify: no ext4 partition found (sfdisk -J + debugfs)"; return 1; }
	fs="$raw?offset=$off"
	v=$(guest_cat "$fs" /etc/kiln-bench)
	[[ $v == hello ]] || { say "verify: /etc/kiln-bench is '$v', not 'hello'"; return 1; }
	v=$(guest_cat "$fs" /opt/bench/ran)
	[[ $v == ok ]] || { say "verify: /opt/bench/ran is '$v', not 'ok'"; return 1; }
	debugfs -R 'stat /opt/bench' "$fs" 2>/dev/null | grep -q 'Type: directory' ||
		{ say "verify: /opt/bench is not a directory"; return 1; }
	v=$(guest_cat "$fs" /etc/hostname)
	[[ $v == benchhost ]] || { say "verify: /etc/hostname is '$v', not 'benchhost'"; return 1; }
	shadow=$(guest_cat "$fs" /etc/shadow)
	v=$(printf '%s\n' "$shadow" | awk -F: '$1 == "root" { print $2 }')
	# libcrypt (through python3's crypt) checks the hash, whatever its method.
	/usr/bin/python3 -W ignore -c '
import crypt, sys
h, pw = sys.argv[1], sys.argv[2]
sys.exit(0 if h.startswith("$") and crypt.crypt(pw, h) == h else 1)' "$v" "$PASSWORD" ||
		{ say "verify: root's hash '$v' does not match the password"; return 1; }
	printf 'root hash method %s\n' "$(cut -d'$' -f2 <<<"$v")" >>"$log"
	rm -f "$raw"
}

# Prints "distro major product packages" from either tool's output.
inspect_summary() {   # kiln|virt FILE
	/usr/bin/python3 - "$1" "$2" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
tool, path = sys.argv[1], sys.argv[2]
if tool == "kiln":
    o = json.load(open(path))
    print(o["distro"], o.get("major_version"), o["product_name"].replace(" ", "_"), len(o["packages"]))
else:
    oses = ET.parse(path).getroot().findall("operatingsystem")
    if len(oses) != 1:
        sys.exit(f"{len(oses)} operating systems in {path}")
    os_ = oses[0]
    apps = os_.findall("applications/application")
    print(os_.findtext("distro"), os_.findtext("major_version"),
          (os_.findtext("product_name") or "").replace(" ", "_"), len(apps))
EOF
}

verify_inspect() {   # kiln|virt OUTPUT LOG
	local distro major product pkgs
	read -r distro major product pkgs <<<"$(inspect_summary "$1" "$2")" || true
	printf 'inspect: distro %s, major %s, product %s, %s packages\n' "$distro" "$major" "$product" "$pkgs" >>"$3"
	[[ $distro == debian && $major == 12 ]] || { say "verify: $1 says '$distro $major', not Debian 12"; return 1; }
	((pkgs > 0)) || { say "verify: $1 lists no packages"; return 1; }
	echo "$pkgs" >"$3.pkgs"
}

# ---------------------------------------------------------------------------
# Runs

set_cmd() {   # CASE TOOL TARGET -> CMD
	case $1-$2 in
	customize-virt) CMD=(virt-customize -a "$3" "${OPS[@]}") ;;
	customize-kiln) CMD=("$KILN" image customize -a "$3" "${OPS[@]}") ;;
	inspect-virt) CMD=(virt-inspector -a "$3") ;;
	inspect-kiln) CMD=("$KILN" image inspect --json "$3") ;;
	esac
}
display_cmd() {
	case $1-$2 in
	customize-virt) echo "virt-customize -a copy.qcow2 $OPS_SHOWN" ;;
	customize-kiln) echo "kiln image customize -a copy.qcow2 $OPS_SHOWN" ;;
	inspect-virt) echo "virt-inspector -a debian-vm.qcow2" ;;
	inspect-kiln) echo "kiln image inspect --json debian-vm.qcow2" ;;
	esac
}
case_title() { case $1 in customize) echo "customize (5 operations)" ;; inspect) echo "inspect" ;; esac; }
tool_label() { case $1 in virt) [[ $2 == customize ]] && echo virt-customize || echo virt-inspector ;; kiln) echo kiln ;; esac; }

run_case() {
	local c=$1 rep t target log vlog tf rc secs rss usr sys cpu other b0 b1 out
	local -a CMD
	local runs=$RUN_DIR/$c.runs status=$RUN_DIR/$c.status
	: >"$runs"
	echo running >"$status"
	say "[$c] warm-up read of the image"
	cat "$IMAGE" >/dev/null
	for ((rep = 1; rep <= REPS; rep++)); do
		for t in virt kiln; do
			log=$LOG_DIR/$c-$t-$rep.log tf=$LOG_DIR/$c-$t-$rep.time out=$LOG_DIR/$c-$t-$rep.out
			vlog=$LOG_DIR/$c-$t-$rep.verify
			if [[ $c == customize ]]; then
				target=$OUT_DIR/$t.qcow2
				rm -f "$target"
				cp --sparse=always "$IMAGE" "$target"
			else
				target=$IMAGE
			fi
			set_cmd "$c" "$t" "$target"
			sync
			rc=0 b0=$(busy_ticks)
			/usr/bin/time -f '%e %M %U %S' -o "$tf" -- "${CMD[@]}" >"$out" 2>"$log" || rc=$?
			b1=$(busy_ticks)
			if ((rc != 0)); then
				tail -n 20 "$log" >&2
				echo "error: $(tool_label "$t" "$c") exited with status $rc (log: $log)" >"$status"
				say "[$c] $(cat "$status")"
				return 1
			fi
			read -r secs rss usr sys <<<"$(tail -n 1 "$tf")"
			if [[ $c == customize ]]; then
				verify_customize "$target" "$vlog" 2>>"$vlog.err" || rc=1
			else
				verify_inspect "$t" "$out" "$vlog" 2>>"$vlog.err" || rc=1
			fi
			if ((rc != 0)); then
				tail -n 5 "$vlog.err" >&2
				echo "error: verification of $(tool_label "$t" "$c")'s result failed (rep $rep, log: $vlog.err)" >"$status"
				say "[$c] $(cat "$status")"
				return 1
			fi
			cpu=$(fcalc "$usr" "$sys" 'printf "%.2f", a + b')
			# Share of the machine's CPU time used by anything but the command;
			# not measured for runs under a second: /proc/stat counts in
			# ticks, and the kernel's work for kiln (loop device, FUSE
			# requests) runs in threads that are not charged to it.
			other=$(awk -v busy=$((b1 - b0)) -v hz="$CLK_TCK" -v n="$NCPU" -v cpu="$cpu" -v t="$secs" \
				'BEGIN { if (t < 1) { print "-"; exit } x = (busy / hz - cpu) / (t * n); printf "%.0f", (x < 0 ? 0 : x) * 100 }')
			printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$rep" "$secs" "$rss" "$cpu" "$other" \
				"$(cat "$vlog.pkgs" 2>/dev/null || echo -)" >>"$runs"
			say "[$c] rep $rep/$REPS $(tool_label "$t" "$c"): ${secs}s (CPU ${cpu}s, others ${other}%), peak RSS $(mib "$rss") MiB, verified"
			if [[ $c == customize && (${KEEP_OUTPUTS:-0} != 1 || $rep != "$REPS") ]]; then rm -f "$target"; fi
		done
	done
	echo ok >"$status"
}

# ---------------------------------------------------------------------------
# Report

# Median seconds, max RSS KiB, fastest, slowest, median CPU, max other %, packages.
summary() {   # CASE TOOL
	awk -F '\t' -v v="$2" '
		$1 == v { n++; t[n] = $3 + 0; u[n] = $5 + 0; if ($6 != "-" && $6 + 0 >= other + 0) other = $6 + 0; if ($4 + 0 > rss) rss = $4 + 0; pk = $7 }
		END {
			if (n == 0) exit 1
			if (other == "") other = "-"
			for (i = 2; i <= n; i++) { x = t[i]; for (j = i - 1; j >= 1 && t[j] > x; j--) t[j + 1] = t[j]; t[j + 1] = x }
			for (i = 2; i <= n; i++) { x = u[i]; for (j = i - 1; j >= 1 && u[j] > x; j--) u[j + 1] = u[j]; u[j + 1] = x }
			med = (n % 2) ? t[(n + 1) / 2] : (t[n / 2] + t[n / 2 + 1]) / 2
			cpu = (n % 2) ? u[(n + 1) / 2] : (u[n / 2] + u[n / 2 + 1]) / 2
			printf "%.2f %d %.2f %.2f %.2f %s %s\n", med, rss, t[1], t[n], cpu, other, pk
		}' "$RUN_DIR/$1.runs"
}

GOALS=()
GOAL_FAILS=0
goal_speed() {   # CASE MIN TEXT
	local c=$1 min=$2 text=$3 q k r verdict=PASS
	if [[ "$(cat "$RUN_DIR/$c.status" 2>/dev/null)" != ok ]]; then
		GOALS+=("| $text | case failed | FAIL |")
		GOAL_FAILS=$((GOAL_FAILS + 1))
		return
	fi
	read -r q _ <<<"$(summary "$c" virt)"
	read -r k _ <<<"$(summary "$c" kiln)"
	r=$(ratio "$q" "$k")
	fge "$r" "$min" || { verdict=FAIL GOAL_FAILS=$((GOAL_FAILS + 1)); }
	GOALS+=("| $text | ${r}x | $verdict |")
}

# shellcheck disable=SC2016 # backquotes in single quotes are Markdown here
report() {
	local c t s q k rss tmin tmax cpu other pk cells status any_error=0 busy=0
	printf '# kiln image customize / inspect vs virt-customize / virt-inspector\n\n'
	printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf -- '- machine: %s CPUs (%s), %s, %s; /dev/kvm: %s\n' "$(nproc)" \
		"$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
		"$(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)" "$(uname -sr)" \
		"$([[ -e /dev/kvm ]] && echo 'present, not used (force_tcg)' || echo absent)"
	printf -- '- tools: libguestfs-tools %s, libguestfs0 %s, supermin %s, qemu-system-x86 %s; LIBGUESTFS_BACKEND=%s, LIBGUESTFS_BACKEND_SETTINGS=%s\n' \
		"$(dpkg-query -W -f '${Version}' libguestfs-tools 2>/dev/null || echo '?')" \
		"$(dpkg-query -W -f '${Version}' libguestfs0 2>/dev/null || echo '?')" \
		"$(dpkg-query -W -f '${Version}' supermin 2>/dev/null || echo '?')" \
		"$(dpkg-query -W -f '${Version}' qemu-system-x86 2>/dev/null || echo '?')" \
		"$LIBGUESTFS_BACKEND" "$LIBGUESTFS_BACKEND_SETTINGS"
	printf -- '- kiln: %s (%s, sha256 %s)%s\n' "$KILN" "$("$KILN" --version 2>/dev/null || echo '?')" \
		"$(sha256sum "$KILN" | cut -c1-12)" "${KILN_REV:+, $KILN_REV}"
	printf -- '- input: `%s` (%s bytes, virtual size %s bytes), built by `kiln image build recipes/debian-vm.yaml`\n' \
		"$IMAGE" "$(stat -c %s "$IMAGE")" "$(qemu-img info --output=json "$IMAGE" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')"
	printf -- '- %s repetitions per command, libguestfs first; median wall time; the libguestfs appliance was built\n' "$REPS"
	printf '  (supermin) by an untimed warm-up run, as it is cached in /var/tmp after the first use. customize works on a fresh\n'
	printf '  copy of the image each run (cp, untimed); `sync` (untimed) before each run.\n'
	printf -- '- checked after every run, independently of both tools: customize: `qemu-img check` clean, then `qemu-img convert -O raw`\n'
	printf '  and `debugfs` on the ext4 partition (offset from `sfdisk -J`): /etc/kiln-bench = hello, /opt/bench a directory,\n'
	printf '  /opt/bench/ran = ok, /etc/hostname = benchhost, root'"'"'s /etc/shadow hash matches the password (libcrypt via python3);\n'
	printf '  inspect: both outputs name Debian 12; "packages" is the number each lists.\n'
	printf -- '- load average (1 min) before the first case: %s. "other load %%" is the largest share of all CPUs'"'"' time that other\n' "$LOAD_START"
	printf '  processes (and steal) took during one run; above %s%% the timing is disturbed; "-" for runs under a second, where\n' "$OTHER_MAX"
	printf '  it cannot be measured. "CPU s": median user + system of the command and the children it waited for.\n\n'

	printf '| case | tool | command | median s | min–max s | CPU s | other load %% | peak RSS MiB | packages | ref time / kiln time |\n'
	printf '|---|---|---|--:|--:|--:|--:|--:|--:|--:|\n'
	for c in "${CASES[@]}"; do
		status=$(cat "$RUN_DIR/$c.status" 2>/dev/null || echo "error: not run")
		[[ $status == ok ]] || any_error=1
		read -r q _ <<<"$(summary "$c" virt 2>/dev/null || echo -)"
		for t in virt kiln; do
			if ! s=$(summary "$c" "$t" 2>/dev/null); then
				cells="| **${status}** | | | | | | |"
			else
				read -r k rss tmin tmax cpu other pk <<<"$s"
				[[ $other == - ]] || ((other <= OTHER_MAX)) || busy=1
				cells="| $k | $tmin–$tmax | $cpu | $other | $(mib "$rss") | $pk"
				if [[ $t == virt ]]; then
					cells+=" | |"
				elif [[ $status == ok ]]; then
					cells+=" | $(ratio "$q" "$k")x |"
				else
					cells+=" | — |"
				fi
			fi
			printf '| %s | %s | `%s` %s\n' "$(case_title "$c")" "$(tool_label "$t" "$c")" "$(display_cmd "$c" "$t")" "$cells"
		done
	done

	if [[ "$(cat "$RUN_DIR/inspect.status" 2>/dev/null)" == ok ]]; then
		read -r _ _ _ _ _ _ q <<<"$(summary inspect virt)"
		read -r _ _ _ _ _ _ k <<<"$(summary inspect kiln)"
		printf '\nInstalled packages listed: virt-inspector %s, kiln %s (kiln / virt-inspector = %s).\n' "$q" "$k" "$(ratio "$k" "$q")"
	fi

	in_run() { [[ " ${CASES[*]} " == *" $1 "* ]]; }
	in_run customize && goal_speed customize "$GOAL_CUSTOMIZE" "customize: kiln >= ${GOAL_CUSTOMIZE}x faster than virt-customize"
	in_run inspect && goal_speed inspect "$GOAL_INSPECT" "inspect: kiln >= ${GOAL_INSPECT}x faster than virt-inspector"
	report_goals "$busy" "$any_error"
}

# ---------------------------------------------------------------------------
# Main

BENCH_DIR=${KILN_BENCH_DIR:-/var/tmp/kiln-bench}
REPS=${REPS:-3}
WORK=$BENCH_DIR/customize
RUN_DIR=$WORK/runs OUT_DIR=$WORK/out LOG_DIR=$WORK/logs
NCPU=$(nproc)
CLK_TCK=$(getconf CLK_TCK)
OTHER_MAX=5
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg

CASES=()
for arg in "$@"; do
	case $arg in
	-h | --help) usage; exit 0 ;;
	all) CASES+=("${ALL_CASES[@]}") ;;
	customize | inspect) CASES+=("$arg") ;;
	*) usage >&2; die "unknown case '$arg'" ;;
	esac
done
((${#CASES[@]})) || CASES=("${ALL_CASES[@]}")
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer, not '$REPS'"
[[ $(id -u) == 0 ]] || die "kiln's guest commands need root"

missing=()
for tool in virt-customize virt-inspector qemu-img sfdisk debugfs awk sha256sum; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -x /usr/bin/time ]] || missing+=("/usr/bin/time")
[[ -x /usr/bin/python3 ]] || missing+=("/usr/bin/python3")
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (Debian: apt-get install libguestfs-tools qemu-utils fdisk e2fsprogs time python3)"

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

mkdir -p "$WORK" "$RUN_DIR" "$OUT_DIR" "$LOG_DIR"
ensure_image

# libguestfs builds its appliance with supermin on first use and caches it;
# one untimed run pays for that, so the timed runs see the steady state.
say "warm-up (untimed): virt-inspector -a IMAGE (builds the libguestfs appliance on first use)"
virt-inspector -a "$IMAGE" >"$WORK/warmup-virt-inspector.xml" 2>"$WORK/warmup.log" || {
	tail -n 30 "$WORK/warmup.log" >&2
	die "libguestfs cannot run here: virt-inspector failed (log: $WORK/warmup.log; libguestfs-test-tool shows more)"
}
"$KILN" image inspect --json "$IMAGE" >/dev/null 2>>"$WORK/warmup.log" || die "kiln image inspect failed on $IMAGE"

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
for c in "${CASES[@]}"; do
	rm -f "$RUN_DIR/$c.runs" "$RUN_DIR/$c.status" "$LOG_DIR/$c"-*
	run_case "$c" || true   # the status file says what happened
done

rc=0
report >"$RUN_DIR/results.md.tmp" || rc=1
mv "$RUN_DIR/results.md.tmp" "$BENCH_DIR/customize-results.md"
say ""
cat "$BENCH_DIR/customize-results.md"
say ""
say "results written to $BENCH_DIR/customize-results.md"
exit "$rc"

#!/usr/bin/env bash
# One kiln conductor deploys one qcow2 image to AGENTS simulated nodes at once:
# every node runs `kiln agent --simulate` on loopback, writing to its own sparse
# file. Reports wall time, aggregate throughput, the conductor's CPU time and
# peak RSS, and checks that every node is active and its disk holds the image
# (qemu-img compare over the image's data region).
#
# Usage: benches/deploy_scale.sh [--help]
# Environment:
#   KILN_BENCH_DIR  work dir: cached image, run dir, results.md (/var/tmp/kiln-bench)
#   KILN            kiln binary (default: <repo>/target/release/kiln, built with cargo build --release)
#   AGENTS          simulated nodes (100)
#   VIRTUAL_MIB     virtual size of the image (1024)
#   DATA_MIB        allocated data in the image: a tar stream of /usr (600)
#   HEARTBEAT       agent heartbeat interval in seconds (10, the conductor's default)
#   CHECK           disks compared with qemu-img: "all" or a number spread evenly (all)
#   TIMEOUT         seconds to wait for every node to be active (3600)
#   DISKS_DIR       where the nodes' disk files go, e.g. a tmpfs (the run dir)
#   KEEP_OUTPUTS=1  keep the run dir (disks, logs, state file)
# shellcheck shell=bash
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=benches/lib/common.sh
source "$HERE/lib/common.sh"
die() {
	say "deploy_scale.sh: $*"
	exit 1
}

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
	sed -n '2,/^# shellcheck/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 0
fi
(($# == 0)) || die "no arguments expected (see --help)"

AGENTS=${AGENTS:-100}
VIRTUAL_MIB=${VIRTUAL_MIB:-1024}
DATA_MIB=${DATA_MIB:-600}
HEARTBEAT=${HEARTBEAT:-10}
CHECK=${CHECK:-all}
TIMEOUT=${TIMEOUT:-3600}
BENCH=${KILN_BENCH_DIR:-/var/tmp/kiln-bench}
WORK=$BENCH/scale
DISK_SIZE=5G # the default root device hint wants at least 4 GiB

((AGENTS >= 1 && AGENTS <= 65535)) || die "AGENTS must be 1..65535"
((DATA_MIB + 2 <= VIRTUAL_MIB)) || die "DATA_MIB must leave 2 MiB of VIRTUAL_MIB for the GPT"
for tool in qemu-img sgdisk curl jq tar; do
	command -v "$tool" >/dev/null || die "$tool is needed (see benches/README.md)"
done

if [[ -z ${KILN:-} ]]; then
	say "building kiln (cargo build --release)"
	(cd "$REPO" && cargo build --release --quiet) || die "cargo build failed"
	KILN=$REPO/target/release/kiln
fi
[[ -x $KILN ]] || die "KILN=$KILN is not an executable"
mkdir -p "$WORK"

RUN=$WORK/run
DISKS=${DISKS_DIR:-$RUN/disks}
mkdir -p "$DISKS"
# Every node writes the image's data (plus a config drive): refuse to fill the
# file system half-way.
need_mib=$((AGENTS * (DATA_MIB + 8)))
avail_mib=$(df --output=avail -BM "$DISKS" | tail -1 | tr -dc 0-9)
((avail_mib > need_mib)) ||
	die "$DISKS has ${avail_mib} MiB free; $AGENTS nodes x $DATA_MIB MiB need about ${need_mib} MiB (lower DATA_MIB or AGENTS, or set DISKS_DIR)"

# One thread and a few descriptors per agent connection in the conductor.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- the image (cached) ----------------------------------------------------
IMAGE_FILE=scale-${VIRTUAL_MIB}M-${DATA_MIB}M.qcow2
IMAGE=$WORK/$IMAGE_FILE
if [[ ! -s $IMAGE ]]; then
	say "making $IMAGE: GPT, ${DATA_MIB} MiB of /usr as a tar stream, qcow2 zstd"
	raw=$WORK/image.raw
	rm -f "$raw"
	truncate -s "${VIRTUAL_MIB}M" "$raw"
	sgdisk -n 1:2048:0 -c 1:root "$raw" >/dev/null
	# Reproducible: sorted names, fixed times and owners. head ends tar early.
	set +o pipefail
	tar -c --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C / usr 2>/dev/null |
		head -c "$((DATA_MIB << 20))" |
		dd of="$raw" bs=1M seek=1 conv=notrunc iflag=fullblock status=none
	set -o pipefail
	qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$raw" "$IMAGE.tmp"
	mv "$IMAGE.tmp" "$IMAGE"
	rm -f "$raw"
fi
image_bytes=$(file_bytes "$IMAGE")
virtual_bytes=$(qemu-img info --output=json "$IMAGE" | jq '.["virtual-size"]')

# ---- conductor and nodes ---------------------------------------------------
rm -rf "$RUN"
mkdir -p "$RUN/images" "$RUN/logs" "$DISKS"
rm -f "$DISKS"/node-*.img
ln "$IMAGE" "$RUN/images/$IMAGE_FILE" 2>/dev/null || cp "$IMAGE" "$RUN/images/$IMAGE_FILE"

CONDUCTOR_PID=
AGENT_PIDS=()
cleanup() {
	local pid
	for pid in "${AGENT_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	if [[ -n $CONDUCTOR_PID ]]; then
		kill "$CONDUCTOR_PID" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$CONDUCTOR_PID" 2>/dev/null || break
			sleep 0.1
		done
		# Older conductors ignore SIGTERM; the state file survives SIGKILL.
		kill -KILL "$CONDUCTOR_PID" 2>/dev/null || true
	fi
	wait 2>/dev/null || true
	if [[ ${KEEP_OUTPUTS:-} != 1 ]]; then
		rm -f "$DISKS"/node-*.img
		rm -rf "$RUN"
	fi
}
trap cleanup EXIT

"$KILN" conductor --listen 127.0.0.1:0 --state "$RUN/state.db" --images "$RUN/images" \
	--heartbeat-interval "$HEARTBEAT" --callback-timeout 600 \
	>"$RUN/logs/conductor.out" 2>"$RUN/logs/conductor.log" &
CONDUCTOR_PID=$!
for _ in $(seq 100); do
	URL=$(head -1 "$RUN/logs/conductor.out" 2>/dev/null || true)
	[[ $URL == http://* ]] && break
	sleep 0.1
done
[[ ${URL:-} == http://* ]] || die "the conductor did not start: $(cat "$RUN/logs/conductor.log")"

api() { # METHOD PATH [BODY]
	curl -sS --fail-with-body -X "$1" "$URL$2" ${3:+--data-binary "$3"}
}
mac_of() { printf '52:54:00:5c:%02x:%02x' $(($1 >> 8)) $(($1 & 255)); }
name_of() { printf 'node-%03d' "$1"; }

nodes=$(for i in $(seq "$AGENTS"); do
	jq -cn --arg name "$(name_of "$i")" --arg mac "$(mac_of "$i")" \
		'{name: $name, pm_type: "manual", ports: [{address: $mac}], capabilities: "profile:compute"}'
done | jq -cs '{nodes: .}')
api POST /v1/nodes "$nodes" >/dev/null || die "import failed"
for i in $(seq "$AGENTS"); do
	for verb in manage provide; do
		api PUT "/v1/nodes/$(name_of "$i")/states/provision" "{\"target\": \"$verb\"}" >/dev/null ||
			die "$verb $(name_of "$i") failed"
	done
done 2>"$RUN/logs/verbs.log"

PLAN="name: scale
images: {img: $IMAGE_FILE}
roles:
  - {name: Compute, count: $AGENTS, profile: compute, image: img}"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$CONDUCTOR_PID/stat"; }
proc_field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$CONDUCTOR_PID/status"; }
HZ=$(getconf CLK_TCK)
# CPU seconds (user + sys) of this script's reaped children (the agents once
# they exit, curl, jq) from a `times` report; `times` must run in this shell,
# not in a command substitution's subshell.
children_cpu() {
	awk 'NR == 2 {
		for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] }
		printf "%.1f\n", s }' "$1"
}

# ---- the deployment ----------------------------------------------------------
say "deploying $IMAGE_FILE ($((image_bytes >> 20)) MiB file) to $AGENTS simulated nodes"
cpu0=$(cpu_ticks)
times >"$RUN/times.before"
t0=$(date +%s.%N)
api POST /v1/deployments "$PLAN" >/dev/null || die "POST /v1/deployments failed"
t_post=$(date +%s.%N)
for i in $(seq "$AGENTS"); do
	"$KILN" agent --simulate --api-url "$URL" --mac "$(mac_of "$i")" \
		--disk "$DISKS/$(name_of "$i").img:$DISK_SIZE" 2>"$RUN/logs/$(name_of "$i").log" &
	AGENT_PIDS+=($!)
done

max_threads=0 max_fds=0 active=0 failed=0
deadline=$(($(date +%s) + TIMEOUT))
while :; do
	status=$(api GET /v1/deployments/scale) || die "GET /v1/deployments/scale failed"
	active=$(jq '[.nodes[] | select(.state == "active")] | length' <<<"$status")
	failed=$(jq '[.nodes[] | select(.state | endswith("failed"))] | length' <<<"$status")
	threads=$(proc_field Threads)
	fds=$(find "/proc/$CONDUCTOR_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
	((threads > max_threads)) && max_threads=$threads
	((fds > max_fds)) && max_fds=$fds
	((active + failed == AGENTS)) && break
	(($(date +%s) < deadline)) || break
	sleep 1
done
t1=$(date +%s.%N)
cpu1=$(cpu_ticks)
hwm_kib=$(proc_field VmHWM)
wait "${AGENT_PIDS[@]}" 2>/dev/null || true # all are done once their nodes are active
times >"$RUN/times.after"
agents_cpu=$(fcalc "$(children_cpu "$RUN/times.after")" "$(children_cpu "$RUN/times.before")" 'printf "%.1f", a - b')
wall=$(fcalc "$t1" "$t0" 'printf "%.1f", a - b')
post_s=$(fcalc "$t_post" "$t0" 'printf "%.1f", a - b')
cpu_s=$(fcalc "$((cpu1 - cpu0))" "$HZ" 'printf "%.1f", a / b')
cp "$RUN/logs/conductor.log" "$WORK/conductor-last.log"

if ((failed > 0 || active < AGENTS)); then
	jq -r '.nodes[] | select(.state != "active") | "\(.node): \(.state): \(.last_error)"' <<<"$status" |
		head -20 >&2
fi

# ---- checks ------------------------------------------------------------------
written=0
for f in "$DISKS"/node-*.img; do
	written=$((written + $(stat -c '%b * %B' "$f")))
done
start=$((34 * 512))
len=$((virtual_bytes - start - 33 * 512))
ours="driver=raw,offset=$start,size=$len,file.driver=qcow2,file.file.filename=$IMAGE"
if [[ $CHECK == all ]]; then step=1; else step=$(((AGENTS + CHECK - 1) / CHECK)); fi
checked=0 mismatched=0
for ((i = 1; i <= AGENTS; i += step)); do
	disk=$DISKS/$(name_of "$i").img
	checked=$((checked + 1))
	if ! qemu-img compare --image-opts "$ours" "driver=raw,offset=$start,size=$len,file.filename=$disk" >/dev/null 2>&1; then
		say "$(name_of "$i"): disk does not hold the image"
		mismatched=$((mismatched + 1))
	fi
done

throughput=$(fcalc "$written" "$wall" 'printf "%.1f", a / b / 1048576')
net=$(fcalc "$((image_bytes * active))" "$wall" 'printf "%.1f", a / b / 1048576')
report=$(
	printf '## deploy_scale: %s agents, %s\n\n' "$AGENTS" "$(date -u +%F)"
	printf '| figure | value |\n|---|--:|\n'
	printf '| image | %s MiB virtual, %s MiB data, %.1f MiB qcow2 zstd file |\n' \
		"$VIRTUAL_MIB" "$DATA_MIB" "$(fcalc "$image_bytes" 0 'printf "%.1f", a / 1048576')"
	printf '| nodes active / failed | %s / %s of %s |\n' "$active" "$failed" "$AGENTS"
	printf '| disks compared with qemu-img / mismatched | %s / %s |\n' "$checked" "$mismatched"
	printf '| wall time, POST to all active | %s s (POST answered in %s s) |\n' "$wall" "$post_s"
	printf '| bytes written to disks | %s MiB |\n' "$((written >> 20))"
	printf '| aggregate throughput, disk writes | %s MiB/s |\n' "$throughput"
	printf '| aggregate throughput, image file served | %s MiB/s |\n' "$net"
	printf '| conductor CPU time (user+sys) | %s s |\n' "$cpu_s"
	printf '| conductor peak RSS (VmHWM) | %s MiB |\n' "$(mib "$hwm_kib")"
	printf '| conductor peak threads / open fds | %s / %s |\n' "$max_threads" "$max_fds"
	printf '| agents CPU time (user+sys, with the polling curl/jq) | %s s |\n' "$agents_cpu"
	printf '| machine load average at the end | %s |\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf '| heartbeat interval | %s s |\n' "$HEARTBEAT"
)
printf '%s\n' "$report" | tee "$WORK/results.md"
((active == AGENTS && mismatched == 0))

# Helpers shared by the benchmark scripts (sourced, not run). They report to
# stderr with `say`; the caller defines `die` with its own name.
# shellcheck shell=bash

say() { printf '%s\n' "$*" >&2; }

# awk one-liners for float arithmetic; arguments are passed as variables.
fcalc() { awk -v a="$1" -v b="$2" "BEGIN { $3 }"; }
ratio() { fcalc "$1" "$2" 'if (b + 0 > 0) printf "%.2f", a / b; else print "inf"'; }
# Size ratios get four decimals: a 2% goal must not pass by rounding.
size_ratio() { fcalc "$1" "$2" 'if (b + 0 > 0) printf "%.4f", a / b; else print "inf"'; }
fge() { fcalc "$1" "$2" 'exit !(a != "inf" && a + 0 >= b + 0 || a == "inf")'; }
mib() { fcalc "$1" 0 'printf "%.1f", a / 1024'; }   # KiB -> MiB
# CPU ticks all processes spent running (user, nice, system, irq, softirq)
# plus steal, summed over CPUs.
busy_ticks() { awk '$1 == "cpu" { printf "%.0f\n", $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
file_bytes() { stat -c %s -- "$1"; }

# The end of a report: the disturbed-machine warning when BUSY is 1, the goals
# table (GOALS, GOAL_FAILS) and the cases that did not complete (CASES, their
# status files in RUN_DIR). Returns ANY_ERROR.
report_goals() {   # BUSY ANY_ERROR
	local busy=$1 any_error=$2 c status
	if ((busy)); then
		printf '\n**Other processes took more than %s%% of the CPUs during some runs: wall times and ratios are unreliable.**\n' "$OTHER_MAX"
	fi
	printf '\n## Goals\n\n| goal | measured | result |\n|---|--:|---|\n'
	printf '%s\n' "${GOALS[@]}"
	printf '\n%d of %d goals failed.' "$GOAL_FAILS" "${#GOALS[@]}"
	if ((any_error)); then
		printf ' Some cases did not complete:\n\n'
		for c in "${CASES[@]}"; do
			status=$(cat "$RUN_DIR/$c.status" 2>/dev/null || echo "error: not run")
			[[ $status == ok ]] || printf -- '- %s: %s\n' "$c" "$status"
		done
	else
		printf '\n'
	fi
	return "$any_error"
}

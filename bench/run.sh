#!/usr/bin/env bash
# Side-by-side bench: every scenario of cmd/sss-bench on each target (sss,
# centrifuge, bare coder/websocket) in turn, RUNS times interleaved, then
# medians, spread and ratios (sss-bench -report). Loopback only; every run
# is bounded in time.
#
#   bench/run.sh                    # defaults below
#   RUNS=5 SUBS=2000 bench/run.sh
#   PIN=1 bench/run.sh              # server on CPU 0, load tool on CPU 1
#   SCENARIOS=fanout,ask TARGETS="sss centrifuge" bench/run.sh
#   SSS_BEFORE=/tmp/sss-old TARGETS="sss sss-before centrifuge bare" bench/run.sh
#                                   # an older build of bench/sss, side by side
#
# JSON lines go to $OUT (default: a temporary file, named at the end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

RUNS=${RUNS:-3}
SUBS=${SUBS:-1000}
MSGS=${MSGS:-200}
RATE=${RATE:-10}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-2000}
CLIENTS=${CLIENTS:-100}
SCENARIOS=${SCENARIOS:-fanout,paced,ask,idle}
TARGETS=${TARGETS:-sss centrifuge bare}
PIN=${PIN:-0}
OUT=${OUT:-$(mktemp /tmp/sss-bench.XXXXXX.jsonl)}

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/sss-bench" ../cmd/sss-bench
go build -o "$bin/" ./sss ./centrifuge ./bare

server_pin=() client_pin=()
if [[ $PIN == 1 ]]; then
	server_pin=(taskset -c 0)
	client_pin=(taskset -c 1)
fi

declare -A port=([sss]=8401 [centrifuge]=8402 [bare]=8403 [sss-before]=8404)
declare -A proto=([sss]=sss [centrifuge]=centrifuge [bare]=bare [sss-before]=sss)
declare -A server=([sss]=$bin/sss [centrifuge]=$bin/centrifuge [bare]=$bin/bare [sss-before]=${SSS_BEFORE:-})
for run in $(seq "$RUNS"); do
	for t in $TARGETS; do
		echo "== run $run: $t" >&2
		"${server_pin[@]}" "${server[$t]}" -addr "127.0.0.1:${port[$t]}" &
		pid=$!
		# The load tool starts once the control API answers, and bounds
		# the whole run.
		"${client_pin[@]}" "$bin/sss-bench" -proto "${proto[$t]}" -target "$t" -pid "$pid" \
			-url "ws://127.0.0.1:${port[$t]}/ws" -wait \
			-scenario "$SCENARIOS" -subs "$SUBS" -msgs "$MSGS" -rate "$RATE" \
			-duration "$DURATION" -conns "$CONNS" -clients "$CLIENTS" \
			-timeout 5m >>"$OUT" || { kill "$pid"; wait "$pid" || true; exit 1; }
		kill "$pid"
		wait "$pid" || true
	done
done
echo "results: $OUT" >&2
"$bin/sss-bench" -report "$OUT"

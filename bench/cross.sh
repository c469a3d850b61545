#!/usr/bin/env bash
# The cross scenario side by side: two instances of a target on one Redis
# (sss: Redis + a MongoDB-wire server, its mongoredis scaler; centrifuge:
# its Redis broker), subscribers on the second, publications into the
# first. Reports the receiving instance's CPU per delivery and Redis's CPU
# per publication. Redis and FerretDB run in containers this script starts
# (images of integration/images/build.sh), on loopback ports, and removes.
#
#   bench/cross.sh                  # RUNS=3 SUBS=1000 MSGS=500
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

RUNS=${RUNS:-3}
SUBS=${SUBS:-1000}
MSGS=${MSGS:-500}
TARGETS=${TARGETS:-sss centrifuge}
REDIS_IMAGE=${SSS_REDIS_IMAGE:-sss-test/redis:7}
MONGO_IMAGE=${SSS_MONGO_IMAGE:-sss-test/ferretdb:1.24}
OUT=${OUT:-$(mktemp /tmp/sss-bench-cross.XXXXXX.jsonl)}

bin=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	docker rm -f sssbench-redis sssbench-mongo >/dev/null 2>&1 || true
	rm -rf "$bin"
}
trap cleanup EXIT
go build -o "$bin/sss-bench" ../cmd/sss-bench
go build -o "$bin/" ./sss ./centrifuge

docker rm -f sssbench-redis sssbench-mongo >/dev/null 2>&1 || true
docker run -d --name sssbench-redis -p 127.0.0.1:16379:6379 "$REDIS_IMAGE" >/dev/null
docker run -d --name sssbench-mongo -p 127.0.0.1:17017:27017 "$MONGO_IMAGE" >/dev/null
redis_pid=$(docker inspect -f '{{.State.Pid}}' sssbench-redis)
sleep 2

declare -A args=(
	[sss]="-redis 127.0.0.1:16379 -mongo mongodb://127.0.0.1:17017"
	[centrifuge]="-redis 127.0.0.1:16379"
)
for run in $(seq "$RUNS"); do
	for t in $TARGETS; do
		echo "== run $run: $t (cross)" >&2
		# shellcheck disable=SC2086
		"$bin/$t" -addr 127.0.0.1:8411 ${args[$t]} &
		a=$!
		# shellcheck disable=SC2086
		"$bin/$t" -addr 127.0.0.1:8412 ${args[$t]} &
		b=$!
		pids=("$a" "$b")
		timeout 30 bash -c 'until curl -sf http://127.0.0.1:8412/stats >/dev/null; do sleep 0.1; done'
		"$bin/sss-bench" -proto "$t" -target "$t" -pid "$a" -wait \
			-url ws://127.0.0.1:8411/ws -cross-url ws://127.0.0.1:8412/ws -cross-pid "$b" \
			-redis-pid "$redis_pid" -scenario cross -subs "$SUBS" -msgs "$MSGS" \
			-timeout 3m >>"$OUT"
		kill "$a" "$b"
		wait "$a" "$b" || true
		pids=()
		# The same fan-out on one instance (in-memory), for the ratio.
		"$bin/$t" -addr 127.0.0.1:8413 &
		a=$!
		pids=("$a")
		"$bin/sss-bench" -proto "$t" -target "$t" -pid "$a" -wait \
			-url ws://127.0.0.1:8413/ws -scenario fanout -subs "$SUBS" -msgs "$MSGS" \
			-timeout 3m >>"$OUT"
		kill "$a"
		wait "$a" || true
		pids=()
	done
done
echo "results: $OUT" >&2
"$bin/sss-bench" -report "$OUT"

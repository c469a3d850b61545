#!/usr/bin/env bash
# Runs every test the way CI does: vet, the race-enabled tests of every
# package (integration tests against Redis, a MongoDB-wire server and NATS in
# containers included), the browser tests in Chromium (browsertest/), and
# short fuzzing of the frame decoder and of what the server writes.
#
# Without a container registry, the integration images are built offline
# first (integration/images/build.sh). With one, set SSS_OFFLINE_IMAGES=0 to
# pull the official images instead, or SSS_REDIS_IMAGE / SSS_MONGO_IMAGE /
# SSS_NATS_IMAGE to pick your own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1

if [[ ${SSS_OFFLINE_IMAGES:-1} == 1 && -z ${SSS_REDIS_IMAGE:-} && -z ${SSS_MONGO_IMAGE:-} && -z ${SSS_NATS_IMAGE:-} ]] \
	&& docker info >/dev/null 2>&1; then
	eval "$(bash integration/images/build.sh)"
elif [[ -z ${SSS_SERVER_IMAGE:-} ]] && docker info >/dev/null 2>&1; then
	# Your own Redis/MongoDB/NATS images: sss-server's, which has no
	# official image, is still built from this checkout for the failover suite.
	eval "$(bash integration/images/build.sh server)"
fi

go vet ./...
# The load tool and the side-by-side bench (bench/, a module of its own so
# that centrifuge never reaches users) are built, not run: bench/run.sh
# runs the comparison. -mod=mod: bench/ follows sss through a replace, so
# a dependency sss adds or upgrades must not fail CI until bench/go.mod is
# tidied too.
go build -o /dev/null ./cmd/sss-bench
(cd bench && go vet -mod=mod ./... && go build -mod=mod ./...)
go test -race -count=1 -timeout 20m $(go list ./... | grep -v /integration)
# Integration tests verbosely, so the log shows each one that ran or
# skipped; everything they printed is shown if they fail.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if go test -race -count=1 -timeout 20m -v ./integration/ >"$log" 2>&1; then
	grep -E '^\s*--- |^ok' "$log"
else
	cat "$log"
	exit 1
fi
# Browser tests: Chromium, headless, driven by chromedp against real
# servers (the JS client, the chat example). They are a module of their own
# (browsertest/), so that chromedp is no dependency of sss. Without Chromium
# they skip, unless SSS_REQUIRE_BROWSER=1 (CI). Verbose, so the log shows
# each test and where the screenshots went.
if (cd browsertest && go vet ./... && go test -race -count=1 -timeout 10m -v ./...) >"$log" 2>&1; then
	grep -E '^\s*--- |^ok|screenshot|skipped' "$log"
else
	cat "$log"
	exit 1
fi
go test -run '^$' -fuzz '^FuzzDecodeFrame$' -fuzztime "${SSS_FUZZTIME:-10s}" .
go test -run '^$' -fuzz '^FuzzOutputFrames$' -fuzztime "${SSS_FUZZTIME:-10s}" .
go test -run '^$' -fuzz '^FuzzDecodeFast$' -fuzztime "${SSS_FUZZTIME:-10s}" .
go test -run '^$' -fuzz '^FuzzCompactJSON$' -fuzztime "${SSS_FUZZTIME:-10s}" .

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
fi

go vet ./...
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

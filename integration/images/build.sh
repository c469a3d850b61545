#!/usr/bin/env bash
# Builds the two local images the integration tests use when no container
# registry is reachable:
#
#   sss-test/redis:7        redis-server 7.0 from Debian's redis-tools package
#                           (bookworm's redis-check-rdb is the real server and
#                           acts as redis-server when invoked under that name)
#   sss-test/ferretdb:1.24  FerretDB v1.24.0 (MongoDB wire protocol) with its
#                           SQLite backend, a static binary in a scratch image
#   sss-test/sss-server:dev cmd/sss-server of this checkout, a static binary
#                           in a scratch image (what the failover suite runs)
#   sss-test/nats:2         nats-server v2.15.2 (with JetStream), a static
#                           binary in a scratch image, run with -js -sd /data
#
# Idempotent: an image whose tag already exists is not rebuilt unless FORCE=1,
# except sss-server's, built from the current source every time (Docker's
# cache makes an unchanged binary cheap).
# Progress goes to stderr; stdout gets only the export lines, so
#
#   eval "$(bash integration/images/build.sh)"
#
# builds what is missing and points the tests at the local images;
# `build.sh server` builds only the sss-server image (it has no official
# image to pull: the failover suite needs it whatever other images you use).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

REDIS_IMAGE=${SSS_REDIS_IMAGE_TAG:-sss-test/redis:7}
MONGO_IMAGE=${SSS_MONGO_IMAGE_TAG:-sss-test/ferretdb:1.24}
SERVER_IMAGE=${SSS_SERVER_IMAGE_TAG:-sss-test/sss-server:dev}
NATS_IMAGE=${SSS_NATS_IMAGE_TAG:-sss-test/nats:2}
FORCE=${FORCE:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'build.sh: %s\n' "$*" >&2; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

# drop_replaced removes the image a FORCE=1 rebuild untagged, so rebuilding
# does not pile up dangling images. It is left alone if a container uses it.
drop_replaced() {
	local tag=$1 old=$2
	if [[ -n $old && $old != "$(image_id "$tag")" ]]; then
		docker rmi "$old" >/dev/null 2>&1 || true
	fi
}

needs_build() {
	if [[ $FORCE == 1 ]] || ! image_exists "$1"; then
		return 0
	fi
	log "$1 exists, skipping (FORCE=1 rebuilds)"
	return 1
}

# smoke_check runs the image once (no published ports) and waits for the log
# line the tests will wait for, so a broken image fails here and not in a test.
smoke_check() {
	local image=$1 want=$2 id i
	id=$(docker run -d "$image")
	for ((i = 0; i < 50; i++)); do
		if docker logs "$id" 2>&1 | grep -q "$want"; then
			docker rm -f "$id" >/dev/null
			log "$image OK: logged \"$want\""
			return 0
		fi
		sleep 0.2
	done
	log "$image did not log \"$want\" within 10s; its logs:"
	docker logs "$id" >&2 || true
	docker rm -f "$id" >/dev/null
	return 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

build_redis() {
	local server=/usr/bin/redis-check-rdb rootfs=$tmp/redis-rootfs lib
	if [[ ! -x $server ]]; then
		log "installing redis-tools"
		if ! apt-get install -y --no-install-recommends redis-tools >&2; then
			apt-get update >&2
			apt-get install -y --no-install-recommends redis-tools >&2
		fi
	fi

	mkdir -p "$rootfs"/{usr/local/bin,etc,data,tmp}
	chmod 1777 "$rootfs/tmp"
	cp "$server" "$rootfs/usr/local/bin/redis-server"

	# Copy each library to the path ldd resolved it to (dereferencing
	# symlinks): the dynamic loader falls back to those system directories
	# when there is no ld.so.cache.
	while read -r lib; do
		mkdir -p "$rootfs$(dirname "$lib")"
		cp -L "$lib" "$rootfs$lib"
	done < <(ldd "$server" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
	mkdir -p "$rootfs/lib64"
	cp -L /lib64/ld-linux-x86-64.so.2 "$rootfs/lib64/"

	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

	log "importing $REDIS_IMAGE"
	tar -C "$rootfs" -c . | docker import \
		--change 'ENTRYPOINT ["/usr/local/bin/redis-server"]' \
		--change 'CMD ["--protected-mode","no","--save","","--appendonly","no"]' \
		--change 'WORKDIR /data' \
		--change 'EXPOSE 6379' \
		- "$REDIS_IMAGE" >/dev/null
	smoke_check "$REDIS_IMAGE" "Ready to accept connections"
}

build_ferretdb() {
	local ctx=$tmp/ferretdb-ctx go=go
	command -v go >/dev/null || go=/usr/local/go/bin/go
	mkdir -p "$ctx/data" "$ctx/tmp"

	# The binary is built with the host's Go: no base image can be pulled, so
	# a multi-stage build is impossible. CGO_ENABLED=0 works because FerretDB
	# uses modernc.org/sqlite, a pure-Go SQLite.
	log "building ferretdb binary (first build takes about a minute)"
	(cd "$here/ferretdb" && CGO_ENABLED=0 "$go" build -trimpath -ldflags='-s -w' -o "$ctx/ferretdb" .)

	log "building $MONGO_IMAGE"
	# DOCKER_BUILDKIT=0: the engine is 20.10 and buildx is not installed.
	DOCKER_BUILDKIT=0 docker build -q -f "$here/ferretdb/Dockerfile" -t "$MONGO_IMAGE" "$ctx" >/dev/null
	smoke_check "$MONGO_IMAGE" "Listening on TCP"
}

build_nats() {
	local ctx=$tmp/nats-ctx go=go
	command -v go >/dev/null || go=/usr/local/go/bin/go
	mkdir -p "$ctx/data" "$ctx/tmp"
	log "building nats-server binary (first build takes about a minute)"
	(cd "$here/nats" && CGO_ENABLED=0 "$go" build -trimpath -ldflags='-s -w' -o "$ctx/nats-server" .)
	log "building $NATS_IMAGE"
	DOCKER_BUILDKIT=0 docker build -q -f "$here/nats/Dockerfile" -t "$NATS_IMAGE" "$ctx" >/dev/null
	smoke_check "$NATS_IMAGE" "Server is ready"
}

build_server() {
	local ctx=$tmp/server-ctx go=go
	command -v go >/dev/null || go=/usr/local/go/bin/go
	mkdir -p "$ctx"
	log "building sss-server binary"
	(cd "$here/../.." && CGO_ENABLED=0 "$go" build -trimpath -ldflags='-s -w' -o "$ctx/sss-server" ./cmd/sss-server)
	log "building $SERVER_IMAGE"
	DOCKER_BUILDKIT=0 docker build -q -f "$here/sss-server/Dockerfile" -t "$SERVER_IMAGE" "$ctx" >/dev/null
	# No smoke run: the failover suite waits for its "listening" line.
}

if [[ ${1:-all} == server ]]; then
	old=$(image_id "$SERVER_IMAGE")
	build_server
	drop_replaced "$SERVER_IMAGE" "$old"
	printf 'export SSS_SERVER_IMAGE=%s\n' "$SERVER_IMAGE"
	exit 0
fi

if needs_build "$REDIS_IMAGE"; then
	old=$(image_id "$REDIS_IMAGE")
	build_redis
	drop_replaced "$REDIS_IMAGE" "$old"
fi
if needs_build "$MONGO_IMAGE"; then
	old=$(image_id "$MONGO_IMAGE")
	build_ferretdb
	drop_replaced "$MONGO_IMAGE" "$old"
fi

if needs_build "$NATS_IMAGE"; then
	old=$(image_id "$NATS_IMAGE")
	build_nats
	drop_replaced "$NATS_IMAGE" "$old"
fi

old=$(image_id "$SERVER_IMAGE")
build_server
drop_replaced "$SERVER_IMAGE" "$old"

printf 'export SSS_REDIS_IMAGE=%s\n' "$REDIS_IMAGE"
printf 'export SSS_MONGO_IMAGE=%s\n' "$MONGO_IMAGE"
printf 'export SSS_SERVER_IMAGE=%s\n' "$SERVER_IMAGE"
printf 'export SSS_NATS_IMAGE=%s\n' "$NATS_IMAGE"

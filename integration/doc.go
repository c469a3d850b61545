// Package integration holds sss's integration tests: they run real Redis and
// MongoDB-wire servers in containers through testcontainers-go.
//
// Without a container registry, build local images first with
// integration/images/build.sh; see README.md in this directory.
package integration

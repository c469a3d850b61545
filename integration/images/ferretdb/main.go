// Command ferretdb is a tiny MongoDB-wire server for sss integration tests:
// FerretDB v1 embedded with its SQLite backend, built as a static binary so
// it fits in a FROM scratch image that can be built with no registry.
//
// It lives in its own Go module so that FerretDB's large dependency tree never
// enters the root module's go.mod.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "0.0.0.0:27017", "TCP address to listen on")
	dataDir := flag.String("data", "/data/", "directory holding the SQLite database files")
	flag.Parse()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	if err := run(logger, *listen, *dataDir); err != nil {
		logger.Error("ferretdb failed", "err", err)
		os.Exit(1)
	}
}

func run(logger *slog.Logger, listen, dataDir string) error {
	if dataDir == "" {
		return errors.New("empty data directory")
	}

	// FerretDB's SQLite backend requires an existing directory, and a scratch
	// image has none unless someone creates it. An in-memory SQLite database
	// (mode=memory) is not an option: updates hang with it.
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}

	// Docker stops a container with SIGTERM. As PID 1 a process without a
	// handler ignores it, so without this `docker stop` would wait for its
	// timeout and then SIGKILL us.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// New binds the listener and logs "Listening on TCP <addr>...", which is
	// the line integration tests wait for.
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: "file:" + dataDir,
	})
	if err != nil {
		return fmt.Errorf("create ferretdb: %w", err)
	}

	if err := f.Run(ctx); err != nil {
		return fmt.Errorf("run ferretdb: %w", err)
	}

	logger.Info("ferretdb stopped")

	return nil
}

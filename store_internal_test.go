package sss

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"

	"github.com/superscaled/sss/scaler"
)

// failingStore fails every write: with the context's error once it is
// done, otherwise with err.
type failingStore struct {
	scaler.SessionStore
	err error
}

func (f failingStore) AddSubscription(ctx context.Context, _ string, _ scaler.StoredSubscription) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return f.err
}

// warnLog keeps the messages logged at Warn and above.
type warnLog struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnLog) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, r.Message)
	return nil
}
func (w *warnLog) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnLog) WithGroup(string) slog.Handler      { return w }

// A write the writer's own stopping cuts short (shutdown) is put back and
// is no store failure; a write the store refuses is one: counted, and
// logged once.
func TestStoreWriteFailures(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stopped  bool
		failures uint64
	}{
		{"cut by the writer stopping", true, 0},
		{"refused by the store", false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := &warnLog{}
			s, err := New(WithLogger(slog.New(log)))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			w := newStoreWriter(s, failingStore{err: errors.New("store down")})
			ctx, cancel := context.WithCancel(context.Background())
			if tc.stopped {
				cancel()
			}
			defer cancel()
			sc := &sessionChanges{subs: map[string]subDelta{"news": {add: true}}}
			if w.write(ctx, "s1", sc, func() {}) {
				t.Fatal("the write succeeded")
			}
			if n := s.stats.scalerErrors.Load(); n != tc.failures {
				t.Errorf("%d scaler errors counted, want %d", n, tc.failures)
			}
			if logged := len(log.msgs) > 0; logged != (tc.failures > 0) {
				t.Errorf("warnings %q", log.msgs)
			}
			if w.size() == 0 {
				t.Error("the failed write's changes were not put back")
			}
		})
	}
}

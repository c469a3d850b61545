package sss

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The pool keeps at most maxIdleWorkers goroutines waiting, hands them the
// next tasks, and ends them at stop; a task run after stop still runs.
func TestWorkers(t *testing.T) {
	var w workers
	release := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 * maxIdleWorkers {
		wg.Add(1)
		w.run(func() { defer wg.Done(); <-release })
	}
	close(release)
	wg.Wait()
	waitFor(t, "the workers to wait", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.idle) == maxIdleWorkers
	})
	waitFor(t, "the others to end", func() bool { return countWorkers() == maxIdleWorkers })
	done := make(chan struct{})
	w.run(func() { close(done) })
	<-done
	if n := countWorkers(); n != maxIdleWorkers {
		t.Fatalf("%d worker goroutines after one more task, want %d (reused)", n, maxIdleWorkers)
	}
	w.stop()
	waitFor(t, "the workers to end", func() bool { return countWorkers() == 0 })
	done = make(chan struct{})
	w.run(func() { close(done) })
	<-done
}

func countWorkers() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "sss.(*workers).work(")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

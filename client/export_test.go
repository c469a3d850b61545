package client

import "time"

// WithBackoffObserver calls f with each reconnection delay as it is drawn.
func WithBackoffObserver(f func(time.Duration)) Option {
	return func(o *options) error { o.backoffDrawn = f; return nil }
}

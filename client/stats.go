package client

import "sync/atomic"

// Stats counts what the client did to keep its channels exact.
type Stats struct {
	// Reconnects counts successful reconnections.
	Reconnects uint64
	// Recovered counts channels caught up exactly after a reconnect.
	Recovered uint64
	// Gaps counts channels that could not be: recovered false after a
	// reconnect, or a publication from an unexpected epoch.
	Gaps uint64
	// Duplicates counts publications dropped because their offset was not
	// past their channel's position. A server that keeps its promise sends
	// none.
	Duplicates uint64
}

type stats struct {
	reconnects, recovered, gaps, duplicates atomic.Uint64
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		Reconnects: c.stats.reconnects.Load(),
		Recovered:  c.stats.recovered.Load(),
		Gaps:       c.stats.gaps.Load(),
		Duplicates: c.stats.duplicates.Load(),
	}
}

package sss

import "sync/atomic"

// Stats is a snapshot of a server's counters since it started.
type Stats struct {
	Connections   int64  // open now
	Accepted      uint64 // connections accepted in all
	Subscriptions int64  // client subscriptions held now (user/session channels excluded)
	Channels      int    // streams with local subscribers now (user/session included)
	FramesIn      uint64 // WebSocket messages read
	FramesOut     uint64 // WebSocket messages written (each may batch frames)
	BadFrames     uint64 // frames refused as malformed
	Published     uint64 // publications accepted by the scaler from this server
	Delivered     uint64 // stream deliveries received from the scaler
	Asks          uint64 // client asks handled
	Tells         uint64 // client tells handled
	Dropped       uint64 // frames dropped for lossy channels
	SlowConsumers uint64 // connections closed for overflowing their queue
	Panics        uint64 // handler or parser panics recovered
	ScalerErrors  uint64 // failed scaler or session store calls
	Gaps          uint64 // jumps in a stream's offsets: deliveries the scaler lost, repaired from history
	StoreBacklog  int    // session store changes waiting to be written (the store is slow or down)
	StoreDropped  uint64 // session store changes dropped because the backlog was full
}

type counters struct {
	connections                         atomic.Int64
	subscriptions                       atomic.Int64
	accepted, framesIn, framesOut       atomic.Uint64
	badFrames, published, delivered     atomic.Uint64
	asks, tells, dropped, slowConsumers atomic.Uint64
	panics, scalerErrors, gaps          atomic.Uint64
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	var store *storeWriter
	if s.joined() != nil {
		store = s.store // set before the node is published
	}
	return Stats{
		Connections:   c.connections.Load(),
		Accepted:      c.accepted.Load(),
		Subscriptions: c.subscriptions.Load(),
		Channels:      s.hub.streams(),
		FramesIn:      c.framesIn.Load(),
		FramesOut:     c.framesOut.Load(),
		BadFrames:     c.badFrames.Load(),
		Published:     c.published.Load(),
		Delivered:     c.delivered.Load(),
		Asks:          c.asks.Load(),
		Tells:         c.tells.Load(),
		Dropped:       c.dropped.Load(),
		SlowConsumers: c.slowConsumers.Load(),
		Panics:        c.panics.Load(),
		ScalerErrors:  c.scalerErrors.Load(),
		Gaps:          c.gaps.Load(),
		StoreBacklog:  store.size(),
		StoreDropped:  store.droppedCount(),
	}
}

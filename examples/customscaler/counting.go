package main

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/superscaled/sss/scaler"
)

// CountingScaler wraps another scaler.Scaler and counts what goes through
// it: publications and node-to-node messages, out and in. It has the shape
// of any middleware scaler (metrics, tracing, fault injection): wrap Join,
// the Node it returns, and the Handler passed to it.
type CountingScaler struct {
	inner scaler.Scaler
	log   *slog.Logger

	Published atomic.Uint64 // publications the inner scaler accepted
	Delivered atomic.Uint64 // deliveries handed to the nodes' handlers
	Sent      atomic.Uint64 // node messages the inner scaler accepted
	Received  atomic.Uint64 // node messages handed to the nodes' handlers
}

// NewCountingScaler wraps inner, logging each publication and node message
// to log at debug level.
func NewCountingScaler(inner scaler.Scaler, log *slog.Logger) *CountingScaler {
	return &CountingScaler{inner: inner, log: log}
}

// Join implements scaler.Scaler.
func (s *CountingScaler) Join(ctx context.Context, nodeID string, h scaler.Handler) (scaler.Node, error) {
	n, err := s.inner.Join(ctx, nodeID, &countingHandler{h: h, s: s})
	if err != nil {
		return nil, err // as is: callers test it with errors.Is
	}
	return withOptional(&countingNode{Node: n, s: s, id: nodeID}, n), nil
}

// countingNode wraps the Broker methods it counts. Embedding scaler.Node
// forwards the others (Subscribe, Unsubscribe, Close) but promotes only the
// methods of scaler.Node: the optional interfaces the inner node may have
// are lost here and added back by withOptional.
type countingNode struct {
	scaler.Node
	s  *CountingScaler
	id string
}

func (n *countingNode) Publish(ctx context.Context, pub *scaler.Publication) error {
	if err := n.Node.Publish(ctx, pub); err != nil {
		return err
	}
	n.s.Published.Add(1)
	n.s.log.Debug("publish", "node", n.id, "channel", pub.Channel, "event", pub.Event)
	return nil
}

func (n *countingNode) Send(ctx context.Context, nodeID string, msg []byte) error {
	if err := n.Node.Send(ctx, nodeID, msg); err != nil {
		return err
	}
	n.s.Sent.Add(1)
	n.s.log.Debug("send", "from", n.id, "to", nodeID, "bytes", len(msg))
	return nil
}

// withOptional returns w with exactly the optional interfaces of inner. The
// server inspects the Node with type assertions: a wrapper that always
// implemented SessionStore would claim persistence the backend lacks, and
// one that never did would silently switch it off. The anonymous structs
// promote w's methods and those of the forwarded interfaces.
func withOptional(w *countingNode, inner scaler.Node) scaler.Node {
	store, isStore := inner.(scaler.SessionStore)
	hist, isHist := inner.(scaler.History)
	switch {
	case isStore && isHist:
		return struct {
			*countingNode
			scaler.SessionStore
			scaler.History
		}{w, store, hist}
	case isStore:
		return struct {
			*countingNode
			scaler.SessionStore
		}{w, store}
	case isHist:
		return struct {
			*countingNode
			scaler.History
		}{w, hist}
	}
	return w
}

// countingHandler counts what the inner scaler hands to a node, then passes
// it on unchanged (Offset and Epoch included). Like every Handler it must
// not block.
type countingHandler struct {
	h scaler.Handler
	s *CountingScaler
}

func (c *countingHandler) HandleDelivery(d scaler.Delivery) {
	c.s.Delivered.Add(1)
	c.h.HandleDelivery(d)
}

func (c *countingHandler) HandleMessage(from string, msg []byte) {
	c.s.Received.Add(1)
	c.h.HandleMessage(from, msg)
}

func (c *countingHandler) HandleMissed(stream string) { c.h.HandleMissed(stream) }

var _ scaler.Scaler = (*CountingScaler)(nil)

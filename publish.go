package sss

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/superscaled/sss/scaler"
)

// Publications. The server's Publish and a client's publish (request.go)
// both end in publishRaw: the scaler numbers the publication and delivers
// it to every node subscribed to one of its streams, this one included,
// where hub.go's deliver fans it out to the local subscribers.

// PublishOption changes how a publication is delivered.
type PublishOption func(*scaler.Publication)

// Except leaves out one connection (by its id): chat's "everyone but the
// sender". It applies to live delivery; a catch-up after that connection
// reconnected (under another id) includes the publication.
func Except(connID string) PublishOption {
	return func(p *scaler.Publication) { p.Except = connID }
}

// Publish sends an event to every subscriber of channel (and of its
// ancestors) on every instance. data is encoded with encoding/json (a
// json.RawMessage is sent as it is, compacted). It returns once the scaler
// accepted the publication; ErrUnavailable (wrapping the backend's error)
// when it could not.
func (s *Server) Publish(ctx context.Context, channel, event string, data any, opts ...PublishOption) error {
	if err := ValidChannel(channel); err != nil {
		return err
	}
	return s.publish(ctx, channel, event, data, opts)
}

// PublishUser publishes to every connection of a user, on every instance.
func (s *Server) PublishUser(ctx context.Context, userID, event string, data any, opts ...PublishOption) error {
	if userID == "" {
		return Errorf(CodeBadRequest, "empty user id")
	}
	return s.publish(ctx, UserChannel(userID), event, data, opts)
}

// PublishSession publishes to every connection of a user's session (an
// empty user id for anonymous connections), on every instance.
func (s *Server) PublishSession(ctx context.Context, userID, sessionID, event string, data any, opts ...PublishOption) error {
	if sessionID == "" {
		return Errorf(CodeBadRequest, "empty session id")
	}
	return s.publish(ctx, SessionChannel(userID, sessionID), event, data, opts)
}

func (s *Server) publish(ctx context.Context, channel, event string, data any, opts []PublishOption) error {
	raw, err := encodeData(data)
	if err != nil {
		return err
	}
	if err := s.checkPayload("data", raw); err != nil {
		return err
	}
	pub := &scaler.Publication{Channel: channel, Event: event, Data: raw}
	for _, o := range opts {
		o(pub)
	}
	return s.publishRaw(ctx, pub)
}

// broadcastChannel carries broadcasts: every node subscribes to it, and
// delivers what comes on it to all its connections (hub.go).
const broadcastChannel = scaler.ReservedPrefix + "all"

// Broadcast sends an event to every connection of the cluster, as a
// publication on the reserved channel "$all" that every connection
// receives. Broadcasts are transient: they reach the connections there at
// the time, without offsets, and are not caught up after a reconnect.
func (s *Server) Broadcast(ctx context.Context, event string, data any, opts ...PublishOption) error {
	raw, err := encodeData(data)
	if err != nil {
		return err
	}
	if err := s.checkPayload("data", raw); err != nil {
		return err
	}
	pub := &scaler.Publication{Channel: broadcastChannel, Event: event, Data: raw, Transient: true}
	for _, o := range opts {
		o(pub)
	}
	return s.publishRaw(ctx, pub)
}

// publishRaw hands a publication to the scaler.
func (s *Server) publishRaw(ctx context.Context, pub *scaler.Publication) error {
	if err := s.usable(); err != nil {
		return err
	}
	node, err := s.join(ctx)
	if err != nil {
		return err
	}
	if pub.Time == 0 {
		pub.Time = time.Now().UnixMilli()
	}
	if err := node.Publish(ctx, pub); err != nil {
		switch {
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return err
		case errors.Is(err, scaler.ErrClosed) && s.closed.Load():
			return ErrServerClosed
		}
		s.stats.scalerErrors.Add(1)
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	s.stats.published.Add(1)
	return nil
}

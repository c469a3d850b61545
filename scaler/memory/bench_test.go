package memory

import (
	"context"
	"testing"

	"github.com/superscaled/sss/scaler"
)

// countHandler counts deliveries and ignores the rest.
type countHandler struct{ n int }

func (h *countHandler) HandleDelivery(scaler.Delivery) { h.n++ }
func (h *countHandler) HandleMessage(string, []byte)   {}
func (h *countHandler) HandleMissed(string)            {}

// BenchmarkPublish is the scaler's share of a publication: numbering it in
// its three streams (a.b.c belongs to a, a.b and a.b.c), keeping it in
// history, and delivering it to the one node subscribed to each.
func BenchmarkPublish(b *testing.B) {
	sc, err := New()
	if err != nil {
		b.Fatal(err)
	}
	defer sc.Close()
	ctx := context.Background()
	h := &countHandler{}
	n, err := sc.Join(ctx, "n1", h)
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	for _, s := range []string{"a", "a.b", "a.b.c"} {
		if err := n.Subscribe(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
	pub := &scaler.Publication{Channel: "a.b.c", Event: "e", Data: []byte(`{"x":1}`)}
	b.ReportAllocs()
	for b.Loop() {
		if err := n.Publish(ctx, pub); err != nil {
			b.Fatal(err)
		}
	}
	if h.n == 0 {
		b.Fatal("nothing delivered")
	}
}

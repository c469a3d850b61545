package browsertest

import (
	"context"
	"testing"

	"github.com/superscaled/sss"
)

// harness opens the JS client's test harness served by in.
func harness(t *testing.T, in *instance) *page {
	t.Helper()
	p := newPage(t, "harness", in.url("/harness.html"))
	p.waitJS("the harness", "window.h && window.h.ready")
	return p
}

func TestJSSmoke(t *testing.T) {
	needBrowser(t)
	in := startInstance(t, newMemory(t), "")
	p := harness(t, in)
	var got struct {
		Status string `json:"status"`
		Echo   any    `json:"echo"`
		User   string `json:"user"`
		Msgs   []any  `json:"msgs"`
	}
	p.eval(jsLines(
		`(async () => {`,
		`  window.c = await h.sss.dial(h.wsURL({user: "ann"}));`,
		`  window.msgs = [];`,
		`  await c.subscribe("news", {messageHandler: (m) => msgs.push(m.data)});`,
		`  return {status: c.status, echo: await c.ask("echo", {x: 1}), user: c.conn.user};`,
		`})()`), &got)
	if err := in.srv.Publish(context.Background(), "news", "article", "hello"); err != nil {
		t.Fatal(err)
	}
	p.waitJS("the publication", "msgs.length === 1")
	t.Logf("%+v", got)
	_ = sss.ErrServerClosed
}

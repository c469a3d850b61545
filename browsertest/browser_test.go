// Package browsertest drives Debian's Chromium, headless, through
// github.com/chromedp/chromedp against real sss.Servers: the browser client
// (client/js/sss.js) and the chat example (examples/chat) as a person, or a
// page's own script, uses them.
//
// It is a module of its own so that chromedp never becomes a dependency of
// the packages users import. scripts/test.sh runs it. Without Chromium the
// tests skip, saying so; SSS_REQUIRE_BROWSER=1 (set by CI) turns that skip
// into a failure. SSS_CHROMIUM names the browser binary when it is not
// chromium or chromium-browser on PATH. Screenshots are written under
// SSS_ARTIFACTS (default: the system's temporary directory), and their path
// is printed in the test log.
package browsertest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"
)

var (
	// browserCtx is the allocator of the one browser process the tests share;
	// each page gets a browser context (a profile) of its own.
	browserCtx context.Context
	// noBrowser says why there is no browser, when there is none.
	noBrowser string
)

func TestMain(m *testing.M) {
	code := run(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func run(m *testing.M) int {
	path, err := findChromium()
	if err != nil {
		if os.Getenv("SSS_REQUIRE_BROWSER") == "1" {
			fmt.Fprintln(os.Stderr, "browsertest: SSS_REQUIRE_BROWSER=1 but", err)
			return 1
		}
		noBrowser = err.Error() + " (apt-get install chromium, or set SSS_CHROMIUM)"
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "sss-chromium-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "browsertest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// /dev/shm is small in containers; Chromium then crashes.
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(dir),
		chromedp.WindowSize(1280, 800),
	)
	defer cancel()
	// Start the browser now, so that a broken install fails here, once.
	first, cancelFirst := chromedp.NewContext(ctx)
	if err := chromedp.Do(first); err != nil {
		cancelFirst()
		fmt.Fprintln(os.Stderr, "browsertest: cannot start", path+":", err)
		return 1
	}
	browserCtx = first
	defer cancelFirst()
	return m.Run()
}

// findChromium returns the browser to drive: SSS_CHROMIUM, or Debian's.
func findChromium() (string, error) {
	if p := os.Getenv("SSS_CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			return "", fmt.Errorf("SSS_CHROMIUM=%s: %v", p, err)
		}
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no chromium on PATH")
}

// needBrowser skips the test when there is no browser.
func needBrowser(t *testing.T) {
	t.Helper()
	if browserCtx == nil {
		t.Skip("browser tests skipped: " + noBrowser)
	}
}

// page is one browser tab, in a browser context of its own: its cookies and
// storage are its own, as another person's browser.
type page struct {
	t    *testing.T
	name string
	ctx  context.Context

	mu      sync.Mutex
	console []string
}

// waitTimeout bounds every wait in a page: generous, since CI machines are
// shared and a loaded one runs Chromium several times slower.
const waitTimeout = 30 * time.Second

// newPage opens url in a new tab of a new browser context. What the page
// writes to its console is logged when the test fails.
func newPage(t *testing.T, name, url string) *page {
	t.Helper()
	needBrowser(t)
	ctx, cancel := chromedp.NewContext(browserCtx, chromedp.WithNewBrowserContext())
	p := &page{t: t, name: name, ctx: ctx}
	msgs := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.console = append(p.console, m.String())
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			p.mu.Lock()
			defer p.mu.Unlock()
			for _, line := range p.console {
				t.Logf("%s console: %s", name, line)
			}
		}
	})
	p.do(chromedp.Navigate(url))
	return p
}

// do runs actions in the page, failing the test on error.
func (p *page) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
}

// eval evaluates a JavaScript expression in the page, awaiting it if it is
// a Promise, and decodes its JSON value into v (unless v is nil).
func (p *page) eval(js string, v any) {
	p.t.Helper()
	if err := p.tryEval(js, v); err != nil {
		p.t.Fatalf("%s: %v\nscript: %s", p.name, err, js)
	}
}

func (p *page) tryEval(js string, v any) error {
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](js, chromedp.EvalAwaitPromise))
	if err != nil {
		return err
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(raw, v)
}

// waitJS waits until a JavaScript expression is truthy in the page.
func (p *page) waitJS(what, js string) {
	p.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		var ok bool
		err := p.tryEval("!!("+js+")", &ok)
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: timed out waiting for %s (%s); last error: %v", p.name, what, js, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// screenshot saves the page as a PNG artifact and logs where.
func (p *page) screenshot(name string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("%s: screenshot: %v", p.name, err)
	}
	dir := os.Getenv("SSS_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "sss-browsertest")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Fatal(err)
	}
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot of %s: %s", p.name, path)
	return path
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// jsLines joins lines of a script, for readability of the tests' scripts.
func jsLines(lines ...string) string { return strings.Join(lines, "\n") }

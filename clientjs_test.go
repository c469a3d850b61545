package sss_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/superscaled/sss"
)

// ClientScript serves the file in the repository, as JavaScript, with
// caching headers that let a browser keep it and revalidate it cheaply.
func TestClientScript(t *testing.T) {
	want, err := os.ReadFile("client/js/sss.js")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(want)
	wantTag := `"` + hex.EncodeToString(sum[:12]) + `"`
	hs := httptest.NewServer(sss.ClientScript())
	defer hs.Close()

	do := func(t *testing.T, method string, header http.Header) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, hs.URL+"/sss.js", nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, vs := range header {
			req.Header[k] = vs
		}
		resp, err := hs.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}

	t.Run("GET", func(t *testing.T) {
		resp, body := do(t, http.MethodGet, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if !bytes.Equal(body, want) {
			t.Fatalf("body is not client/js/sss.js (%d bytes, want %d)", len(body), len(want))
		}
		for k, v := range map[string]string{
			"Content-Type":           "text/javascript; charset=utf-8",
			"Cache-Control":          "no-cache",
			"ETag":                   wantTag,
			"X-Content-Type-Options": "nosniff",
		} {
			if got := resp.Header.Get(k); got != v {
				t.Errorf("%s: %q, want %q", k, got, v)
			}
		}
		if !bytes.Contains(body, []byte("export async function dial(")) || !bytes.Contains(body, []byte("export class Client")) {
			t.Error("the script does not export dial and Client")
		}
	})
	t.Run("revalidation", func(t *testing.T) {
		resp, body := do(t, http.MethodGet, http.Header{"If-None-Match": {wantTag}})
		if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
			t.Fatalf("If-None-Match with the current tag: status %d, %d bytes; want 304 and none", resp.StatusCode, len(body))
		}
		resp, body = do(t, http.MethodGet, http.Header{"If-None-Match": {`"stale"`}})
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
			t.Fatalf("If-None-Match with another tag: status %d, %d bytes; want 200 and the script", resp.StatusCode, len(body))
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		resp, body := do(t, http.MethodHead, nil)
		if resp.StatusCode != http.StatusOK || len(body) != 0 {
			t.Fatalf("status %d, %d bytes; want 200 and no body", resp.StatusCode, len(body))
		}
		if resp.ContentLength != int64(len(want)) {
			t.Errorf("Content-Length %d, want %d", resp.ContentLength, len(want))
		}
		if resp.Header.Get("ETag") != wantTag {
			t.Errorf("ETag %q, want %q", resp.Header.Get("ETag"), wantTag)
		}
	})
	t.Run("POST", func(t *testing.T) {
		resp, _ := do(t, http.MethodPost, nil)
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("status %d, want 405", resp.StatusCode)
		}
		if allow := resp.Header.Get("Allow"); !strings.Contains(allow, "GET") {
			t.Errorf("Allow %q", allow)
		}
	})
}

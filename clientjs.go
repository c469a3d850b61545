package sss

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"time"
)

// clientJS is the browser client, client/js/sss.js: one ES module without
// dependencies or a build step.
//
//go:embed client/js/sss.js
var clientJS []byte

// clientJSTag is the script's ETag: a digest of its content, so it changes
// with every version of the file.
var clientJSTag = func() string {
	sum := sha256.Sum256(clientJS)
	return `"` + hex.EncodeToString(sum[:12]) + `"`
}()

// ClientScript returns an http.Handler that serves the browser client
// (client/js/sss.js, an ES module speaking protocol sss.v1) embedded in this
// package, so that it always matches the server's version. Mount it beside
// the Server:
//
//	mux.Handle("/sss.js", sss.ClientScript())
//	mux.Handle("/ws", srv)
//
// and import it from a page:
//
//	<script type="module">
//	  import { dial } from "/sss.js";
//	  const client = await dial("/ws");
//	</script>
//
// It answers GET and HEAD with the JavaScript content type, an ETag and
// "Cache-Control: no-cache" (browsers keep the file and revalidate it, which
// costs a 304 without a body while it is unchanged); other methods get 405.
func ClientScript() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/javascript; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", clientJSTag)
		h.Set("X-Content-Type-Options", "nosniff")
		// ServeContent answers If-None-Match with 304, HEAD without a body,
		// and ranges.
		http.ServeContent(w, r, "sss.js", time.Time{}, bytes.NewReader(clientJS))
	})
}

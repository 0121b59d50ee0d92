// HTTP/2 without TLS (h2c, prior knowledge) for the fake, beside HTTP/1.1 on the same port.
// OpenRouter serves HTTP/2 (over TLS), so curl multiplexes streams on few connections; this
// lets the proxy do the same against the fake (UPSTREAM_H2C=1). golang.org/x/net is not in
// Go's standard library: bench/procs.py builds this file in only when Debian's
// golang-golang-x-net-dev is installed (GOPATH mode, no module download).
package main

import (
	"net/http"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

func init() {
	// Above curl's own limit of 100 streams per connection, so curl's is the one that holds.
	wrap = func(h http.Handler) http.Handler {
		return h2c.NewHandler(h, &http2.Server{MaxConcurrentStreams: 256})
	}
}

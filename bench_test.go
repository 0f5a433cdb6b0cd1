package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// The micro-benchmarks of the request path: the whole middleware chain per
// route and the JSON writers alone, for an optimisation to show its figure:
//
//	go test -run '^$' -bench 'Handler|Write' -benchmem .
//
// benchWriter stands in for net/http's response: a fresh header map per
// request, as net/http makes one, and a body that goes nowhere, so that the
// figures are the chain's own work and allocations.

// benchWriter is a ResponseWriter that keeps only the status and the size.
type benchWriter struct {
	header http.Header
	status int
	n      int
}

func (w *benchWriter) Header() http.Header { return w.header }

func (w *benchWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *benchWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.n += len(p)
	return len(p), nil
}

// reset prepares w for the next request.
func (w *benchWriter) reset() {
	w.header = make(http.Header)
	w.status, w.n = 0, 0
}

// BenchmarkHandler serves one request at a time through s.handler() with the
// documented defaults (metrics on, LOG_LEVEL=INFO): the liveness route, the
// two dependency checks answered from the reused result, and an unknown path.
func BenchmarkHandler(b *testing.B) {
	cfg := testConfig(b, adminDatabaseURL(), "LOG_LEVEL=INFO")
	s, _ := newTestServer(b, cfg)
	h := s.handler()
	for _, bc := range []struct {
		name, path string
		want       int
	}{
		{"health", "/health", http.StatusOK},
		{"health_db", "/health/db", http.StatusOK},
		{"health_redis", "/health/redis", http.StatusOK},
		{"not_found", "/nope", http.StatusNotFound},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, bc.path, nil)
			w := &benchWriter{}
			w.reset()
			h.ServeHTTP(w, req) // the first check of a dependency runs here, not in the loop
			if w.status != bc.want {
				b.Fatalf("GET %s = %d, want %d", bc.path, w.status, bc.want)
			}
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				h.ServeHTTP(w, req)
			}
			if w.status != bc.want {
				b.Fatalf("GET %s = %d, want %d", bc.path, w.status, bc.want)
			}
		})
	}
}

// BenchmarkWriteJSON writes a small fixed-shape value.
func BenchmarkWriteJSON(b *testing.B) {
	v := indexBody{Service: "ZenSpa Backend", Version: "0.1.0", Status: "running", Docs: "/docs"}
	w := &benchWriter{}
	b.ReportAllocs()
	for b.Loop() {
		w.reset()
		writeJSON(w, http.StatusOK, v)
	}
}

// BenchmarkWriteError writes the 404 envelope, the commonest error.
func BenchmarkWriteError(b *testing.B) {
	s := &server{log: discardLogger()}
	req := httptest.NewRequest(http.MethodGet, "/nope", nil)
	err := newError(codeNotFound, "The requested resource was not found")
	w := &benchWriter{}
	b.ReportAllocs()
	for b.Loop() {
		w.reset()
		w.header[headerRequestID] = []string{"b684f544-73fa-4818-95bd-8252b27be49c"}
		s.writeError(w, req, err)
	}
	if w.status != http.StatusNotFound {
		b.Fatalf("writeError(NOT_FOUND) status = %d, want 404", w.status)
	}
}

package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// The micro-benchmarks of the request path: the whole middleware chain per
// route and the JSON writers alone. BENCHMARKS.md reports them:
//
//	go test -run '^$' -bench 'Handler|Write|HealthBody|RequestID|Timestamp' -benchmem .
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

// BenchmarkWriteErrorInternal writes an unexpected error, which becomes the
// generic INTERNAL_ERROR and is logged (to nowhere).
func BenchmarkWriteErrorInternal(b *testing.B) {
	s := &server{log: discardLogger()}
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	err := errors.New("boom")
	w := &benchWriter{}
	b.ReportAllocs()
	for b.Loop() {
		w.reset()
		s.writeError(w, req, err)
	}
}

// BenchmarkHealthBody is the /health handler alone: the body with its
// timestamp, written with writeJSON.
func BenchmarkHealthBody(b *testing.B) {
	cfg := testConfig(b, adminDatabaseURL(), "LOG_LEVEL=INFO")
	s := &server{cfg: cfg, log: discardLogger()}
	h := s.handleHealth()
	req := httptest.NewRequest(http.MethodGet, "/health", nil)
	w := &benchWriter{}
	b.ReportAllocs()
	for b.Loop() {
		w.reset()
		h.ServeHTTP(w, req)
	}
}

// BenchmarkNewRequestID makes one request ID.
func BenchmarkNewRequestID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = newRequestID()
	}
}

// BenchmarkTimestamp is the response timestamp: formatted for each call, and
// from the clock that formats it once per second.
func BenchmarkTimestamp(b *testing.B) {
	b.Run("format", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = now()
		}
	})
	b.Run("clock", func(b *testing.B) {
		var c clock
		b.ReportAllocs()
		for b.Loop() {
			_ = c.now()
		}
	})
}

// TestHealthEncoderMatchesMarshal checks the hand-written health bodies
// against encoding/json, with names and versions that need escaping.
func TestHealthEncoderMatchesMarshal(t *testing.T) {
	t.Parallel()
	const stamp = "2026-11-22T04:20:40Z"
	for _, name := range []string{
		"ZenSpa Backend", `Zen "Spa" \ Backend`, "<script>&amp;</script>", "tab\tnew\nline\x00",
		"caf\u00e9 \u2028\u2029 \U0001F9D8", "bad \xff\xfe utf-8", "",
	} {
		cfg := config{AppName: name, AppVersion: name + "-1.0"}
		enc := newHealthEncoder(cfg)
		for _, healthy := range []bool{true, false} {
			want, err := json.Marshal(healthBody{Status: statusWord(healthy), Timestamp: stamp, Service: cfg.AppName, Version: cfg.AppVersion})
			if err != nil {
				t.Fatal(err)
			}
			got := append(enc.head(nil, healthy, stamp), '}')
			if string(got) != string(want) {
				t.Errorf("health body for APP_NAME %q, healthy %v =\n%s\nwant\n%s", name, healthy, got, want)
			}
		}
	}

	cfg := config{AppName: "ZenSpa Backend", AppVersion: "0.1.0", RedisHost: `redis"host`, RedisPort: 6379}
	enc := newHealthEncoder(cfg)
	for _, elapsed := range []time.Duration{0, 4 * time.Microsecond, 5 * time.Microsecond, 420 * time.Microsecond,
		1234567 * time.Nanosecond, 2 * time.Second, 1<<63 - 1} {
		for _, err := range []error{nil, errCheckTimeout} {
			res := checkResult{err: err, elapsed: elapsed, at: time.Now()}
			head := healthBody{Status: statusWord(res.ok()), Timestamp: stamp, Service: cfg.AppName, Version: cfg.AppVersion}
			db, _ := json.Marshal(dbHealthBody{head, "postgresql", res.ok(), res.responseTimeMS()})
			got := appendCheck(append(enc.head(nil, res.ok(), stamp), `,"database":"postgresql"`...), res)
			if string(got) != string(db)+"\n" {
				t.Errorf("db body for %v, %v =\n%s\nwant\n%s", elapsed, err, got, db)
			}
			redis, _ := json.Marshal(redisHealthBody{head, cfg.redisAddr(), res.ok(), res.responseTimeMS()})
			addr := appendJSONString([]byte(`,"redis":`), cfg.redisAddr())
			got = appendCheck(append(enc.head(nil, res.ok(), stamp), addr...), res)
			if string(got) != string(redis)+"\n" {
				t.Errorf("redis body for %v, %v =\n%s\nwant\n%s", elapsed, err, got, redis)
			}
		}
	}
	for _, f := range []float64{0, 0.01, 1e-7, -1e-7, 1e21, 123456789.25, -0.5} {
		want, _ := json.Marshal(f)
		if got := appendJSONFloat(nil, f); string(got) != string(want) {
			t.Errorf("appendJSONFloat(%v) = %s, want %s", f, got, want)
		}
	}
}

// TestHealthClockMatchesNow checks the timestamp the clock caches against a
// freshly formatted one, across second boundaries.
func TestHealthClockMatchesNow(t *testing.T) {
	t.Parallel()
	var c clock
	for range 4 {
		before, got, after := now(), c.now(), now()
		if got != before && got != after {
			t.Errorf("clock.now() = %q, want %q or %q", got, before, after)
		}
		time.Sleep(600 * time.Millisecond)
	}
}

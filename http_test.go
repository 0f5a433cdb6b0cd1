package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// The HTTP contract of README.md, checked through the production middleware
// chain: routes and body shapes, the error envelope, panics, security headers,
// request IDs, the access log, CORS, the body limit and the response writers.

// noDatabaseURL points at a port where nothing listens. Tests of the
// middleware, which never need PostgreSQL, use it instead of a database of
// their own; a route that does reach for PostgreSQL answers 503 at once.
const noDatabaseURL = "postgres://zenspa@127.0.0.1:1/unused?sslmode=disable"

// panicSecret is the panic value of the test handlers; it must never reach a
// client.
const panicSecret = "secret panic detail 5d1e"

func TestHTTPRoutes(t *testing.T) {
	t.Parallel()
	requireRedis(t)
	cfg := testConfig(t, newTestDatabase(t))
	s, _ := newTestServer(t, cfg)
	ts := startTestServer(t, s)

	healthKeys := []string{"status", "timestamp", "service", "version"}
	healthy := map[string]any{"status": "healthy", "service": "ZenSpa Backend", "version": buildVersion}
	type route struct {
		path string
		keys []string       // exactly the keys of the body
		want map[string]any // exact values of some of them
	}
	routes := []route{
		{"/", []string{"service", "version", "status", "docs"},
			map[string]any{"service": "ZenSpa Backend", "version": buildVersion, "status": "running", "docs": "/docs"}},
		{"/health", healthKeys, healthy},
		{"/health/live", healthKeys, healthy},
		{"/health/ready", slices.Concat(healthKeys, []string{"checks"}), healthy},
		{"/health/db", slices.Concat(healthKeys, []string{"database", "connected", "response_time_ms"}),
			merged(healthy, map[string]any{"database": "postgresql", "connected": true})},
		{"/health/redis", slices.Concat(healthKeys, []string{"redis", "connected", "response_time_ms"}),
			merged(healthy, map[string]any{"redis": testRedisAddr, "connected": true})},
	}
	for _, r := range slices.Clone(routes) {
		if strings.HasPrefix(r.path, "/health") {
			r.path = "/api/v1" + r.path
			routes = append(routes, r)
		}
	}

	for _, r := range routes {
		t.Run(r.path, func(t *testing.T) {
			t.Parallel()
			what := "GET " + r.path
			status, h, body := get(t, ts.URL, r.path)
			if status != http.StatusOK {
				t.Fatalf("%s status = %d, want 200; body %s", what, status, body)
			}
			if ct := h.Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s Content-Type = %q, want application/json", what, ct)
			}
			m := objectOf(t, what, body)
			wantKeys(t, what, m, r.keys...)
			for k, v := range r.want {
				if m[k] != v {
					t.Errorf("%s %s = %#v, want %#v", what, k, m[k], v)
				}
			}
			if slices.Contains(r.keys, "timestamp") {
				wantTimestamp(t, what, m["timestamp"])
			}
			if slices.Contains(r.keys, "response_time_ms") {
				wantMilliseconds(t, what+" response_time_ms", m["response_time_ms"])
			}
			if slices.Contains(r.keys, "checks") {
				checks, ok := m["checks"].(map[string]any)
				if !ok {
					t.Fatalf("%s checks = %#v, want an object", what, m["checks"])
				}
				wantKeys(t, what+" checks", checks, "database", "redis")
				for _, dep := range []string{"database", "redis"} {
					c, ok := checks[dep].(map[string]any)
					if !ok {
						t.Fatalf("%s checks.%s = %#v, want an object", what, dep, checks[dep])
					}
					wantKeys(t, what+" checks."+dep, c, "status", "response_time_ms")
					if c["status"] != "healthy" {
						t.Errorf("%s checks.%s.status = %#v, want healthy", what, dep, c["status"])
					}
					wantMilliseconds(t, what+" checks."+dep+".response_time_ms", c["response_time_ms"])
				}
			}

			what = "HEAD " + r.path
			status, h, body = do(t, http.MethodHead, ts.URL+r.path, nil, nil)
			if status != http.StatusOK || len(body) != 0 {
				t.Errorf("%s = %d with %d body bytes, want 200 with no body", what, status, len(body))
			}
			if ct := h.Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s Content-Type = %q, want application/json", what, ct)
			}
		})
	}
}

func TestHTTPRoutesUseAppName(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, noDatabaseURL, "APP_NAME=Lotus Spa", "APP_VERSION=2.3.4"))
	ts := startTestServer(t, s)

	// /api/v1/health/db answers 503 here (no PostgreSQL), still with the name.
	for _, path := range []string{"/", "/health", "/health/live", "/api/v1/health/db"} {
		_, _, body := get(t, ts.URL, path)
		m := objectOf(t, "GET "+path, body)
		if m["service"] != "Lotus Spa" || m["version"] != "2.3.4" {
			t.Errorf("GET %s service, version = %#v, %#v, want Lotus Spa, 2.3.4", path, m["service"], m["version"])
		}
	}
}

func TestHTTPUnmatchedRoutes(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, noDatabaseURL))
	ts := startTestServer(t, s)

	type test struct {
		method, path string
		status       int
		code         errorCode
		allow        string
	}
	tests := []test{
		{http.MethodGet, "/nope", http.StatusNotFound, codeNotFound, ""},
		{http.MethodGet, "/nope?x=1", http.StatusNotFound, codeNotFound, ""},
		{http.MethodGet, "/api/v1/nope", http.StatusNotFound, codeNotFound, ""},
		{http.MethodGet, "/api/v1/", http.StatusNotFound, codeNotFound, ""},
		{http.MethodGet, "/health/", http.StatusNotFound, codeNotFound, ""},
		{http.MethodGet, "/health/nope", http.StatusNotFound, codeNotFound, ""},
		{http.MethodPost, "/nope", http.StatusNotFound, codeNotFound, ""},
		{http.MethodDelete, "/api/v1/nope", http.StatusNotFound, codeNotFound, ""},
	}
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		for _, path := range []string{"/health", "/", "/api/v1/health/db"} {
			tests = append(tests, test{method, path, http.StatusMethodNotAllowed, codeMethodNotAllowed, "GET, HEAD"})
		}
	}

	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			t.Parallel()
			what := tc.method + " " + tc.path
			status, h, body := do(t, tc.method, ts.URL+tc.path, nil, nil)
			if status != tc.status {
				t.Fatalf("%s status = %d, want %d; body %s", what, status, tc.status, body)
			}
			if got := h.Get("Allow"); got != tc.allow {
				t.Errorf("%s Allow = %q, want %q", what, got, tc.allow)
			}
			wantErrorEnvelope(t, what, h, body, tc.code)
		})
	}
}

func TestHTTPUncleanPaths(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, noDatabaseURL))
	ts := startTestServer(t, s)

	for _, path := range []string{"//health", "/health/../health", "/./health", "/api/../health", "/nope/../health"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			status, h, body := get(t, ts.URL, path)
			if status < 300 || status > 399 {
				t.Fatalf("GET %s status = %d, want a 3xx redirect; body %s", path, status, body)
			}
			if loc := h.Get("Location"); loc != "/health" {
				t.Errorf("GET %s Location = %q, want /health", path, loc)
			}
			if strings.Contains(string(body), "<a href") {
				t.Errorf("GET %s body = %q, want no HTML", path, body)
			}
			if len(body) > 0 && !json.Valid(body) {
				t.Errorf("GET %s body = %q, want empty or JSON", path, body)
			}
			if got := h.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("GET %s X-Content-Type-Options = %q, want nosniff", path, got)
			}
		})
	}
}

func TestHTTPPanicRecovery(t *testing.T) {
	t.Parallel()
	s, logs := newTestServer(t, testConfig(t, noDatabaseURL, "ENVIRONMENT=production"))
	ts := httptest.NewServer(s.chain(panicky(s.routes())))
	t.Cleanup(ts.Close)

	// serves checks that the server still answers after a panic.
	serves := func(t *testing.T) {
		t.Helper()
		if status, _, body := get(t, ts.URL, "/health"); status != http.StatusOK {
			t.Errorf("GET /health after a panic = %d %s, want 200", status, body)
		}
	}

	t.Run("before writing", func(t *testing.T) {
		t.Parallel()
		id := randomName("panic-")
		status, h, body := do(t, http.MethodGet, ts.URL+"/boom", http.Header{"X-Request-Id": {id}}, nil)
		if status != http.StatusInternalServerError {
			t.Fatalf("GET /boom status = %d, want 500; body %s", status, body)
		}
		m := wantErrorEnvelope(t, "GET /boom", h, body, codeInternal)
		if msg := m["error"].(map[string]any)["message"]; msg != genericInternalMessage {
			t.Errorf("GET /boom message = %#v, want %q", msg, genericInternalMessage)
		}
		if m["request_id"] != id {
			t.Errorf("GET /boom request_id = %#v, want %q", m["request_id"], id)
		}
		if strings.Contains(string(body), panicSecret) || strings.Contains(string(body), "goroutine") {
			t.Errorf("GET /boom body = %s, want no panic value or stack", body)
		}
		line := waitLogLine(t, logs, "panic log of "+id, func(l map[string]any) bool {
			return l["msg"] == "panic in handler" && l["request_id"] == id
		})
		stack, _ := line["stack"].(string)
		if !strings.Contains(stack, "goroutine") || !strings.Contains(stack, "panicky") {
			t.Errorf("panic log stack = %q, want a goroutine stack through panicky", stack)
		}
		if line["level"] != "ERROR" || line["panic"] != panicSecret {
			t.Errorf("panic log level, panic = %#v, %#v, want ERROR, %q", line["level"], line["panic"], panicSecret)
		}
		serves(t)
	})

	// After the status line is out, a second status is impossible: the client
	// must see a broken response, never a clean one.
	for _, path := range []string{"/boom-after-write", "/boom-after-flush"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			resp, err := client.Get(ts.URL + path)
			if err == nil {
				body, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("GET %s status = %d, want the 200 already sent (no second status)", path, resp.StatusCode)
				}
				if rerr == nil {
					t.Errorf("GET %s = complete %d response %q, want a broken connection or truncated body", path, resp.StatusCode, body)
				}
				if strings.Contains(string(body), "INTERNAL_ERROR") {
					t.Errorf("GET %s body = %q, want no error envelope after the status line", path, body)
				}
			}
			waitLogLine(t, logs, "panic log of "+path, func(l map[string]any) bool {
				return l["msg"] == "panic in handler" && l["path"] == path
			})
			serves(t)
		})
	}
}

func TestHTTPSecurityHeaders(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, noDatabaseURL, "CORS_ORIGINS=http://localhost:3000"))
	ts := httptest.NewServer(s.chain(panicky(s.routes())))
	t.Cleanup(ts.Close)

	want := [][2]string{
		{"X-Content-Type-Options", "nosniff"},
		{"X-Frame-Options", "DENY"},
		{"X-XSS-Protection", "1; mode=block"},
		{"Strict-Transport-Security", "max-age=31536000; includeSubDomains"},
		{"X-Permitted-Cross-Domain-Policies", "none"},
		{"Referrer-Policy", "strict-origin-when-cross-origin"},
	}
	preflight := func(origin string) http.Header {
		return http.Header{"Origin": {origin}, "Access-Control-Request-Method": {"GET"}}
	}
	tests := []struct {
		name   string
		method string
		path   string
		header http.Header
		status int
	}{
		{"200", http.MethodGet, "/health", nil, http.StatusOK},
		{"404", http.MethodGet, "/nope", nil, http.StatusNotFound},
		{"405", http.MethodPost, "/health", nil, http.StatusMethodNotAllowed},
		{"500 panic", http.MethodGet, "/boom", nil, http.StatusInternalServerError},
		{"204 preflight", http.MethodOptions, "/health", preflight("http://localhost:3000"), http.StatusNoContent},
		{"403 preflight", http.MethodOptions, "/health", preflight("https://evil.example"), http.StatusForbidden},
		{"503 without PostgreSQL", http.MethodGet, "/health/db", nil, http.StatusServiceUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			status, h, body := do(t, tc.method, ts.URL+tc.path, tc.header, nil)
			if status != tc.status {
				t.Fatalf("%s %s status = %d, want %d; body %s", tc.method, tc.path, status, tc.status, body)
			}
			for _, kv := range want {
				if got := h.Values(kv[0]); len(got) != 1 || got[0] != kv[1] {
					t.Errorf("%s %s %s = %q, want exactly %q", tc.method, tc.path, kv[0], got, kv[1])
				}
			}
		})
	}
}

func TestHTTPRequestID(t *testing.T) {
	t.Parallel()
	s, logs := newTestServer(t, testConfig(t, noDatabaseURL, "ENVIRONMENT=production"))
	ts := startTestServer(t, s)

	long := strings.Repeat("Az9._:-", 19)[:128]
	tests := []struct {
		name string
		in   []string // X-Request-ID values sent; none when nil
		keep bool
	}{
		{"short", []string{"abc"}, true},
		{"128 characters", []string{long}, true},
		{"every allowed punctuation", []string{"a.b_c:d-e"}, true},
		{"absent", nil, false},
		{"empty", []string{""}, false},
		{"129 characters", []string{long + "a"}, false},
		{"space", []string{"a b"}, false},
		{"slash", []string{"a/b"}, false},
		{"unicode", []string{"réq-ü"}, false},
		{"script", []string{"<script>"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var header http.Header
			if tc.in != nil {
				header = http.Header{"X-Request-Id": tc.in}
			}
			status, h, body := do(t, http.MethodGet, ts.URL+"/nope?case="+strings.ReplaceAll(tc.name, " ", "-"), header, nil)
			if status != http.StatusNotFound {
				t.Fatalf("GET /nope status = %d, want 404", status)
			}
			id := h.Get(headerRequestID)
			switch {
			case tc.keep && id != tc.in[0]:
				t.Errorf("X-Request-ID %q answered as %q, want it kept", tc.in[0], id)
			case !tc.keep && !uuidV4.MatchString(id):
				t.Errorf("X-Request-ID %q answered as %q, want a new UUID v4", tc.in, id)
			}
			m := wantErrorEnvelope(t, "GET /nope", h, body, codeNotFound)
			if m["request_id"] != id {
				t.Errorf("body request_id = %#v, want %q", m["request_id"], id)
			}
			line := waitLogLine(t, logs, "access log of "+id, accessLine(id))
			if line["path"] != "/nope" {
				t.Errorf("access log of %q path = %#v, want /nope", id, line["path"])
			}
		})
	}

	t.Run("new IDs differ", func(t *testing.T) {
		t.Parallel()
		_, h1, _ := get(t, ts.URL, "/health")
		_, h2, _ := get(t, ts.URL, "/health")
		a, b := h1.Get(headerRequestID), h2.Get(headerRequestID)
		if !uuidV4.MatchString(a) || a == b {
			t.Errorf("two requests without an ID got %q and %q, want two different UUIDs", a, b)
		}
	})
}

func TestHTTPAccessLog(t *testing.T) {
	t.Parallel()
	s, logs := newTestServer(t, testConfig(t, noDatabaseURL, "ENVIRONMENT=production", "LOG_LEVEL=DEBUG"))
	ts := httptest.NewServer(s.chain(panicky(s.routes())))
	t.Cleanup(ts.Close)

	tests := []struct {
		method, target, path string
		status               int
		level                string
	}{
		{http.MethodGet, "/nope?secret=1", "/nope", http.StatusNotFound, "INFO"},
		{http.MethodPost, "/health", "/health", http.StatusMethodNotAllowed, "INFO"},
		{http.MethodGet, "/", "/", http.StatusOK, "INFO"},
		{http.MethodGet, "/boom", "/boom", http.StatusInternalServerError, "ERROR"},
		{http.MethodGet, "/health", "/health", http.StatusOK, "DEBUG"},
		{http.MethodGet, "/api/v1/health/live", "/api/v1/health/live", http.StatusOK, "DEBUG"},
		// PostgreSQL is not there: a failing probe still logs at DEBUG.
		{http.MethodGet, "/health/db", "/health/db", http.StatusServiceUnavailable, "DEBUG"},
		{http.MethodGet, "/api/v1/health/ready", "/api/v1/health/ready", http.StatusServiceUnavailable, "DEBUG"},
		{http.MethodHead, "/health/live", "/health/live", http.StatusOK, "DEBUG"},
		// Not probes: mistakes on health paths stay visible.
		{http.MethodGet, "/healthz", "/healthz", http.StatusNotFound, "INFO"},
		{http.MethodGet, "/health/nope", "/health/nope", http.StatusNotFound, "INFO"},
		{http.MethodDelete, "/api/v1/health/db", "/api/v1/health/db", http.StatusMethodNotAllowed, "INFO"},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			t.Parallel()
			id := randomName("log-")
			status, _, body := do(t, tc.method, ts.URL+tc.target, http.Header{"X-Request-Id": {id}}, nil)
			if status != tc.status {
				t.Fatalf("%s %s status = %d, want %d", tc.method, tc.target, status, tc.status)
			}
			line := waitLogLine(t, logs, "access log of "+id, accessLine(id))
			want := map[string]any{
				"level": tc.level, "method": tc.method, "path": tc.path,
				"status": float64(tc.status), "bytes": float64(len(body)),
				"client": "127.0.0.1",
			}
			if tc.status == http.StatusInternalServerError || tc.method == http.MethodHead {
				// A panic's line is written while it unwinds, before
				// recoverPanics writes the envelope; a HEAD answer's body is
				// counted as written though net/http drops it.
				delete(want, "bytes")
			}
			for k, v := range want {
				if line[k] != v {
					t.Errorf("access log of %s %s: %s = %#v, want %#v", tc.method, tc.target, k, line[k], v)
				}
			}
			wantMilliseconds(t, "access log duration_ms", line["duration_ms"])
			// One line per request: the handler is done, so all are written.
			if n := len(matching(jsonLogLines(t, logs.String()), accessLine(id))); n != 1 {
				t.Errorf("%s %s logged %d access lines, want 1", tc.method, tc.target, n)
			}
		})
	}
	t.Run("query string never logged", func(t *testing.T) {
		t.Parallel()
		// A token of its own: other subtests log "secret" on purpose.
		get(t, ts.URL, "/nope?qs_token=zz9query")
		get(t, ts.URL, "/health/live?token=zz9query")
		id := randomName("last-")
		do(t, http.MethodGet, ts.URL+"/nope", http.Header{"X-Request-Id": {id}}, nil)
		waitLogLine(t, logs, "access log of "+id, accessLine(id))
		if strings.Contains(logs.String(), "zz9query") {
			t.Errorf("log contains a query string:\n%s", logs)
		}
	})

	t.Run("LOG_LEVEL=INFO hides probes", func(t *testing.T) {
		t.Parallel()
		s, logs := newTestServer(t, testConfig(t, noDatabaseURL, "ENVIRONMENT=production", "LOG_LEVEL=INFO"))
		ts := startTestServer(t, s)
		probe, other := randomName("probe-"), randomName("other-")
		do(t, http.MethodGet, ts.URL+"/health", http.Header{"X-Request-Id": {probe}}, nil)
		do(t, http.MethodGet, ts.URL+"/nope", http.Header{"X-Request-Id": {other}}, nil)
		waitLogLine(t, logs, "access log of "+other, accessLine(other))
		if strings.Contains(logs.String(), probe) {
			t.Errorf("LOG_LEVEL=INFO: GET /health was logged:\n%s", logs)
		}
	})
}

func TestHTTPCORS(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, noDatabaseURL, "CORS_ORIGINS=http://localhost:3000, https://app.example.com"))
	ts := startTestServer(t, s)

	const local, app, evil = "http://localhost:3000", "https://app.example.com", "https://evil.example"
	preflight := func(origin string) http.Header {
		return http.Header{"Origin": {origin}, "Access-Control-Request-Method": {"POST"},
			"Access-Control-Request-Headers": {"content-type"}}
	}
	tests := []struct {
		name    string
		method  string
		path    string
		header  http.Header
		status  int
		allowed string // the origin that must be allowed; "" for none
		code    errorCode
	}{
		{"allowed origin", http.MethodGet, "/health", http.Header{"Origin": {local}}, http.StatusOK, local, ""},
		{"second allowed origin", http.MethodGet, "/health", http.Header{"Origin": {app}}, http.StatusOK, app, ""},
		{"allowed origin, error", http.MethodGet, "/nope", http.Header{"Origin": {app}}, http.StatusNotFound, app, codeNotFound},
		{"other origin", http.MethodGet, "/health", http.Header{"Origin": {evil}}, http.StatusOK, "", ""},
		{"other port", http.MethodGet, "/health", http.Header{"Origin": {"http://localhost:3001"}}, http.StatusOK, "", ""},
		{"no origin", http.MethodGet, "/health", nil, http.StatusOK, "", ""},
		{"preflight", http.MethodOptions, "/health", preflight(local), http.StatusNoContent, local, ""},
		{"preflight, second origin", http.MethodOptions, "/api/v1/anything", preflight(app), http.StatusNoContent, app, ""},
		{"preflight, other origin", http.MethodOptions, "/health", preflight(evil), http.StatusForbidden, "", codeForbidden},
		{"OPTIONS without request method", http.MethodOptions, "/health", http.Header{"Origin": {local}}, http.StatusMethodNotAllowed, local, codeMethodNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			what := tc.method + " " + tc.path + " from " + tc.header.Get("Origin")
			status, h, body := do(t, tc.method, ts.URL+tc.path, tc.header, nil)
			if status != tc.status {
				t.Fatalf("%s status = %d, want %d; body %s", what, status, tc.status, body)
			}
			if tc.code != "" {
				wantErrorEnvelope(t, what, h, body, tc.code)
			}
			if tc.code == codeMethodNotAllowed {
				if allow := h.Get("Allow"); allow != "GET, HEAD" {
					t.Errorf("%s Allow = %q, want GET, HEAD", what, allow)
				}
			}
			if tc.status == http.StatusOK && objectOf(t, what, body)["status"] != "healthy" {
				t.Errorf("%s body = %s, want the health answer", what, body)
			}

			// Every answer varies with Origin, also one to a request without it.
			if !slices.Contains(h.Values("Vary"), "Origin") {
				t.Errorf("%s Vary = %q, want Origin in it", what, h.Values("Vary"))
			}
			if tc.allowed == "" {
				for k := range h {
					if strings.HasPrefix(k, "Access-Control-") {
						t.Errorf("%s has %s: %q, want no CORS header", what, k, h.Values(k))
					}
				}
				return
			}
			wantHeader := map[string]string{
				"Access-Control-Allow-Origin":      tc.allowed,
				"Access-Control-Allow-Credentials": "true",
				"Access-Control-Expose-Headers":    corsExposeHeaders,
			}
			if tc.status == http.StatusNoContent {
				wantHeader["Access-Control-Allow-Methods"] = corsAllowMethods
				wantHeader["Access-Control-Allow-Headers"] = corsAllowHeaders
				wantHeader["Access-Control-Max-Age"] = "600"
				if len(body) != 0 {
					t.Errorf("%s body = %q, want none", what, body)
				}
			}
			for k, v := range wantHeader {
				if got := h.Get(k); got != v {
					t.Errorf("%s %s = %q, want %q", what, k, got, v)
				}
			}
		})
	}

	// What the preflight answer promises, it must keep.
	for _, want := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
		if !slices.Contains(strings.Split(corsAllowMethods, ", "), want) {
			t.Errorf("Access-Control-Allow-Methods = %q, want %s in it", corsAllowMethods, want)
		}
	}
	for _, want := range []string{"Authorization", "Content-Type", "X-Request-ID"} {
		if !slices.Contains(strings.Split(corsAllowHeaders, ", "), want) {
			t.Errorf("Access-Control-Allow-Headers = %q, want %s in it", corsAllowHeaders, want)
		}
	}
}

func TestHTTPBodyLimit(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, noDatabaseURL))
	ts := startTestServer(t, s)
	addr := ts.Listener.Addr().String()

	// A declared Content-Length over the limit is refused unread: only a few
	// body bytes are sent, so a server that waited for the rest would never
	// answer within the bound.
	declared := []struct {
		method, path string
		length       int
		status       int
		code         errorCode
	}{
		{http.MethodPost, "/health", maxBodyBytes + 1, http.StatusRequestEntityTooLarge, codePayloadTooLarge},
		{http.MethodPost, "/nope", 5 << 20, http.StatusRequestEntityTooLarge, codePayloadTooLarge},
		{http.MethodPut, "/api/v1/health/db", 2 << 20, http.StatusRequestEntityTooLarge, codePayloadTooLarge},
		{http.MethodGet, "/health", 1 << 30, http.StatusRequestEntityTooLarge, codePayloadTooLarge},
		// Exactly 1 MiB is allowed: routing happens.
		{http.MethodPost, "/health", maxBodyBytes, http.StatusMethodNotAllowed, codeMethodNotAllowed},
	}
	for _, tc := range declared {
		t.Run(fmt.Sprintf("%s %s Content-Length %d", tc.method, tc.path, tc.length), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			resp, body := rawExchange(t, addr, 5*time.Second, func(w io.Writer) {
				fmt.Fprintf(w, "%s %s HTTP/1.1\r\nHost: zenspa\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"a\":", tc.method, tc.path, tc.length)
			})
			if resp.StatusCode != tc.status {
				t.Fatalf("%s %s with Content-Length %d = %d %s, want %d", tc.method, tc.path, tc.length, resp.StatusCode, body, tc.status)
			}
			wantErrorEnvelope(t, tc.method+" "+tc.path, resp.Header, body, tc.code)
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("%s %s answered after %v, want at once (without the body)", tc.method, tc.path, d)
			}
		})
	}

	t.Run("chunked body over 1 MiB", func(t *testing.T) {
		t.Parallel()
		resp, body := rawExchange(t, addr, 10*time.Second, func(w io.Writer) {
			chunk := strings.Repeat("x", 64<<10)
			fmt.Fprint(w, "POST /health HTTP/1.1\r\nHost: zenspa\r\nTransfer-Encoding: chunked\r\n\r\n")
			for range 17 { // 1 MiB + 64 KiB
				if _, err := fmt.Fprintf(w, "%x\r\n%s\r\n", len(chunk), chunk); err != nil {
					return
				}
			}
			fmt.Fprint(w, "0\r\n\r\n")
		})
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("POST /health with a chunked 1.06 MiB body = %d %s, want 413", resp.StatusCode, body)
		}
		wantErrorEnvelope(t, "chunked POST /health", resp.Header, body, codePayloadTooLarge)
	})

	// Bodies within the limit reach the routes.
	small := strings.Repeat("x", 1<<10)
	for _, tc := range []struct {
		name string
		body io.Reader
	}{
		{"1 KiB body", strings.NewReader(small)},
		{"1 KiB chunked body", struct{ io.Reader }{strings.NewReader(small)}}, // unknown length
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			status, h, body := do(t, http.MethodPost, ts.URL+"/health", nil, tc.body)
			if status != http.StatusMethodNotAllowed {
				t.Fatalf("POST /health with a %s = %d %s, want 405", tc.name, status, body)
			}
			wantErrorEnvelope(t, "POST /health", h, body, codeMethodNotAllowed)
		})
	}
}

func TestHTTPWriteJSON(t *testing.T) {
	t.Parallel()

	t.Run("value", func(t *testing.T) {
		rec := httptest.NewRecorder()
		writeJSON(rec, http.StatusCreated, map[string]any{"name": "lotus", "minutes": 60})
		if rec.Code != http.StatusCreated {
			t.Errorf("writeJSON(201) status = %d, want 201", rec.Code)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("writeJSON Content-Type = %q, want application/json", ct)
		}
		if cl, n := rec.Header().Get("Content-Length"), rec.Body.Len(); cl != fmt.Sprint(n) {
			t.Errorf("writeJSON Content-Length = %q, want %d", cl, n)
		}
		if got := rec.Body.String(); got != `{"minutes":60,"name":"lotus"}`+"\n" {
			t.Errorf("writeJSON body = %q, want the JSON and a newline", got)
		}
	})

	t.Run("unencodable", func(t *testing.T) {
		rec := httptest.NewRecorder()
		rec.Header().Set(headerRequestID, "enc-1")
		writeJSON(rec, http.StatusOK, map[string]any{"ch": make(chan int)})
		if rec.Code != http.StatusInternalServerError {
			t.Fatalf("writeJSON(chan) status = %d, want 500", rec.Code)
		}
		m := wantErrorEnvelope(t, "writeJSON(chan)", rec.Header(), rec.Body.Bytes(), codeInternal)
		if msg := m["error"].(map[string]any)["message"]; msg != genericInternalMessage {
			t.Errorf("writeJSON(chan) message = %#v, want %q", msg, genericInternalMessage)
		}
		if cl, n := rec.Header().Get("Content-Length"), rec.Body.Len(); cl != fmt.Sprint(n) {
			t.Errorf("writeJSON(chan) Content-Length = %q, want %d", cl, n)
		}
	})
}

func TestHTTPWriteSuccess(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	writeSuccess(rec, http.StatusCreated, map[string]any{"id": 7}, "Booking created")
	if rec.Code != http.StatusCreated {
		t.Errorf("writeSuccess(201) status = %d, want 201", rec.Code)
	}
	m := objectOf(t, "writeSuccess", rec.Body.Bytes())
	wantKeys(t, "writeSuccess", m, "status", "data", "message")
	data, _ := m["data"].(map[string]any)
	if m["status"] != "success" || m["message"] != "Booking created" || data["id"] != float64(7) {
		t.Errorf("writeSuccess body = %s, want status success, data {id:7}, message Booking created", rec.Body)
	}
}

func TestHTTPWriteErrorStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code   errorCode
		status int
	}{
		{codeValidation, http.StatusUnprocessableEntity},
		{codeNotFound, http.StatusNotFound},
		{codeMethodNotAllowed, http.StatusMethodNotAllowed},
		{codeUnauthorized, http.StatusUnauthorized},
		{codeForbidden, http.StatusForbidden},
		{codeConflict, http.StatusConflict},
		{codePreconditionFailed, http.StatusPreconditionFailed},
		{codePayloadTooLarge, http.StatusRequestEntityTooLarge},
		{codeUnsupportedMedia, http.StatusUnsupportedMediaType},
		{codeRateLimited, http.StatusTooManyRequests},
		{codeDatabase, http.StatusServiceUnavailable},
		{codeCache, http.StatusServiceUnavailable},
		{codeServiceUnavailable, http.StatusServiceUnavailable},
		{codeInternal, http.StatusInternalServerError},
	}
	if len(tests) != len(statusOf) {
		t.Errorf("the table has %d codes, statusOf %d: keep them in step", len(tests), len(statusOf))
	}
	s := &server{log: discardLogger()}
	for _, tc := range tests {
		t.Run(string(tc.code), func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			rec.Header().Set(headerRequestID, "code-test")
			details := map[string]any{"field": "email"}
			s.writeError(rec, httptest.NewRequest(http.MethodGet, "/", nil),
				&apiError{Code: tc.code, Message: "Something specific about " + string(tc.code), Details: details})
			if rec.Code != tc.status {
				t.Errorf("writeError(%s) status = %d, want %d", tc.code, rec.Code, tc.status)
			}
			m := objectOf(t, "writeError", rec.Body.Bytes())
			e, _ := m["error"].(map[string]any)
			if e["code"] != string(tc.code) {
				t.Errorf("writeError(%s) code = %#v, want %s", tc.code, e["code"], tc.code)
			}
			// INTERNAL_ERROR always says the same thing, whatever it was given.
			wantMessage, wantDetails := "Something specific about "+string(tc.code), any(map[string]any{"field": "email"})
			if tc.code == codeInternal {
				wantMessage, wantDetails = genericInternalMessage, nil
			}
			if e["message"] != wantMessage {
				t.Errorf("writeError(%s) message = %#v, want %q", tc.code, e["message"], wantMessage)
			}
			if fmt.Sprint(e["details"]) != fmt.Sprint(wantDetails) {
				t.Errorf("writeError(%s) details = %#v, want %#v", tc.code, e["details"], wantDetails)
			}
			if m["request_id"] != "code-test" {
				t.Errorf("writeError(%s) request_id = %#v, want code-test", tc.code, m["request_id"])
			}
		})
	}

	t.Run("unknown code", func(t *testing.T) {
		rec := httptest.NewRecorder()
		s.writeError(rec, httptest.NewRequest(http.MethodGet, "/", nil), newError("TEAPOT", "short and stout"))
		if rec.Code != http.StatusInternalServerError {
			t.Errorf("writeError(TEAPOT) status = %d, want 500", rec.Code)
		}
		if strings.Contains(rec.Body.String(), "stout") {
			t.Errorf("writeError(TEAPOT) body = %s, want the generic message", rec.Body)
		}
	})
}

func TestHTTPWriteErrorHidesCause(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		err     error
		status  int
		code    errorCode
		message string
		secret  string // in the log, never in the body
		level   string
	}{
		{"plain error", errors.New("pq: password authentication failed for user secret_user_x"),
			http.StatusInternalServerError, codeInternal, genericInternalMessage, "secret_user_x", "ERROR"},
		{"wrapped plain error", fmt.Errorf("list bookings: %w", errors.New("relation secret_table_q does not exist")),
			http.StatusInternalServerError, codeInternal, genericInternalMessage, "secret_table_q", "ERROR"},
		{"api error with cause", &apiError{Code: codeDatabase, Message: "The database is unavailable, try again later",
			Cause: errors.New("dial tcp 10.9.8.7:5432: secret_host_y refused")},
			http.StatusServiceUnavailable, codeDatabase, "The database is unavailable, try again later", "secret_host_y", "ERROR"},
		{"client error with cause", fmt.Errorf("booking: %w", &apiError{Code: codeValidation, Message: "Invalid input data",
			Cause: errors.New("pq: invalid input syntax secret_value_z")}),
			http.StatusUnprocessableEntity, codeValidation, "Invalid input data", "secret_value_z", "WARNING"},
		{"internal error with a specific message", newError(codeInternal, "secret_message_w went wrong"),
			http.StatusInternalServerError, codeInternal, genericInternalMessage, "secret_message_w", "ERROR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logs := &syncBuffer{}
			s := &server{log: newLogger(logs, "production", slog.LevelDebug)}
			id := randomName("cause-")
			h := requestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				s.writeError(w, r, tc.err)
			}))
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set(headerRequestID, id)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)

			if rec.Code != tc.status {
				t.Errorf("writeError(%v) status = %d, want %d", tc.err, rec.Code, tc.status)
			}
			m := wantErrorEnvelope(t, "writeError", rec.Header(), rec.Body.Bytes(), tc.code)
			if msg := m["error"].(map[string]any)["message"]; msg != tc.message {
				t.Errorf("writeError(%v) message = %#v, want %q", tc.err, msg, tc.message)
			}
			if strings.Contains(rec.Body.String(), tc.secret) {
				t.Errorf("writeError(%v) body = %s, want no internal detail", tc.err, rec.Body)
			}
			lines := matching(jsonLogLines(t, logs.String()), func(l map[string]any) bool {
				e, _ := l["error"].(string)
				return l["request_id"] == id && strings.Contains(e, tc.secret)
			})
			if len(lines) != 1 {
				t.Fatalf("writeError(%v) logged %d lines with the cause and request ID, want 1:\n%s", tc.err, len(lines), logs)
			}
			if lines[0]["level"] != tc.level {
				t.Errorf("writeError(%v) logged at %#v, want %s", tc.err, lines[0]["level"], tc.level)
			}
		})
	}
}

func TestHTTPReadyWhileShuttingDown(t *testing.T) {
	t.Parallel()
	requireRedis(t)
	s, _ := newTestServer(t, testConfig(t, newTestDatabase(t)))
	ts := startTestServer(t, s)

	for _, path := range []string{"/health/ready", "/api/v1/health/ready"} {
		if status, _, body := get(t, ts.URL, path); status != http.StatusOK {
			t.Fatalf("GET %s before shutdown = %d %s, want 200", path, status, body)
		}
	}
	s.shuttingDown.Store(true)
	for _, path := range []string{"/health/ready", "/api/v1/health/ready"} {
		status, _, body := get(t, ts.URL, path)
		if status != http.StatusServiceUnavailable {
			t.Errorf("GET %s while shutting down = %d, want 503", path, status)
		}
		m := objectOf(t, "GET "+path, body)
		db, _ := m["checks"].(map[string]any)["database"].(map[string]any)
		if m["status"] != "unhealthy" || db["status"] != "healthy" {
			t.Errorf("GET %s while shutting down = %s, want status unhealthy with a healthy database", path, body)
		}
	}
	// Liveness is not readiness: the process still serves.
	if status, _, _ := get(t, ts.URL, "/health/live"); status != http.StatusOK {
		t.Errorf("GET /health/live while shutting down = %d, want 200", status)
	}
}

// panicky panics on /boom before writing anything, on /boom-after-write
// after the status line (still buffered) and on /boom-after-flush after the
// status line reached the client; other paths go to next.
func panicky(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/boom":
			w.Header().Set("X-Half-Done", "yes")
			panic(panicSecret)
		case "/boom-after-write", "/boom-after-flush":
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "partial answer")
			if r.URL.Path == "/boom-after-flush" {
				_ = http.NewResponseController(w).Flush()
			}
			panic(panicSecret)
		}
		next.ServeHTTP(w, r)
	})
}

// merged returns a new map with the entries of a and then b.
func merged(a, b map[string]any) map[string]any {
	m := maps.Clone(a)
	maps.Copy(m, b)
	return m
}

// wantMilliseconds fails unless v is a JSON number of milliseconds.
func wantMilliseconds(t testing.TB, what string, v any) {
	t.Helper()
	if ms, ok := v.(float64); !ok || ms < 0 || ms > 60_000 {
		t.Errorf("%s = %#v, want a number of milliseconds", what, v)
	}
}

// jsonLogLines decodes a JSON log (ENVIRONMENT=production), one record per
// line.
func jsonLogLines(t testing.TB, logs string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, line := range strings.Split(logs, "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		lines = append(lines, m)
	}
	return lines
}

// matching returns the lines for which match is true.
func matching(lines []map[string]any, match func(map[string]any) bool) []map[string]any {
	var out []map[string]any
	for _, l := range lines {
		if match(l) {
			out = append(out, l)
		}
	}
	return out
}

// accessLine matches the access-log line of the request with ID id.
func accessLine(id string) func(map[string]any) bool {
	return func(l map[string]any) bool { return l["msg"] == "request" && l["request_id"] == id }
}

// waitLogLine waits up to 5 s for a line of logs that match accepts and
// returns the first. Lines written after the response (the access log is
// written as the handler returns) get there within microseconds.
func waitLogLine(t testing.TB, logs *syncBuffer, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if found := matching(jsonLogLines(t, logs.String()), match); len(found) > 0 {
			return found[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 5s; log:\n%s", what, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rawExchange dials addr, lets write send a request from its own goroutine
// (so that the answer may come while it still writes) and reads one response.
// The whole exchange must end within limit.
func rawExchange(t testing.TB, addr string, limit time.Duration, write func(io.Writer)) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, limit)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	_ = conn.SetDeadline(time.Now().Add(limit))
	written := make(chan struct{})
	go func() {
		defer close(written)
		write(conn)
	}()
	defer func() {
		conn.Close() // ends a writer the server stopped reading
		<-written
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no response from %s within %s: %v", addr, limit, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body from %s: %v", addr, err)
	}
	return resp, body
}

// TestHTTPReadyAtOnceWhileShuttingDown: shutting down, readiness answers 503
// without waiting for a dependency that does not answer, so a balancer
// sees it within its check interval.
func TestHTTPReadyAtOnceWhileShuttingDown(t *testing.T) {
	t.Parallel()
	host, port, _ := net.SplitHostPort(silentListener(t))
	s, _ := newTestServer(t, testConfig(t, newTestDatabase(t), "REDIS_HOST="+host, "REDIS_PORT="+port,
		"HEALTH_CHECK_TIMEOUT=2s", "HEALTH_CACHE_TTL=0"))
	ts := startTestServer(t, s)
	s.shuttingDown.Store(true)
	start := time.Now()
	if status, _, body := get(t, ts.URL, "/health/ready"); status != http.StatusServiceUnavailable {
		t.Errorf("GET /health/ready while shutting down = %d %s, want 503", status, body)
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("GET /health/ready while shutting down took %v with Redis silent, want it at once (well under HEALTH_CHECK_TIMEOUT, 2s)", elapsed)
	}
}

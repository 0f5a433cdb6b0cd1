package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The /metrics contract: what a scrape shows after real traffic, parsed here
// and linted by promtool; the private METRICS_ADDR listener; METRICS_ENABLED;
// and series that random URLs cannot multiply. The benchmarks at the end
// measure the chain with and without the metrics middleware.

func TestMetricsScrape(t *testing.T) {
	t.Parallel()
	requireRedis(t)
	before := time.Now()
	cfg := testConfig(t, newTestDatabase(t), "ENVIRONMENT=production", "APP_VERSION=9.8.7-metrics",
		"DB_POOL_SIZE=3", "DB_MAX_OVERFLOW=4", "HEALTH_CACHE_TTL=1m")
	s, logs := newTestServer(t, cfg)
	ts := startTestServer(t, s)

	// One pooled query, so that the PostgreSQL pool gauges have a connection
	// to show (the health checks use a connection of their own).
	_, err := s.db.exec(context.Background(), "SELECT 1")
	mustf(t, err, "SELECT 1 on the pool")

	randomPath := "/" + randomName("scanner_")
	traffic := []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/health/db", http.StatusOK},
		{http.MethodGet, "/health/db", http.StatusOK},
		{http.MethodGet, "/health/db", http.StatusOK},
		{http.MethodGet, "/api/v1/health/db", http.StatusOK},
		{http.MethodGet, "/health/redis", http.StatusOK},
		{http.MethodGet, "/health", http.StatusOK},
		{http.MethodHead, "/health", http.StatusOK},
		{http.MethodGet, randomPath, http.StatusNotFound},
		{http.MethodPost, "/health", http.StatusMethodNotAllowed},
		{"BREW", "/health", http.StatusMethodNotAllowed},
	}
	for _, tc := range traffic {
		if status, _, body := do(t, tc.method, ts.URL+tc.path, nil, nil); status != tc.status {
			t.Fatalf("%s %s = %d %s, want %d", tc.method, tc.path, status, body, tc.status)
		}
	}

	// Two scrapes in a row: if scraping were counted, the second would differ.
	first := scrapeMetrics(t, ts.URL)
	second := scrapeMetrics(t, ts.URL)
	if got, want := first.requestCounts(), second.requestCounts(); got != want {
		t.Errorf("http_requests_total changed between two scrapes, so /metrics counts itself:\nfirst:\n%s\nsecond:\n%s", got, want)
	}
	for _, smp := range second.samples {
		if strings.Contains(smp.labels["route"], "metrics") {
			t.Errorf("scrape has %s, want /metrics not counted", smp.key())
		}
	}
	if strings.Contains(second.text, randomPath[1:]) {
		t.Errorf("scrape shows the random path %s, want it counted as route=%q only:\n%s", randomPath, unmatchedRoute, second.text)
	}

	wants := []struct {
		name   string
		labels map[string]string
		value  float64
	}{
		{"http_requests_total", map[string]string{"method": "GET", "route": "GET /health/db", "code": "200"}, 3},
		{"http_requests_total", map[string]string{"method": "GET", "route": "GET /api/v1/health/db", "code": "200"}, 1},
		{"http_requests_total", map[string]string{"method": "GET", "route": "GET /health/redis", "code": "200"}, 1},
		{"http_requests_total", map[string]string{"method": "GET", "route": "GET /health", "code": "200"}, 1},
		{"http_requests_total", map[string]string{"method": "HEAD", "route": "GET /health", "code": "200"}, 1},
		{"http_requests_total", map[string]string{"method": "GET", "route": unmatchedRoute, "code": "404"}, 1},
		{"http_requests_total", map[string]string{"method": "POST", "route": unmatchedRoute, "code": "405"}, 1},
		{"http_requests_total", map[string]string{"method": "other", "route": unmatchedRoute, "code": "405"}, 1},
		{"http_request_duration_seconds_count", map[string]string{"method": "GET", "route": "GET /health/db"}, 3},
		{"http_requests_in_flight", nil, 0},
		{"db_pool_max_open_connections", nil, 3 + 4},
		{"db_pool_open_connections", nil, 1},
		{"db_pool_in_use_connections", nil, 0},
		{"db_pool_idle_connections", nil, 1},
		{"db_pool_waits_total", nil, 0},
		{"db_pool_wait_duration_seconds_total", nil, 0},
		{"dependency_up", map[string]string{"dependency": "postgresql"}, 1},
		{"dependency_up", map[string]string{"dependency": "redis"}, 1},
		// Four requests shared one check: HEALTH_CACHE_TTL=1m.
		{"dependency_check_duration_seconds_count", map[string]string{"dependency": "postgresql"}, 1},
		{"dependency_check_duration_seconds_count", map[string]string{"dependency": "redis"}, 1},
		{"zenspa_build_info", map[string]string{"version": "9.8.7-metrics", "goversion": runtime.Version()}, 1},
	}
	for _, w := range wants {
		got, ok := second.value(w.name, w.labels)
		if !ok {
			t.Errorf("scrape has no %s, want %v; scrape:\n%s", sampleKey(w.name, w.labels), w.value, second.text)
		} else if got != w.value {
			t.Errorf("scrape %s = %v, want %v", sampleKey(w.name, w.labels), got, w.value)
		}
	}
	if n := len(second.find("http_request_duration_seconds_bucket", map[string]string{"route": "GET /health/db", "method": "GET"})); n != len(durationBuckets)+1 {
		t.Errorf("GET /health/db has %d duration buckets, want %d", n, len(durationBuckets)+1)
	}

	// Figures that vary from run to run: only their range is known.
	ranges := []struct {
		name   string
		lo, hi float64
	}{
		{"redis_pool_active_connections", 1, float64(cfg.RedisPoolSize)},
		{"redis_pool_idle_connections", 1, float64(cfg.RedisPoolSize)},
		{"process_start_time_seconds", float64(before.Unix()), float64(time.Now().Unix() + 1)},
		{"go_goroutines", 1, math.Inf(1)},
		{"go_memstats_heap_inuse_bytes", 1, math.Inf(1)},
		{"go_gc_cycles_total", 0, math.Inf(1)},
	}
	for _, r := range ranges {
		got, ok := second.value(r.name, nil)
		if !ok || got < r.lo || got > r.hi {
			t.Errorf("scrape %s = %v (present: %v), want from %v to %v", r.name, got, ok, r.lo, r.hi)
		}
	}
	checkHistograms(t, second)

	// Scrapes log at DEBUG like probes, with their request ID. A scrape's
	// line is written once its answer is on the way: wait for both.
	var scrapeLines []map[string]any
	for deadline := time.Now().Add(5 * time.Second); len(scrapeLines) < 2 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		scrapeLines = matching(jsonLogLines(t, logs.String()), func(l map[string]any) bool {
			return l["msg"] == "request" && l["path"] == metricsPath
		})
	}
	if len(scrapeLines) != 2 {
		t.Errorf("%d access-log lines for /metrics, want 2; log:\n%s", len(scrapeLines), logs)
	}
	for _, l := range scrapeLines {
		if l["level"] != "DEBUG" || l["request_id"] == nil || l["request_id"] == "" {
			t.Errorf("access-log line of a scrape = %v, want level DEBUG and a request_id", l)
		}
	}

	t.Run("promtool", func(t *testing.T) {
		promtool := requireTool(t, "promtool", "make services-test")
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(second.text)
		out, err := cmd.CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("promtool check metrics = %v, output %q, want success and no output; scrape:\n%s", err, out, second.text)
		}
	})
}

func TestMetricsDependencyDown(t *testing.T) {
	t.Parallel()
	deadRedis := strconv.Itoa(freePort(t))
	s, _ := newTestServer(t, testConfig(t, newTestDatabase(t), "REDIS_PORT="+deadRedis))
	ts := startTestServer(t, s)

	// Not checked yet is not down: no dependency_up at all.
	if got := scrapeMetrics(t, ts.URL).find("dependency_up", nil); len(got) != 0 {
		t.Errorf("dependency_up before any check = %v, want no series", got)
	}
	if status, _, body := get(t, ts.URL, "/health/redis"); status != http.StatusServiceUnavailable {
		t.Fatalf("GET /health/redis with Redis on dead port %s = %d %s, want 503", deadRedis, status, body)
	}
	if status, _, body := get(t, ts.URL, "/health/db"); status != http.StatusOK {
		t.Fatalf("GET /health/db = %d %s, want 200", status, body)
	}
	sc := scrapeMetrics(t, ts.URL)
	for dependency, want := range map[string]float64{"redis": 0, "postgresql": 1} {
		labels := map[string]string{"dependency": dependency}
		if got, ok := sc.value("dependency_up", labels); !ok || got != want {
			t.Errorf("dependency_up{dependency=%q} = %v (present: %v), want %v", dependency, got, ok, want)
		}
		if got, ok := sc.value("dependency_check_duration_seconds_count", labels); !ok || got != 1 {
			t.Errorf("dependency_check_duration_seconds_count{dependency=%q} = %v (present: %v), want 1", dependency, got, ok)
		}
	}
	labels := map[string]string{"method": "GET", "route": "GET /health/redis", "code": "503"}
	if got, ok := sc.value("http_requests_total", labels); !ok || got != 1 {
		t.Errorf("%s = %v (present: %v), want 1", sampleKey("http_requests_total", labels), got, ok)
	}
}

func TestMetricsRouteLabels(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, adminDatabaseURL()))
	h := s.handler()
	preflight := http.Header{"Origin": {"http://localhost:3000"}, "Access-Control-Request-Method": {"GET"}}

	tests := []struct {
		name          string
		method, path  string
		header        http.Header
		contentLength int64
		wantMethod    string // "" when the request must not be counted
		wantRoute     string
	}{
		{"route", "GET", "/health/live", nil, 0, "GET", "GET /health/live"},
		{"HEAD on a GET route", "HEAD", "/api/v1/health", nil, 0, "HEAD", "GET /api/v1/health"},
		{"index", "GET", "/", nil, 0, "GET", "GET /{$}"},
		{"unknown path", "GET", "/wp-login.php", nil, 0, "GET", unmatchedRoute},
		{"wrong method", "DELETE", "/health", nil, 0, "DELETE", unmatchedRoute},
		{"odd method", "PROPFIND", "/health", nil, 0, "other", unmatchedRoute},
		{"lower-case method", "get", "/health", nil, 0, "other", unmatchedRoute},
		{"unclean path of a route", "GET", "//health", nil, 0, "GET", "GET /health"},
		{"unclean unknown path", "GET", "/a//b/../c", nil, 0, "GET", unmatchedRoute},
		{"CORS preflight", "OPTIONS", "/health", preflight, 0, "OPTIONS", unmatchedRoute},
		{"body over the limit", "POST", "/health", nil, maxBodyBytes + 1, "POST", unmatchedRoute},
		{"scrape", "GET", "/metrics", nil, 0, "", ""},
		{"HEAD scrape", "HEAD", "/metrics", nil, 0, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := recorderScrape(t, h)
			req := httptest.NewRequest(tc.method, tc.path, nil)
			for k, v := range tc.header {
				req.Header[k] = v
			}
			req.ContentLength = tc.contentLength
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			after := recorderScrape(t, h)

			changed := after.changedRequestCounts(before)
			if tc.wantMethod == "" {
				if len(changed) != 0 {
					t.Errorf("%s %s changed %v, want it not counted", tc.method, tc.path, changed)
				}
				return
			}
			want := sampleKey("http_requests_total", map[string]string{
				"method": tc.wantMethod, "route": tc.wantRoute, "code": strconv.Itoa(w.Code)})
			if len(changed) != 1 || changed[0] != want+" +1" {
				t.Errorf("%s %s (answered %d) changed %v, want [%s +1]", tc.method, tc.path, w.Code, changed, want)
			}
		})
	}
}

func TestMetricsRandomPathsAddNoSeries(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, adminDatabaseURL(), "LOG_LEVEL=WARNING"))
	ts := startTestServer(t, s)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	send := func(method, path string) {
		t.Helper()
		req, err := http.NewRequest(method, ts.URL+path, nil)
		mustf(t, err, "new request %s %s", method, path)
		resp, err := client.Do(req)
		mustf(t, err, "%s %s", method, path)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("%s %s = %d, want 404", method, path, resp.StatusCode)
		}
	}
	// The first 404 of each method label makes its series; after that only
	// counts may change.
	send(http.MethodGet, "/"+randomName("warm_"))
	send("SCAN", "/"+randomName("warm_"))
	before := scrapeMetrics(t, ts.URL)

	const n = 1000
	var paths []string
	for i := range n {
		path, method := "/"+randomName("probe_")+"/"+strconv.Itoa(i), http.MethodGet
		if i%2 == 1 {
			method = strings.ToUpper(randomName("m"))
		}
		send(method, path)
		paths = append(paths, path)
	}
	after := scrapeMetrics(t, ts.URL)

	if got, want := after.seriesKeys(), before.seriesKeys(); !slices.Equal(got, want) {
		t.Errorf("series after %d random paths:\n%s\nwant the same as before:\n%s", n, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var added float64
	for _, method := range []string{"GET", "other"} {
		labels := map[string]string{"method": method, "route": unmatchedRoute, "code": "404"}
		b, _ := before.value("http_requests_total", labels)
		a, _ := after.value("http_requests_total", labels)
		added += a - b
	}
	if added != n {
		t.Errorf("unmatched 404s grew by %v, want %d", added, n)
	}
	for _, p := range paths[:10] {
		if strings.Contains(after.text, p) {
			t.Errorf("scrape shows the random path %s", p)
		}
	}
}

func TestMetricsAddr(t *testing.T) {
	t.Parallel()
	requireRedis(t)
	metricsPort := freePort(t)
	metricsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(metricsPort))
	p := startProcRun(t, newTestDatabase(t), "ENVIRONMENT=production", "METRICS_ADDR="+metricsAddr)
	private := "http://" + metricsAddr

	started := waitLogLine(t, p.logs, "startup line", func(l map[string]any) bool { return l["msg"] == "zenspa started" })
	if started["metrics_addr"] != metricsAddr {
		t.Errorf("startup line metrics_addr = %#v, want %q", started["metrics_addr"], metricsAddr)
	}

	// The main listener serves neither /metrics nor the profiler.
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/heap"} {
		status, h, body := get(t, p.base, path)
		if status != http.StatusNotFound {
			t.Errorf("main listener GET %s = %d, want 404", path, status)
			continue
		}
		wantErrorEnvelope(t, "main listener GET "+path, h, body, codeNotFound)
	}

	// The private one serves both; its scrape counts the main listener's requests.
	sc := scrapeMetrics(t, private)
	labels := map[string]string{"method": "GET", "route": unmatchedRoute, "code": "404"}
	if got, ok := sc.value("http_requests_total", labels); !ok || got != 3 {
		t.Errorf("METRICS_ADDR scrape %s = %v (present: %v), want 3: the main listener's 404s", sampleKey("http_requests_total", labels), got, ok)
	}
	ready := map[string]string{"method": "GET", "route": "GET /health/ready", "code": "200"}
	if got, ok := sc.value("http_requests_total", ready); !ok || got < 1 {
		t.Errorf("METRICS_ADDR scrape %s = %v (present: %v), want the readiness polls counted", sampleKey("http_requests_total", ready), got, ok)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=1"} {
		if status, _, body := get(t, private, path); status != http.StatusOK || len(body) == 0 {
			t.Errorf("METRICS_ADDR GET %s = %d with %d bytes, want 200 with a body", path, status, len(body))
		}
	}
	status, h, body := get(t, private, "/nope")
	if status != http.StatusNotFound {
		t.Errorf("METRICS_ADDR GET /nope = %d, want 404", status)
	} else {
		wantErrorEnvelope(t, "METRICS_ADDR GET /nope", h, body, codeNotFound)
	}

	// Both listeners close when run ends.
	p.cancel()
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Errorf("run after cancel = %v, want nil", err)
	}
	for _, addr := range []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)), metricsAddr} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after run returned", addr)
		}
	}
}

func TestMetricsDisabled(t *testing.T) {
	t.Parallel()
	metricsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	p := startProcRun(t, newTestDatabase(t), "METRICS_ENABLED=false", "METRICS_ADDR="+metricsAddr)

	for _, path := range []string{"/metrics", "/debug/pprof/"} {
		status, h, body := get(t, p.base, path)
		if status != http.StatusNotFound {
			t.Errorf("GET %s with METRICS_ENABLED=false = %d, want 404", path, status)
			continue
		}
		wantErrorEnvelope(t, "GET "+path+" with METRICS_ENABLED=false", h, body, codeNotFound)
	}
	if c, err := net.DialTimeout("tcp", metricsAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("METRICS_ADDR %s accepts connections with METRICS_ENABLED=false, want no listener", metricsAddr)
	}

	// Nothing is counted, and the chain has no metrics middleware.
	s, _ := newTestServer(t, testConfig(t, adminDatabaseURL(), "METRICS_ENABLED=false"))
	if s.metrics != nil {
		t.Errorf("newServer with METRICS_ENABLED=false made metrics, want none")
	}
	if next := http.RedirectHandler("/", http.StatusFound); s.recordMetrics(next) != next {
		t.Errorf("recordMetrics with metrics off wraps its handler, want it returned as is")
	}
}

func TestMetricsConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kv          []string
		wantEnabled bool
		wantAddr    string
		wantProblem string // "" for a valid configuration
	}{
		{nil, true, "", ""},
		{[]string{"METRICS_ENABLED=no"}, false, "", ""},
		{[]string{"METRICS_ADDR=127.0.0.1:9100"}, true, "127.0.0.1:9100", ""},
		{[]string{"METRICS_ADDR=:9100"}, true, ":9100", ""},
		{[]string{"METRICS_ADDR=[::1]:9100"}, true, "[::1]:9100", ""},
		{[]string{"METRICS_ENABLED=sometimes"}, false, "", "METRICS_ENABLED: must be true/false"},
		{[]string{"METRICS_ADDR=9100"}, false, "", "METRICS_ADDR: must be host:port"},
		{[]string{"METRICS_ADDR=127.0.0.1:0"}, false, "", "METRICS_ADDR: must be host:port"},
		{[]string{"METRICS_ADDR=127.0.0.1:65536"}, false, "", "METRICS_ADDR: must be host:port"},
		{[]string{"METRICS_ADDR=localhost:http"}, false, "", "METRICS_ADDR: must be host:port"},
	}
	for _, tc := range tests {
		cfg, err := loadConfig(testEnv(t, adminDatabaseURL(), tc.kv...))
		if tc.wantProblem != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantProblem) {
				t.Errorf("loadConfig(%v) error = %v, want one containing %q", tc.kv, err, tc.wantProblem)
			}
			continue
		}
		if err != nil {
			t.Errorf("loadConfig(%v) = %v, want no error", tc.kv, err)
			continue
		}
		if cfg.MetricsEnabled != tc.wantEnabled || cfg.MetricsAddr != tc.wantAddr {
			t.Errorf("loadConfig(%v) metrics = %v %q, want %v %q", tc.kv, cfg.MetricsEnabled, cfg.MetricsAddr, tc.wantEnabled, tc.wantAddr)
		}
	}
}

func TestMetricsExpositionEscapes(t *testing.T) {
	t.Parallel()
	var e exposition
	e.family("escape_test", "gauge", "Help with a backslash \\ and a\nline feed.")
	e.sample("escape_test", 0.25, "value", "quote \" backslash \\ line\nfeed \xff")
	e.sample("escape_test", math.Inf(1), "value", "inf")
	e.sample("escape_test", 12345678, "value", "whole")
	e.sample("escape_test", 1795322811.738, "value", "seconds")
	want := "# HELP escape_test Help with a backslash \\\\ and a\\nline feed.\n" +
		"# TYPE escape_test gauge\n" +
		"escape_test{value=\"quote \\\" backslash \\\\ line\\nfeed \uFFFD\"} 0.25\n" +
		"escape_test{value=\"inf\"} +Inf\n" +
		"escape_test{value=\"whole\"} 12345678\n" +
		"escape_test{value=\"seconds\"} 1795322811.738\n"
	if got := string(e.buf); got != want {
		t.Errorf("exposition =\n%s\nwant\n%s", got, want)
	}
	sc := parseScrape(t, string(e.buf))
	if got, _ := sc.value("escape_test", map[string]string{"value": "quote \" backslash \\ line\nfeed \uFFFD"}); got != 0.25 {
		t.Errorf("parsed escaped sample = %v, want 0.25", got)
	}
}

// BenchmarkChainMetricsOn and BenchmarkChainMetricsOff serve GET /health
// through s.handler() from every CPU at once; the difference is the cost of
// the metrics middleware, contention included:
//
//	go test -run '^$' -bench ChainMetrics -cpu 1,2 -benchmem .
func BenchmarkChainMetricsOn(b *testing.B) { benchmarkChain(b, true) }

// BenchmarkChainMetricsOff is the same chain with METRICS_ENABLED=false.
func BenchmarkChainMetricsOff(b *testing.B) { benchmarkChain(b, false) }

// benchmarkChain runs the chain benchmark; no dependency is touched.
func benchmarkChain(b *testing.B, enabled bool) {
	cfg := testConfig(b, adminDatabaseURL(), "METRICS_ENABLED="+strconv.FormatBool(enabled), "LOG_LEVEL=INFO")
	s, _ := newTestServer(b, cfg)
	h := s.handler()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req := httptest.NewRequest(http.MethodGet, "/health", nil)
		for pb.Next() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				b.Errorf("GET /health = %d, want 200", w.Code)
				return
			}
		}
	})
	b.StopTimer()
	if enabled {
		s.metrics.mu.Lock()
		got := s.metrics.requests[requestKey{routeKey{http.MethodGet, "GET /health"}, http.StatusOK}]
		s.metrics.mu.Unlock()
		if got != uint64(b.N) {
			b.Errorf("counted %d requests, want %d", got, b.N)
		}
	}
}

// scrapeMetrics gets base/metrics over HTTP, checks the status and content
// type, and parses the answer.
func scrapeMetrics(t testing.TB, base string) *parsedScrape {
	t.Helper()
	status, h, body := get(t, base, metricsPath)
	if status != http.StatusOK {
		t.Fatalf("GET %s%s = %d %s, want 200", base, metricsPath, status, body)
	}
	if ct := h.Get("Content-Type"); ct != metricsContentType {
		t.Errorf("GET %s Content-Type = %q, want %q", metricsPath, ct, metricsContentType)
	}
	return parseScrape(t, string(body))
}

// recorderScrape scrapes through h without a listener.
func recorderScrape(t testing.TB, h http.Handler) *parsedScrape {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, metricsPath, nil))
	if w.Code != http.StatusOK {
		t.Fatalf("GET %s = %d %s, want 200", metricsPath, w.Code, w.Body)
	}
	return parseScrape(t, w.Body.String())
}

// parsedScrape is a scrape read back from the text format.
type parsedScrape struct {
	text    string
	types   map[string]string // family name → TYPE
	help    map[string]string // family name → HELP
	samples []parsedSample
}

// parsedSample is one sample line.
type parsedSample struct {
	name   string
	labels map[string]string
	value  float64
}

// key names the series of s: its name and sorted labels.
func (s parsedSample) key() string { return sampleKey(s.name, s.labels) }

// sampleKey writes name{a="1",b="2"} with the labels sorted.
func sampleKey(name string, labels map[string]string) string {
	var parts []string
	for k, v := range labels {
		parts = append(parts, k+"="+strconv.Quote(v))
	}
	slices.Sort(parts)
	return name + "{" + strings.Join(parts, ",") + "}"
}

// parseScrape reads the text format 0.0.4 strictly, failing the test on
// anything Prometheus would refuse or that breaks our own rules: each family
// has one HELP and one TYPE line before its samples, its samples are
// together, no series appears twice, and the text ends with a line feed.
func parseScrape(t testing.TB, text string) *parsedScrape {
	t.Helper()
	sc := &parsedScrape{text: text, types: map[string]string{}, help: map[string]string{}}
	if !strings.HasSuffix(text, "\n") {
		t.Fatalf("scrape does not end with a line feed:\n%s", text)
	}
	seen := map[string]bool{}
	current := ""
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("scrape line %d %q: %s; scrape:\n%s", i+1, line, fmt.Sprintf(format, args...), text)
		}
		if rest, ok := strings.CutPrefix(line, "# HELP "); ok {
			name, help, _ := strings.Cut(rest, " ")
			if _, dup := sc.help[name]; dup || !validMetricName(name) {
				fail("a second HELP or a bad name")
			}
			sc.help[name] = help
			continue
		}
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			if _, dup := sc.types[name]; dup || !slices.Contains([]string{"counter", "gauge", "histogram", "summary", "untyped"}, typ) {
				fail("a second TYPE or an unknown type")
			}
			if _, ok := sc.help[name]; !ok {
				fail("TYPE without HELP before it")
			}
			sc.types[name], current = typ, name
			continue
		}
		smp, err := parseSampleLine(line)
		if err != nil {
			fail("%v", err)
		}
		if family := sc.familyOf(smp.name); family == "" || family != current {
			fail("sample outside its family (TYPE %q, current family %q)", family, current)
		}
		if seen[smp.key()] {
			fail("series appears twice")
		}
		seen[smp.key()] = true
		sc.samples = append(sc.samples, smp)
	}
	return sc
}

// familyOf is the family a sample name belongs to, "" if none was declared.
func (sc *parsedScrape) familyOf(name string) string {
	if _, ok := sc.types[name]; ok {
		return name
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && sc.types[base] == "histogram" {
			return base
		}
	}
	return ""
}

// parseSampleLine parses name{label="value",...} value.
func parseSampleLine(line string) (parsedSample, error) {
	end := strings.IndexAny(line, "{ ")
	if end <= 0 || !validMetricName(line[:end]) {
		return parsedSample{}, fmt.Errorf("no valid metric name")
	}
	smp := parsedSample{name: line[:end], labels: map[string]string{}}
	rest := line[end:]
	if rest[0] == '{' {
		rest = rest[1:]
		for !strings.HasPrefix(rest, "}") {
			name, after, ok := strings.Cut(rest, `="`)
			if !ok || !validLabelName(name) {
				return parsedSample{}, fmt.Errorf("bad label at %q", rest)
			}
			var value strings.Builder
			rest = after
			for {
				if rest == "" {
					return parsedSample{}, fmt.Errorf("label %s: unterminated value", name)
				}
				c := rest[0]
				rest = rest[1:]
				if c == '"' {
					break
				}
				if c == '\\' {
					if rest == "" {
						return parsedSample{}, fmt.Errorf("label %s: dangling backslash", name)
					}
					switch rest[0] {
					case '\\', '"':
						value.WriteByte(rest[0])
					case 'n':
						value.WriteByte('\n')
					default:
						return parsedSample{}, fmt.Errorf("label %s: unknown escape \\%c", name, rest[0])
					}
					rest = rest[1:]
					continue
				}
				value.WriteByte(c)
			}
			if _, dup := smp.labels[name]; dup {
				return parsedSample{}, fmt.Errorf("label %s twice", name)
			}
			smp.labels[name] = value.String()
			rest = strings.TrimPrefix(rest, ",")
		}
		rest = rest[1:]
	}
	fields := strings.Split(rest, " ")
	if len(fields) != 2 || fields[0] != "" {
		return parsedSample{}, fmt.Errorf("want one space and a value after the labels")
	}
	v, err := strconv.ParseFloat(fields[1], 64)
	if err != nil {
		return parsedSample{}, fmt.Errorf("value: %v", err)
	}
	smp.value = v
	return smp, nil
}

// validMetricName reports whether name matches [a-zA-Z_:][a-zA-Z0-9_:]*.
func validMetricName(name string) bool {
	return validName(name, true)
}

// validLabelName reports whether name matches [a-zA-Z_][a-zA-Z0-9_]*.
func validLabelName(name string) bool {
	return validName(name, false)
}

// validName reports whether name is a metric name (colon) or a label name.
func validName(name string, colon bool) bool {
	for i, c := range name {
		ok := c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || (i > 0 && '0' <= c && c <= '9') || (colon && c == ':')
		if !ok {
			return false
		}
	}
	return name != ""
}

// value returns the sample of name with exactly labels (nil: none).
func (sc *parsedScrape) value(name string, labels map[string]string) (float64, bool) {
	want := sampleKey(name, labels)
	for _, smp := range sc.samples {
		if smp.key() == want {
			return smp.value, true
		}
	}
	return 0, false
}

// find returns the samples of name that have at least labels.
func (sc *parsedScrape) find(name string, labels map[string]string) []parsedSample {
	var out []parsedSample
	for _, smp := range sc.samples {
		if smp.name != name {
			continue
		}
		match := true
		for k, v := range labels {
			match = match && smp.labels[k] == v
		}
		if match {
			out = append(out, smp)
		}
	}
	return out
}

// seriesKeys lists every series, sorted, without values.
func (sc *parsedScrape) seriesKeys() []string {
	var keys []string
	for _, smp := range sc.samples {
		keys = append(keys, smp.key())
	}
	slices.Sort(keys)
	return keys
}

// requestCounts is every http_requests_total sample with its value, one per
// line.
func (sc *parsedScrape) requestCounts() string {
	var b bytes.Buffer
	for _, smp := range sc.find("http_requests_total", nil) {
		fmt.Fprintf(&b, "%s %v\n", smp.key(), smp.value)
	}
	return b.String()
}

// changedRequestCounts lists the http_requests_total series that differ from
// before, as "series +delta".
func (sc *parsedScrape) changedRequestCounts(before *parsedScrape) []string {
	var out []string
	for _, smp := range sc.find("http_requests_total", nil) {
		old, _ := before.value(smp.name, smp.labels)
		if smp.value != old {
			out = append(out, fmt.Sprintf("%s %+g", smp.key(), smp.value-old))
		}
	}
	return out
}

// checkHistograms checks every histogram series: buckets from 0.5 ms to 10 s
// and +Inf, cumulative, the +Inf bucket equal to _count, and a _sum.
func checkHistograms(t testing.TB, sc *parsedScrape) {
	t.Helper()
	for family, typ := range sc.types {
		if typ != "histogram" {
			continue
		}
		buckets := map[string][]parsedSample{} // series without le → buckets in order
		for _, smp := range sc.find(family+"_bucket", nil) {
			labels := map[string]string{}
			for k, v := range smp.labels {
				if k != "le" {
					labels[k] = v
				}
			}
			key := sampleKey(family, labels)
			buckets[key] = append(buckets[key], smp)
		}
		if len(buckets) == 0 {
			t.Errorf("histogram %s has no buckets", family)
		}
		for key, bs := range buckets {
			if len(bs) != len(durationBuckets)+1 || bs[0].labels["le"] != "0.0005" || bs[len(bs)-2].labels["le"] != "10" || bs[len(bs)-1].labels["le"] != "+Inf" {
				t.Errorf("%s buckets: %d from le=%q to le=%q, want %d from 0.0005 through 10 to +Inf",
					key, len(bs), bs[0].labels["le"], bs[len(bs)-1].labels["le"], len(durationBuckets)+1)
				continue
			}
			labels := map[string]string{}
			for k, v := range bs[0].labels {
				if k != "le" {
					labels[k] = v
				}
			}
			prevLE, prev := math.Inf(-1), 0.0
			for _, b := range bs {
				le, err := strconv.ParseFloat(b.labels["le"], 64)
				if err != nil || le <= prevLE || b.value < prev {
					t.Errorf("%s: bucket le=%s value %v after le=%v value %v, want growing bounds and cumulative counts", key, b.labels["le"], b.value, prevLE, prev)
				}
				prevLE, prev = le, b.value
			}
			if count, ok := sc.value(family+"_count", labels); !ok || count != prev {
				t.Errorf("%s_count = %v (present: %v), want the +Inf bucket %v", key, count, ok, prev)
			}
			if sum, ok := sc.value(family+"_sum", labels); !ok || sum < 0 {
				t.Errorf("%s_sum = %v (present: %v), want a sum of durations", key, sum, ok)
			}
		}
	}
}

package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Tests of ratelimit.go against the shared Redis, each test's budgets under
// a key prefix of its own, and against a private redis-server that is
// killed, or stalled behind a fault proxy. Requests go through the whole
// chain: through httptest.NewRecorder where a test needs to choose the
// client's address, through real listeners where two servers share Redis.

// limitedServer builds a server with RATE_LIMIT=limit, the rest of kv on
// top of testEnv, and isolateRateLimit.
func limitedServer(t testing.TB, limit int, kv ...string) (*server, *syncBuffer) {
	t.Helper()
	cfg := testConfig(t, unusedDatabaseURL, append([]string{"RATE_LIMIT=" + strconv.Itoa(limit), "ENVIRONMENT=production", "DOCS_ENABLED=true"}, kv...)...)
	s, logs := newTestServer(t, cfg)
	isolateRateLimit(t, s)
	return s, logs
}

// isolateRateLimit puts s's budgets under a fresh key prefix, and lets its
// checks wait for Redis as long as they need: a test that counts decisions
// must not see a request let through because the race detector on two busy
// cores made a check miss its 50 ms. TestRateLimitBoundedWhenRedisStalls
// puts the bound back.
func isolateRateLimit(t testing.TB, s *server) {
	t.Helper()
	s.limiter.prefix = testKeyPrefix(t)
	s.limiter.timeout = 10 * time.Second
}

// limitedCall is one request through a handler, from a chosen peer.
type limitedCall struct {
	method, path string
	remote       string // RemoteAddr, "203.0.113.1:1234"; empty: httptest's 192.0.2.1
	header       http.Header
}

// serve sends c through h and returns the answer.
func (c limitedCall) serve(h http.Handler) *httptest.ResponseRecorder {
	method := c.method
	if method == "" {
		method = http.MethodGet
	}
	r := httptest.NewRequest(method, c.path, nil)
	if c.remote != "" {
		r.RemoteAddr = c.remote
	}
	for k, vs := range c.header {
		r.Header[k] = vs
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// rateLimitHeaders are the fields of a limited route's answers.
var rateLimitHeaders = []string{"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}

// wantNoRateLimitHeaders fails when h has any of the rate limit's fields.
func wantNoRateLimitHeaders(t testing.TB, what string, h http.Header) {
	t.Helper()
	for _, k := range append(slices.Clone(rateLimitHeaders), "Retry-After") {
		if v, ok := h[k]; ok {
			t.Errorf("%s has %s: %q, want none", what, k, v)
		}
	}
}

// headerInt is header k of h as a whole number, failing the test otherwise.
func headerInt(t testing.TB, what string, h http.Header, k string) int {
	t.Helper()
	v := h.Values(k)
	if len(v) != 1 {
		t.Fatalf("%s %s = %q, want one value", what, k, v)
	}
	n, err := strconv.Atoi(v[0])
	if err != nil || n < 0 || strconv.Itoa(n) != v[0] {
		t.Fatalf("%s %s = %q, want a non-negative whole number", what, k, v[0])
	}
	return n
}

// TestRateLimitGCRA checks the arithmetic at its edges through take: a
// fresh budget admits exactly the limit at once, then one request per
// emission interval, and idling refills it to the limit, not beyond. The
// interval is a whole second, so that a test slowed down by the race
// detector on busy cores still lands between two refills.
func TestRateLimitGCRA(t *testing.T) {
	t.Parallel()
	const limit, interval = 3, time.Second
	s, _ := limitedServer(t, limit, "RATE_LIMIT_WINDOW=3s")
	l := s.limiter
	ctx := context.Background()
	take := func(what string) rateDecision {
		t.Helper()
		d, err := l.take(ctx, "ip:gcra")
		mustf(t, err, "take (%s)", what)
		return d
	}
	burst := func(what string) {
		t.Helper()
		for i := range limit {
			d := take(what)
			if !d.allowed || d.remaining != limit-1-i {
				t.Fatalf("%s: take %d = %+v, want allowed with %d remaining", what, i+1, d, limit-1-i)
			}
			// The budget is whole again once every admitted interval has passed.
			if whole := time.Duration(i+1) * interval; d.reset <= whole-interval/2 || d.reset > whole {
				t.Errorf("%s: take %d reset = %v, want about %v", what, i+1, d.reset, whole)
			}
		}
	}
	limited := func(what string) rateDecision {
		t.Helper()
		d := take(what)
		if d.allowed || d.remaining != 0 || d.retryAfter <= 0 || d.retryAfter > interval || d.reset != d.retryAfter {
			t.Fatalf("%s = %+v, want limited, retry after at most %v, reset = retry after", what, d, interval)
		}
		return d
	}

	burst("fresh budget")
	first := limited("one more at once")
	// A refused request spends nothing: the wait does not grow.
	if again := limited("and another"); again.retryAfter > first.retryAfter {
		t.Errorf("retry after a second refusal = %v, want at most the first's %v", again.retryAfter, first.retryAfter)
	}

	conn, err := redis.Dial("tcp", testRedisAddr)
	mustf(t, err, "dial Redis")
	defer conn.Close()
	if ttl, err := redis.Int64(conn.Do("PTTL", l.prefix+"ip:gcra")); err != nil || ttl <= 0 || ttl > 3000 {
		t.Errorf("PTTL of a spent budget = %d, %v, want 1..3000 ms (it expires by itself within the window)", ttl, err)
	}

	time.Sleep(first.retryAfter + 100*time.Millisecond)
	if d := take("after the wait it named"); !d.allowed || d.remaining != 0 {
		t.Errorf("take after Retry-After = %+v, want allowed with 0 remaining", d)
	}
	limited("right after that one")

	// Idle for more than the window: the whole limit again, and no more.
	time.Sleep(3*interval + 200*time.Millisecond)
	burst("after idling a window")
	limited("one more after idling")

	// An interval that does not divide the window: 60 s / 7.
	s7, _ := limitedServer(t, 7, "RATE_LIMIT_WINDOW=1m")
	for i := range 7 {
		if d, err := s7.limiter.take(ctx, "ip:seven"); err != nil || !d.allowed {
			t.Fatalf("limit 7: take %d = %+v, %v, want allowed", i+1, d, err)
		}
	}
	d, err := s7.limiter.take(ctx, "ip:seven")
	if seventh := time.Minute / 7; err != nil || d.allowed || d.retryAfter > seventh || d.retryAfter < seventh-time.Second/2 {
		t.Errorf("limit 7: eighth take = %+v, %v, want limited for about %v", d, err, seventh)
	}
	if got := wholeSeconds(d.retryAfter); got != 9 {
		t.Errorf("wholeSeconds(%v) = %d, want 9 (rounded up)", d.retryAfter, got)
	}
}

// TestRateLimitAnswers checks the fields on every answer of a limited
// route, the 429 itself, and the decisions in /metrics.
func TestRateLimitAnswers(t *testing.T) {
	t.Parallel()
	s, logs := limitedServer(t, 3)
	h := s.handler()
	origin := http.Header{"Origin": {"http://localhost:3000"}}

	// Answers of any status count and carry the fields: 200, 404, 405.
	for i, c := range []limitedCall{
		{path: "/", header: origin},
		{path: "/nope"},
		{method: http.MethodPost, path: "/"},
	} {
		w := c.serve(h)
		what := c.method + " " + c.path
		if w.Code == http.StatusTooManyRequests {
			t.Fatalf("%s = 429 %s, want an answer within the limit", what, w.Body)
		}
		if got := headerInt(t, what, w.Header(), "RateLimit-Limit"); got != 3 {
			t.Errorf("%s RateLimit-Limit = %d, want 3", what, got)
		}
		if got := headerInt(t, what, w.Header(), "RateLimit-Remaining"); got != 2-i {
			t.Errorf("%s RateLimit-Remaining = %d, want %d", what, got, 2-i)
		}
		// Each request moves the whole budget 20 s further away.
		if got := headerInt(t, what, w.Header(), "RateLimit-Reset"); got != 20*(i+1) {
			t.Errorf("%s RateLimit-Reset = %d, want %d", what, got, 20*(i+1))
		}
		if v := w.Header().Values("Retry-After"); len(v) != 0 {
			t.Errorf("%s Retry-After = %q, want none within the limit", what, v)
		}
	}

	// The fourth is refused, with a wait of one interval at most.
	w := limitedCall{path: "/", header: origin}.serve(h)
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("fourth GET / = %d %s, want 429", w.Code, w.Body)
	}
	wantErrorEnvelope(t, "429", w.Header(), w.Body.Bytes(), codeRateLimited)
	retry := headerInt(t, "429", w.Header(), "Retry-After")
	if retry < 1 || retry > 20 {
		t.Errorf("429 Retry-After = %d, want 1..20 (one interval of 60 s / 3)", retry)
	}
	if reset := headerInt(t, "429", w.Header(), "RateLimit-Reset"); reset != retry {
		t.Errorf("429 RateLimit-Reset = %d, want Retry-After's %d (the draft's same point in time)", reset, retry)
	}
	if got := headerInt(t, "429", w.Header(), "RateLimit-Remaining"); got != 0 {
		t.Errorf("429 RateLimit-Remaining = %d, want 0", got)
	}
	for _, hh := range hardeningHeaders {
		if got := w.Header().Get(hh[0]); got != hh[1] {
			t.Errorf("429 %s = %q, want %q", hh[0], got, hh[1])
		}
	}
	// A page may read why it was refused.
	exposed := strings.Split(w.Header().Get("Access-Control-Expose-Headers"), ", ")
	for _, k := range append(slices.Clone(rateLimitHeaders), "Retry-After") {
		if !slices.Contains(exposed, k) {
			t.Errorf("429 Access-Control-Expose-Headers = %q, want %s in it", exposed, k)
		}
	}
	id := w.Header().Get(headerRequestID)
	if line := waitLogLine(t, logs, "access log of the 429", accessLine(id)); line["status"] != float64(429) || line["client"] != "192.0.2.1" {
		t.Errorf("access log of the 429 = %v, want status 429 and client 192.0.2.1", line)
	}

	sc := recorderScrape(t, h)
	for _, want := range []struct {
		name, result string
		value        float64
	}{
		{"rate_limit_requests_total", "allowed", 3},
		{"rate_limit_requests_total", "limited", 1},
		{"rate_limit_fail_open_total", "", 0},
	} {
		labels := map[string]string{}
		if want.result != "" {
			labels["result"] = want.result
		}
		if got, ok := sc.value(want.name, labels); !ok || got != want.value {
			t.Errorf("scrape %s%v = %v (present %v), want %v", want.name, labels, got, ok, want.value)
		}
	}
	if got, ok := sc.value("http_requests_total", map[string]string{"method": "GET", "route": unmatchedRoute, "code": "429"}); !ok || got != 1 {
		t.Errorf("http_requests_total of the 429 = %v (present %v), want 1: the limit runs inside recordMetrics", got, ok)
	}
}

// TestRateLimitExemptRoutes checks that probes, /metrics, the docs and
// preflights are never limited nor given the fields, also from a client
// whose budget is spent, and that look-alike paths are limited.
func TestRateLimitExemptRoutes(t *testing.T) {
	t.Parallel()
	s, _ := limitedServer(t, 1, "HEALTH_CACHE_TTL=1m")
	h := s.handler()
	if w := (limitedCall{path: "/"}).serve(h); w.Code != http.StatusOK {
		t.Fatalf("first GET / = %d, want 200", w.Code)
	}
	exempt := []limitedCall{
		{path: "/health"}, {path: "/health/live"}, {path: "/health/redis"},
		{path: "/api/v1/health"}, {path: "/api/v1/health/live"}, {method: http.MethodHead, path: "/api/v1/health"},
		{method: http.MethodPost, path: "/health"}, // a mistake, but on an exempt path
		{path: "/metrics"}, {path: "/openapi.json"}, {path: "/docs"}, {path: "/docs/init.js"},
		{path: "/redoc"}, {path: "/redoc/init.js"},
		{method: http.MethodOptions, path: "/api/v1/treatments", header: http.Header{
			"Origin": {"http://localhost:3000"}, "Access-Control-Request-Method": {"POST"}}},
		{method: http.MethodOptions, path: "/api/v1/treatments", header: http.Header{
			"Origin": {"http://evil.example"}, "Access-Control-Request-Method": {"POST"}}},
	}
	for range 3 { // again and again: none of them spends anything
		for _, c := range exempt {
			w := c.serve(h)
			what := c.method + " " + c.path
			if w.Code == http.StatusTooManyRequests {
				t.Errorf("%s = 429, want it never limited", what)
			}
			wantNoRateLimitHeaders(t, what, w.Header())
		}
	}
	for _, path := range []string{"/", "/healthz", "/health-check", "/docsx", "/metrics/x", "/api/v1/healthy", "/api/v1/treatments"} {
		if w := (limitedCall{path: path}).serve(h); w.Code != http.StatusTooManyRequests {
			t.Errorf("GET %s after the budget is spent = %d, want 429", path, w.Code)
		}
	}
}

// TestRateLimitSharedByInstances sends three times the limit, concurrently,
// from one address to two servers sharing Redis: together they admit the
// limit once, not once each.
func TestRateLimitSharedByInstances(t *testing.T) {
	t.Parallel()
	const limit = 20
	a, _ := limitedServer(t, limit)
	b, _ := limitedServer(t, limit)
	b.limiter.prefix = a.limiter.prefix
	targets := []string{startTestServer(t, a).URL, startTestServer(t, b).URL}

	var admitted atomic.Int64
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range limit / 2 {
				resp, err := client.Get(targets[(g+i)%2] + "/")
				if err != nil {
					t.Errorf("GET /: %v", err)
					return
				}
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusOK:
					admitted.Add(1)
				case http.StatusTooManyRequests:
				default:
					t.Errorf("GET / = %d, want 200 or 429", resp.StatusCode)
				}
			}
		}()
	}
	wg.Wait()
	// One interval is 3 s: a unit refilled while the test ran is the +1.
	if n := admitted.Load(); n < limit || n > limit+1 {
		t.Errorf("two servers admitted %d of %d requests from one address, want %d (or %d)", n, 3*limit, limit, limit+1)
	}
	if got := a.limiter.stats().Allowed + b.limiter.stats().Allowed; got != uint64(admitted.Load()) {
		t.Errorf("the servers counted %d allowed, want the %d admitted", got, admitted.Load())
	}
}

// TestRateLimitByAddress checks whose budget an anonymous request spends:
// its address's (an IPv6 client's /64), which a forged X-Forwarded-For does
// not change, unless a trusted proxy names the client.
func TestRateLimitByAddress(t *testing.T) {
	t.Parallel()
	s, logs := limitedServer(t, 2, "TRUSTED_PROXIES=10.0.0.0/8")
	h := s.handler()
	status := func(c limitedCall) int {
		t.Helper()
		return c.serve(h).Code
	}
	spend := func(what string, c limitedCall) {
		t.Helper()
		for i := range 2 {
			if got := status(c); got != http.StatusOK {
				t.Fatalf("%s: request %d = %d, want 200 within the budget", what, i+1, got)
			}
		}
		if got := status(c); got != http.StatusTooManyRequests {
			t.Fatalf("%s: third request = %d, want 429", what, got)
		}
	}

	spend("198.51.100.1", limitedCall{path: "/", remote: "198.51.100.1:1000"})
	if got := status(limitedCall{path: "/", remote: "198.51.100.1:2000"}); got != http.StatusTooManyRequests {
		t.Errorf("198.51.100.1 from another port = %d, want 429: the port is no part of the budget", got)
	}
	if got := status(limitedCall{path: "/", remote: "198.51.100.2:1000"}); got != http.StatusOK {
		t.Errorf("198.51.100.2 = %d, want 200: another address has its own budget", got)
	}

	// An untrusted peer cannot buy a budget with a header.
	for _, forged := range []string{"203.0.113.1", "203.0.113.2", "10.0.0.1", "203.0.113.3, 10.0.0.1"} {
		c := limitedCall{path: "/", remote: "198.51.100.1:1000", header: http.Header{"X-Forwarded-For": {forged}}}
		if got := status(c); got != http.StatusTooManyRequests {
			t.Errorf("198.51.100.1 with X-Forwarded-For %q = %d, want 429", forged, got)
		}
	}

	// Behind a trusted proxy, each client it names has its own budget.
	viaProxy := func(client string) limitedCall {
		return limitedCall{path: "/", remote: "10.0.0.7:5000", header: http.Header{"X-Forwarded-For": {"6.6.6.6, " + client}}}
	}
	spend("203.0.113.1 via the proxy", viaProxy("203.0.113.1"))
	id := randomName("via-proxy-")
	c := viaProxy("203.0.113.2")
	c.header.Set(headerRequestID, id)
	if got := status(c); got != http.StatusOK {
		t.Errorf("203.0.113.2 via the proxy = %d, want 200", got)
	}
	if line := waitLogLine(t, logs, "access log via the proxy", accessLine(id)); line["client"] != "203.0.113.2" {
		t.Errorf("access log client = %v, want 203.0.113.2 (the hop the proxy named)", line["client"])
	}
	if got := status(limitedCall{path: "/", remote: "10.0.0.7:5000"}); got != http.StatusOK {
		t.Errorf("the proxy itself, no header = %d, want 200 on its own budget", got)
	}

	// IPv6: one /64 is one client.
	spend("2001:db8:1:2::1", limitedCall{path: "/", remote: "[2001:db8:1:2::1]:1000"})
	if got := status(limitedCall{path: "/", remote: "[2001:db8:1:2:ffff::9]:1000"}); got != http.StatusTooManyRequests {
		t.Errorf("another address of the same /64 = %d, want 429", got)
	}
	if got := status(limitedCall{path: "/", remote: "[2001:db8:1:3::1]:1000"}); got != http.StatusOK {
		t.Errorf("an address of another /64 = %d, want 200", got)
	}
	// An IPv4 client on a dual-stack listener is the IPv4 address.
	if got := status(limitedCall{path: "/", remote: "[::ffff:198.51.100.1]:1000"}); got != http.StatusTooManyRequests {
		t.Errorf("::ffff:198.51.100.1 = %d, want 429: the budget of 198.51.100.1", got)
	}
}

// TestRateLimitByUser checks that a request whose token verifies spends its
// user's budget only, while one with a bad token spends its address's, and
// that the token is verified once per request.
func TestRateLimitByUser(t *testing.T) {
	t.Parallel()
	p := newProject(t)
	s, logs := limitedServer(t, 2, p.env()...)
	h := s.handler()
	office := "198.51.100.50:4000" // one NAT for the whole front desk
	call := func(path string, header http.Header) *httptest.ResponseRecorder {
		t.Helper()
		return limitedCall{path: path, remote: office, header: header}.serve(h)
	}
	alice, bob := newUUID(), newUUID()
	aliceToken := bearer(p.token(t, algHS256, p.user(alice)))
	bobToken := bearer(p.token(t, algES256, p.user(bob)))

	for i := range 2 {
		if w := call("/", nil); w.Code != http.StatusOK {
			t.Fatalf("anonymous request %d = %d, want 200", i+1, w.Code)
		}
	}
	if w := call("/", nil); w.Code != http.StatusTooManyRequests {
		t.Fatalf("third anonymous request = %d, want 429: the office's budget is spent", w.Code)
	}

	// Alice's budget is her own, whatever the office spent.
	for i := range 2 {
		w := call("/", aliceToken)
		if w.Code != http.StatusOK {
			t.Fatalf("Alice's request %d = %d %s, want 200", i+1, w.Code, w.Body)
		}
		if got := headerInt(t, "Alice's request", w.Header(), "RateLimit-Remaining"); got != 1-i {
			t.Errorf("Alice's request %d RateLimit-Remaining = %d, want %d", i+1, got, 1-i)
		}
	}
	if w := call("/api/v1/me", aliceToken); w.Code != http.StatusTooManyRequests {
		t.Errorf("Alice's third request = %d, want 429", w.Code)
	}
	// Bob's, and GET /api/v1/me, which needs the token, still works.
	id := randomName("bob-")
	hdr := bobToken.Clone()
	hdr.Set(headerRequestID, id)
	if w := call("/api/v1/me", hdr); w.Code != http.StatusOK {
		t.Errorf("Bob's GET /api/v1/me = %d %s, want 200", w.Code, w.Body)
	}
	if line := waitLogLine(t, logs, "Bob's access log", accessLine(id)); line["user"] != bob {
		t.Errorf("Bob's access log user = %v, want %s", line["user"], bob)
	}
	// A bad token is no one's: it spends the office's budget.
	for _, bad := range []http.Header{
		bearer("not-a-token"),
		bearer(p.token(t, algHS256, map[string]any{"sub": newUUID()})),
		{"Authorization": {"Basic YTpi"}},
	} {
		if w := call("/", bad); w.Code != http.StatusTooManyRequests {
			t.Errorf("GET / with Authorization %q = %d, want 429 on the office's budget", bad.Get("Authorization"), w.Code)
		}
	}
	if w := call("/api/v1/me", bearer("not-a-token")); w.Code != http.StatusTooManyRequests {
		t.Errorf("GET /api/v1/me with a bad token, office spent = %d, want 429", w.Code)
	}

	// Each token was verified once per request that carried it: Alice 3,
	// Bob 1 (the rate limit's check served require too); refused 3.
	if st := s.auth.stats(); st.OK != 4 || st.Invalid+st.Expired != 3 {
		t.Errorf("verifier stats = %+v, want 4 ok and 3 refused", st)
	}
}

// TestRateLimitFailsOpenWhenRedisIsDown kills a private Redis: requests pass
// unchecked and unlabelled, a warning is logged now and then, not per
// request, the metric counts each, and limiting resumes once Redis is back.
func TestRateLimitFailsOpenWhenRedisIsDown(t *testing.T) {
	t.Parallel()
	r := startPrivateRedis(t, testRedisPassword)
	s, logs := limitedServer(t, 2, append(redisAt(t, r.addr()), "REDIS_PASSWORD="+testRedisPassword)...)
	h := s.handler()
	if w := (limitedCall{path: "/"}).serve(h); w.Code != http.StatusOK || w.Header().Get("RateLimit-Remaining") != "1" {
		t.Fatalf("GET / with Redis up = %d, RateLimit-Remaining %q, want 200 and 1", w.Code, w.Header().Get("RateLimit-Remaining"))
	}

	r.stop()
	const n = 100
	for i := range n {
		var w *httptest.ResponseRecorder
		within(t, 300*time.Millisecond, "GET / with Redis down", func() {
			w = limitedCall{path: "/"}.serve(h)
		})
		if w.Code != http.StatusOK {
			t.Fatalf("GET / %d with Redis down = %d %s, want 200 (fail open)", i+1, w.Code, w.Body)
		}
		wantNoRateLimitHeaders(t, "GET / with Redis down", w.Header())
	}
	if got := s.limiter.stats().FailedOpen; got != n {
		t.Errorf("fail-open count = %d, want %d", got, n)
	}
	if got, _ := recorderScrape(t, h).value("rate_limit_fail_open_total", map[string]string{}); got != n {
		t.Errorf("rate_limit_fail_open_total = %v, want %d", got, n)
	}
	warnings := logLines(logs.String(), `"level":"WARNING"`, "rate limit not checked")
	if len(warnings) < 1 || len(warnings) > 2 {
		t.Errorf("warnings after %d unchecked requests = %d, want 1..2 (rate limited):\n%s", n, len(warnings), strings.Join(warnings, "\n"))
	}

	r.start()
	back := waitFor(redisTimeout+time.Second, func() bool {
		return (limitedCall{path: "/"}).serve(h).Header().Get("RateLimit-Limit") == "2"
	})
	if !back {
		t.Errorf("the rate limit was not checked again within %v of Redis coming back", redisTimeout+time.Second)
	}
}

// TestRateLimitBoundedWhenRedisStalls stalls Redis behind a fault proxy, and
// holds the pool's only connection: either way a request waits about 50 ms
// for the check, then passes. The median must be close to the bound; every
// request must end well before redisTimeout, the cache's own bound, which a
// check that ignored its context would wait for.
func TestRateLimitBoundedWhenRedisStalls(t *testing.T) {
	t.Parallel()
	const bound = 50 * time.Millisecond // what the check may take, not rateLimitTimeout: a test of it
	tests := []struct {
		name  string
		fault func(t *testing.T, s *server, proxy *faultProxy)
	}{
		{"Redis stops answering", func(t *testing.T, s *server, proxy *faultProxy) { proxy.stall() }},
		{"pool exhausted", func(t *testing.T, s *server, proxy *faultProxy) {
			held, err := s.cache.pool.GetContext(context.Background())
			mustf(t, err, "take the only Redis connection")
			t.Cleanup(func() { held.Close() })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			proxy := startFaultProxy(t, testRedisAddr)
			s, _ := limitedServer(t, 1000, append(redisAt(t, proxy.addr), "REDIS_POOL_SIZE=1")...)
			h := s.handler()
			if w := (limitedCall{path: "/"}).serve(h); w.Header().Get("RateLimit-Limit") != "1000" {
				t.Fatalf("GET / before the fault: RateLimit-Limit %q, want 1000", w.Header().Get("RateLimit-Limit"))
			}
			s.limiter.timeout = rateLimitTimeout // the middleware reads it on every request
			tt.fault(t, s, proxy)
			var took []time.Duration
			for range 10 {
				start := time.Now()
				w := limitedCall{path: "/"}.serve(h)
				elapsed := time.Since(start)
				took = append(took, elapsed)
				if w.Code != http.StatusOK || elapsed > redisTimeout/2 {
					t.Errorf("GET / = %d after %v, want 200 within %v", w.Code, elapsed, redisTimeout/2)
				}
				if elapsed < bound/2 {
					t.Errorf("GET / answered after %v, want it to have waited for the check", elapsed)
				}
				wantNoRateLimitHeaders(t, "GET / unchecked", w.Header())
			}
			slices.Sort(took)
			if median := took[len(took)/2]; median > bound+100*time.Millisecond {
				t.Errorf("median GET / with the check stalled = %v (all: %v), want about %v", median, took, bound)
			}
			if got := s.limiter.stats().FailedOpen; got != 10 {
				t.Errorf("fail-open count = %d, want 10", got)
			}
		})
	}
}

// TestRateLimitExemptPaths is the table of rateLimitExempt.
func TestRateLimitExemptPaths(t *testing.T) {
	t.Parallel()
	for path, want := range map[string]bool{
		"/health": true, "/health/": true, "/health/db": true, "/api/v1/health/ready": true,
		"/metrics": true, "/openapi.json": true, "/docs": true, "/docs/init.js": true, "/redoc": true, "/redoc/init.js": true,
		"/": false, "/healthz": false, "/api/v1/healthz": false, "/docsearch": false, "/metrics/": false,
		"/openapi.json/x": false, "/api/v1/treatments": false, "/api/v1/me": false, "/v1/health": false,
	} {
		if got := rateLimitExempt(path); got != want {
			t.Errorf("rateLimitExempt(%q) = %v, want %v", path, got, want)
		}
	}
}

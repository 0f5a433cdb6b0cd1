package main

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of health.go: the checker on its own with probes the test controls,
// then the endpoints against the real services and dead or silent ones.

// probeClient is an HTTP client for floods of concurrent probes; its idle
// connections are closed at cleanup.
func probeClient(t testing.TB) *http.Client {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 10 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// selectOneCount is how many health statements a DB_ECHO log holds.
func selectOneCount(logs *syncBuffer) int {
	return len(logLines(logs.String(), "msg=sql", `statement="SELECT 1"`))
}

// checkerLogLines returns the lines of logs holding every one of parts,
// waiting up to a second for the first: a check publishes its result before
// it logs it.
func checkerLogLines(logs *syncBuffer, parts ...string) []string {
	var lines []string
	waitFor(time.Second, func() bool {
		lines = logLines(logs.String(), parts...)
		return len(lines) > 0
	})
	return lines
}

// checkStatus is checks.<name>.status of a /health/ready answer.
func checkStatus(t testing.TB, body []byte, name string) any {
	t.Helper()
	checks, _ := jsonObject(t, body)["checks"].(map[string]any)
	check, _ := checks[name].(map[string]any)
	return check["status"]
}

// TestHealthProbeCoalescing checks that a flood of probes costs PostgreSQL a
// handful of SELECT 1.
func TestHealthProbeCoalescing(t *testing.T) {
	t.Parallel()
	dbURL := newTestDatabase(t)
	requireRedis(t)
	tests := []struct {
		name     string
		ttl      string
		n        int
		paths    []string
		mostSQL  int
		leastSQL int
	}{
		// A flood within one TTL costs one SELECT 1 (two if it straddles
		// the end of the TTL).
		{"ttl 1s", "1s", 200, []string{"/health/db", "/health/ready", "/api/v1/health/db", "/api/v1/health/ready"}, 3, 1},
		// Without reuse, concurrent probes still share the check in flight.
		{"ttl 0", "0", 100, []string{"/health/db"}, 100 / 4, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, logs := newTestServer(t, testConfig(t, dbURL, "DB_ECHO=true", "HEALTH_CACHE_TTL="+tt.ttl))
			ts := startTestServer(t, s)

			results := depGetAll(probeClient(t), ts.URL, tt.n, tt.paths...)
			for _, r := range results {
				if r.err != nil || r.status != http.StatusOK {
					t.Fatalf("GET %s during a flood of %d = %d %s %v, want 200", r.path, tt.n, r.status, r.body, r.err)
				}
			}
			got := selectOneCount(logs)
			t.Logf("%d concurrent probes, HEALTH_CACHE_TTL=%s: %d SELECT 1", tt.n, tt.ttl, got)
			if got < tt.leastSQL || got > tt.mostSQL {
				t.Errorf("SELECT 1 statements for %d concurrent probes (HEALTH_CACHE_TTL=%s) = %d, want %d..%d",
					tt.n, tt.ttl, got, tt.leastSQL, tt.mostSQL)
			}
		})
	}
}

// countingProbe is a probe the test controls: it counts its calls and, when
// block is set, waits for release whatever its context says, like a driver
// stuck on a silent socket.
type countingProbe struct {
	calls   atomic.Int64
	block   bool
	release chan struct{}
	unblock func() // closes release; safe to call more than once
	err     error
}

// newCountingProbe returns a probe that blocks or not; a blocked probe is
// released at cleanup at the latest.
func newCountingProbe(t testing.TB, block bool) *countingProbe {
	p := &countingProbe{block: block, release: make(chan struct{})}
	var once sync.Once
	p.unblock = func() { once.Do(func() { close(p.release) }) }
	t.Cleanup(p.unblock)
	return p
}

// probe is the func given to newChecker.
func (p *countingProbe) probe(context.Context) error {
	p.calls.Add(1)
	if p.block {
		<-p.release
	}
	return p.err
}

// TestCheckerTTL checks when a result is reused.
func TestCheckerTTL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		ttl       time.Duration
		pause     time.Duration // between the checks
		wantCalls int64
	}{
		{"reused within ttl", time.Hour, 0, 1},
		{"ttl 0 never reuses", 0, 0, 3},
		{"expired ttl", 30 * time.Millisecond, 60 * time.Millisecond, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := newCountingProbe(t, false)
			c := newChecker("test", time.Second, tt.ttl, discardLogger(), p.probe)
			var first checkResult
			for i := range 3 {
				if i > 0 {
					time.Sleep(tt.pause)
				}
				res := c.check(context.Background())
				if !res.ok() {
					t.Fatalf("check #%d = %v, want ok", i+1, res.err)
				}
				if i == 0 {
					first = res
				}
				if reused := res.at.Equal(first.at); i > 0 && reused != (tt.wantCalls == 1) {
					t.Errorf("check #%d reused the first result = %v, want %v", i+1, reused, tt.wantCalls == 1)
				}
			}
			if got := p.calls.Load(); got != tt.wantCalls {
				t.Errorf("probe calls for 3 checks (ttl %v) = %d, want %d", tt.ttl, got, tt.wantCalls)
			}
		})
	}
}

// doneCounter is a context that counts the calls of Done: checker.check
// calls it once it has joined or started the check in flight.
type doneCounter struct {
	context.Context
	calls *atomic.Int64
}

func (c doneCounter) Done() <-chan struct{} {
	c.calls.Add(1)
	return c.Context.Done()
}

// TestCheckerSharesTheCheckInFlight checks that concurrent callers share one
// probe call.
func TestCheckerSharesTheCheckInFlight(t *testing.T) {
	t.Parallel()
	const callers = 50
	p := newCountingProbe(t, true)
	c := newChecker("test", 10*time.Second, 0, discardLogger(), p.probe)

	var waiting atomic.Int64
	ctx := doneCounter{Context: context.Background(), calls: &waiting}
	results := make([]checkResult, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.check(ctx)
		}()
	}
	// Release the probe only once every caller waits on the check.
	if !waitFor(5*time.Second, func() bool { return waiting.Load() == callers }) {
		t.Fatalf("callers waiting on the check = %d, want %d", waiting.Load(), callers)
	}
	p.unblock()
	wg.Wait()

	if got := p.calls.Load(); got != 1 {
		t.Errorf("probe calls for %d concurrent checks = %d, want 1", callers, got)
	}
	for i, res := range results {
		if !res.ok() || !res.at.Equal(results[0].at) {
			t.Errorf("check of caller %d = %+v, want the shared ok result %+v", i, res, results[0])
		}
	}
}

// checkWithin runs c.check and fails the test, instead of hanging, when it
// does not return within limit.
func checkWithin(t testing.TB, c *checker, ctx context.Context, limit time.Duration) checkResult {
	t.Helper()
	resc := make(chan checkResult, 1)
	go func() { resc <- c.check(ctx) }()
	select {
	case res := <-resc:
		return res
	case <-time.After(limit):
		t.Fatalf("check did not return within %v", limit)
		return checkResult{}
	}
}

// TestCheckerStuckProbe checks a probe that ignores its context: failure at
// the timeout, no second probe while it runs, recovery once it returns.
func TestCheckerStuckProbe(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	logs := &syncBuffer{}
	p := newCountingProbe(t, true)
	c := newChecker("stuck", timeout, 0, newLogger(logs, "development", 0), p.probe)
	ctx := context.Background()

	start := time.Now()
	res := checkWithin(t, c, ctx, 5*time.Second)
	elapsed := time.Since(start)
	if res.ok() || !errors.Is(res.err, errCheckTimeout) {
		t.Errorf("check(stuck probe) = %v, want %v", res.err, errCheckTimeout)
	}
	if elapsed < timeout || elapsed > timeout+500*time.Millisecond {
		t.Errorf("check(stuck probe) took %v, want the timeout %v (+500ms)", elapsed, timeout)
	}

	// While the abandoned probe still runs, checks fail at once and start
	// no other probe.
	for i := range 5 {
		start := time.Now()
		res := checkWithin(t, c, ctx, 5*time.Second)
		if elapsed := time.Since(start); res.ok() || elapsed > timeout/2 {
			t.Errorf("check #%d while the probe is stuck = %v after %v, want a failure at once", i+2, res.err, elapsed)
		}
	}
	if got := p.calls.Load(); got != 1 {
		t.Errorf("probe calls while the first is stuck = %d, want 1", got)
	}

	// Once the probe returns, the next check runs a new one and recovers.
	p.unblock()
	if !waitFor(time.Second, func() bool { return c.check(ctx).ok() }) {
		t.Fatalf("check after the stuck probe returned still fails after 1s")
	}
	if got := p.calls.Load(); got != 2 {
		t.Errorf("probe calls after recovery = %d, want 2", got)
	}
	if got := checkerLogLines(logs, "level=WARNING", `msg="dependency check failed"`, "dependency=stuck"); len(got) != 1 {
		t.Errorf("failure warnings for 6 failed checks = %q, want 1 (rate limited)", got)
	}
	if got := checkerLogLines(logs, "level=INFO", `msg="dependency recovered"`, "dependency=stuck"); len(got) != 1 {
		t.Errorf("recovery lines = %q, want 1", got)
	}
}

// TestCheckerCallerGivesUp checks that a caller whose context ends stops
// waiting.
func TestCheckerCallerGivesUp(t *testing.T) {
	t.Parallel()
	p := newCountingProbe(t, true)
	c := newChecker("test", 10*time.Second, 0, discardLogger(), p.probe)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()

	start := time.Now()
	res := checkWithin(t, c, ctx, 5*time.Second)
	elapsed := time.Since(start)
	if res.ok() || !errors.Is(res.err, errCheckAbandoned) {
		t.Errorf("check(ctx ending after 100ms) = %v, want %v", res.err, errCheckAbandoned)
	}
	if elapsed > 600*time.Millisecond {
		t.Errorf("check(ctx ending after 100ms, timeout 10s) took %v, want it to return when ctx ends", elapsed)
	}
}

// TestHealthLivenessTouchesNoDependency checks that liveness answers at once
// while both dependencies are silent, and never contacts them.
func TestHealthLivenessTouchesNoDependency(t *testing.T) {
	t.Parallel()
	db := startDepListener(t, stayMute)
	rd := startDepListener(t, stayMute)
	s, logs := newTestServer(t, testConfig(t, sentinelDatabaseURL(db.addr, "pw"),
		append(redisAt(t, rd.addr), "HEALTH_CHECK_TIMEOUT=3s", "DB_ECHO=true")...))
	ts := startTestServer(t, s)

	for _, path := range []string{"/health", "/health/live", "/api/v1/health", "/api/v1/health/live"} {
		start := time.Now()
		status, _, body := get(t, ts.URL, path)
		if elapsed := time.Since(start); elapsed > time.Second {
			t.Errorf("GET %s with both dependencies silent took %v, want an answer at once", path, elapsed)
		}
		if status != http.StatusOK || jsonObject(t, body)["status"] != "healthy" {
			t.Errorf("GET %s with both dependencies silent = %d %s, want 200 healthy", path, status, body)
		}
	}
	if d, r := db.accepted.Load(), rd.accepted.Load(); d != 0 || r != 0 {
		t.Errorf("connections made by liveness probes: database %d, redis %d, want 0", d, r)
	}
	if lines := logLines(logs.String(), "msg=sql"); len(lines) != 0 {
		t.Errorf("statements run by liveness probes = %q, want none", lines)
	}
}

// TestHealthReadiness checks that PostgreSQL decides readiness and Redis is
// only reported.
func TestHealthReadiness(t *testing.T) {
	t.Parallel()
	dbURL := newTestDatabase(t)
	requireRedis(t)
	deadDB := sentinelDatabaseURL(deadAddr(t), "pw")
	deadRedis := redisAt(t, deadAddr(t))
	tests := []struct {
		name       string
		dbURL      string
		redis      []string
		wantStatus int
		wantDB     string
		wantRedis  string
	}{
		{"both down", deadDB, deadRedis, http.StatusServiceUnavailable, "unhealthy", "unhealthy"},
		{"redis down", dbURL, deadRedis, http.StatusOK, "healthy", "unhealthy"},
		{"both up", dbURL, redisAt(t, testRedisAddr), http.StatusOK, "healthy", "healthy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, _ := newTestServer(t, testConfig(t, tt.dbURL, tt.redis...))
			ts := startTestServer(t, s)

			for _, path := range []string{"/health", "/health/live"} {
				if status, _, body := get(t, ts.URL, path); status != http.StatusOK {
					t.Errorf("GET %s (%s) = %d %s, want 200", path, tt.name, status, body)
				}
			}
			for _, path := range []string{"/health/ready", "/api/v1/health/ready"} {
				status, _, body := get(t, ts.URL, path)
				if status != tt.wantStatus {
					t.Errorf("GET %s (%s) = %d %s, want %d", path, tt.name, status, body, tt.wantStatus)
				}
				if got := checkStatus(t, body, "database"); got != tt.wantDB {
					t.Errorf("GET %s (%s) checks.database.status = %v, want %s", path, tt.name, got, tt.wantDB)
				}
				if got := checkStatus(t, body, "redis"); got != tt.wantRedis {
					t.Errorf("GET %s (%s) checks.redis.status = %v, want %s", path, tt.name, got, tt.wantRedis)
				}
			}
		})
	}
}

// TestHealthFailureLogging checks one warning per failing dependency in a
// flood of failing probes, and one INFO line when Redis recovers.
func TestHealthFailureLogging(t *testing.T) {
	t.Parallel()
	r := startPrivateRedis(t, "")
	s, logs := newTestServer(t, testConfig(t, sentinelDatabaseURL(deadAddr(t), "pw"),
		append(redisAt(t, r.addr()), "HEALTH_CACHE_TTL=0")...))
	ts := startTestServer(t, s)
	failures := func(dep string) []string {
		return checkerLogLines(logs, "level=WARNING", `msg="dependency check failed"`, "dependency="+dep)
	}
	recoveries := func(dep string) []string {
		return checkerLogLines(logs, "level=INFO", `msg="dependency recovered"`, "dependency="+dep)
	}

	if status, _, body := get(t, ts.URL, "/health/redis"); status != http.StatusOK {
		t.Fatalf("GET /health/redis with Redis up = %d %s, want 200", status, body)
	}

	// Many failing probes of both dependencies: one warning each.
	r.stop()
	for range 50 {
		if status, _, body := get(t, ts.URL, "/health/ready"); status != http.StatusServiceUnavailable {
			t.Fatalf("GET /health/ready with both down = %d %s, want 503", status, body)
		}
	}
	if got := failures("redis"); len(got) != 1 {
		t.Errorf("redis failure warnings after 50 failing probes = %q, want 1", got)
	}
	if got := failures("postgresql"); len(got) != 1 {
		t.Errorf("postgresql failure warnings after 50 failing probes = %q, want 1", got)
	}

	// Redis comes back: one INFO line, whatever the number of probes.
	r.start()
	back := waitFor(redisTimeout+time.Second, func() bool {
		status, _, _ := get(t, ts.URL, "/health/redis")
		return status == http.StatusOK
	})
	if !back {
		t.Fatalf("GET /health/redis not 200 within %v of Redis restarting", redisTimeout+time.Second)
	}
	for range 5 {
		get(t, ts.URL, "/health/redis")
	}
	if got := recoveries("redis"); len(got) != 1 {
		t.Errorf("redis recovery lines = %q, want 1", got)
	}
	if got := logLines(logs.String(), `msg="dependency recovered"`, "dependency=postgresql"); len(got) != 0 {
		t.Errorf("postgresql recovery lines while it is still down = %q, want none", got)
	}
}

package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Fault injection: real PostgreSQL and Redis behind a faultProxy (or a
// private redis-server killed and restarted), under a steady load of
// concurrent requests, and zenspa as a child process signalled mid-load. Every
// test bounds its requests in number and time.

// faultSlack is how much longer than HEALTH_CHECK_TIMEOUT a health probe may
// take to answer while its dependency is down.
const faultSlack = 100 * time.Millisecond

// TestFaultProxy checks the proxy itself against an echo server: pass,
// stall (old and new connections get nothing), heal (stalled connections are
// dropped), cut (connections dropped, connecting refused), heal again.
func TestFaultProxy(t *testing.T) {
	t.Parallel()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	mustf(t, err, "listen")
	var echoWG sync.WaitGroup
	echoWG.Add(1)
	go func() {
		defer echoWG.Done()
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			echoWG.Add(1)
			go func() { defer echoWG.Done(); defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	p := startFaultProxy(t, echo.Addr().String())
	t.Cleanup(func() { echo.Close(); p.close(); echoWG.Wait() })

	dial := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		mustf(t, err, "dial the proxy")
		t.Cleanup(func() { c.Close() })
		return c
	}
	// roundTrip writes msg and reports what came back within wait, and
	// whether the connection was closed.
	roundTrip := func(c net.Conn, msg string, wait time.Duration) (string, bool) {
		_ = c.SetDeadline(time.Now().Add(wait))
		if _, err := io.WriteString(c, msg); err != nil {
			return "", true
		}
		buf := make([]byte, len(msg))
		n, err := io.ReadFull(c, buf)
		var ne net.Error
		closed := err != nil && !(errors.As(err, &ne) && ne.Timeout())
		return string(buf[:n]), closed
	}

	old := dial()
	if got, _ := roundTrip(old, "ping", time.Second); got != "ping" {
		t.Fatalf("pass: echo through the proxy = %q, want %q", got, "ping")
	}

	p.stall()
	if got, closed := roundTrip(old, "stalled", 200*time.Millisecond); got != "" || closed {
		t.Errorf("stall: existing connection got %q (closed %v), want nothing and still open", got, closed)
	}
	fresh := dial() // accepted, but never answered
	if got, closed := roundTrip(fresh, "hello", 200*time.Millisecond); got != "" || closed {
		t.Errorf("stall: new connection got %q (closed %v), want nothing and still open", got, closed)
	}

	p.heal()
	for name, c := range map[string]net.Conn{"existing": old, "new": fresh} {
		if _, closed := roundTrip(c, "x", time.Second); !closed {
			t.Errorf("heal: the %s stalled connection is still open, want it dropped", name)
		}
	}
	healed := dial()
	if got, _ := roundTrip(healed, "again", time.Second); got != "again" {
		t.Errorf("heal: echo on a new connection = %q, want %q", got, "again")
	}

	p.cut()
	if _, closed := roundTrip(healed, "x", time.Second); !closed {
		t.Errorf("cut: an existing connection is still open, want it dropped")
	}
	if c, err := net.DialTimeout("tcp", p.addr, time.Second); err == nil {
		c.Close()
		t.Errorf("cut: connecting to %s succeeded, want it refused", p.addr)
	}

	p.heal()
	if got, _ := roundTrip(dial(), "back", time.Second); got != "back" {
		t.Errorf("heal after cut: echo = %q, want %q", got, "back")
	}
	if n := p.accepted.Load(); n != 4 {
		t.Errorf("connections accepted = %d, want 4", n)
	}
}

// postgresFault is what a case of TestFaultPostgres works with.
type postgresFault struct {
	s      *server // behind the proxy, serving ts
	dialer *server // behind the proxy too, with an empty pool
	ts     *httptest.Server
	proxy  *faultProxy
}

// TestFaultPostgres takes PostgreSQL away under load: cut (connections
// dropped, connecting refused) for 3 s, or stalled (nothing answers) for
// 2.5 s. The probes answer 503 in time while it is away, everything answers
// 200 within 1 s of its return, and no goroutine is left behind. Each case
// checks what only it can show while PostgreSQL is away. Not parallel: it
// counts goroutines.
func TestFaultPostgres(t *testing.T) {
	const checkTimeout = 500 * time.Millisecond
	for _, tc := range []struct {
		name  string
		fault func(*faultProxy)
		away  time.Duration
		env   []string
		paths []string
		// whileAway runs once PostgreSQL is away; it returns the checks to
		// run once it is back.
		whileAway             func(t *testing.T, f postgresFault) (afterHeal func())
		minAway, minRecovered int
	}{
		{name: "cut", fault: (*faultProxy).cut, away: 3 * time.Second,
			env:       []string{"DB_POOL_TIMEOUT=1s"},
			paths:     []string{"/", "/health", "/health/db", "/health/ready", "/test/query"},
			whileAway: whileCut, minAway: 20, minRecovered: 8},
		{name: "stall", fault: (*faultProxy).stall, away: 2500 * time.Millisecond,
			env:       []string{"DB_POOL_SIZE=2", "DB_MAX_OVERFLOW=0", "DB_POOL_TIMEOUT=500ms"},
			paths:     []string{"/", "/health", "/health/db", "/health/ready"},
			whileAway: whileStalled, minAway: 10, minRecovered: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dbURL := newTestDatabase(t)
			proxy := startFaultProxy(t, urlHost(t, dbURL))
			cfg := testConfig(t, withHost(t, dbURL, proxy.addr),
				append([]string{"HEALTH_CACHE_TTL=0", "HEALTH_CHECK_TIMEOUT=500ms"}, tc.env...)...)
			s, logs := newTestServer(t, cfg)
			mustf(t, s.db.connectWithRetry(context.Background(), 1, time.Second, 5*time.Second), "connect through the proxy")
			ts := httptest.NewServer(faultRoutes(s))
			t.Cleanup(ts.Close)
			// Two established pooled connections, so that queries hang on a
			// stall rather than in a handshake; and a second server whose
			// pool is empty, which has to open a connection while
			// PostgreSQL is away (its handshake bounded by
			// DB_CONNECT_TIMEOUT, 2 s).
			faultFillPool(t, s.db, 2)
			dialer, _ := newTestServer(t, testConfig(t, withHost(t, dbURL, proxy.addr),
				"DB_POOL_SIZE=2", "DB_MAX_OVERFLOW=0", "DB_POOL_TIMEOUT=500ms", "DB_CONNECT_TIMEOUT=2s"))

			// Warm up, so the pools and the client hold what they will hold later.
			for _, r := range startFaultLoad(t, ts.URL, 8, 20, 0, tc.paths...).finish() {
				if r.err != nil || r.status != http.StatusOK {
					t.Fatalf("warm-up GET %s = %d %v %s, want 200", r.path, r.status, r.err, r.body)
				}
			}
			before := faultSettledGoroutines(proxy)

			load := startFaultLoad(t, ts.URL, 8, 400, 20*time.Millisecond, tc.paths...)
			time.Sleep(300 * time.Millisecond)
			awayAt := time.Now()
			tc.fault(proxy)
			afterHeal := tc.whileAway(t, postgresFault{s: s, dialer: dialer, ts: ts, proxy: proxy})
			time.Sleep(time.Until(awayAt.Add(tc.away)))
			healAt := time.Now()
			proxy.heal()
			afterHeal()
			time.Sleep(time.Until(healAt.Add(1500 * time.Millisecond)))
			results := load.finish()

			away, recovered := 0, 0
			for _, r := range results {
				switch {
				case r.err != nil:
					t.Errorf("GET %s: %v, want an answer whatever PostgreSQL does", r.path, r.err)
				case r.path == "/" || r.path == "/health":
					if r.status != http.StatusOK {
						t.Errorf("GET %s at %v = %d %s, want 200 (it touches no dependency)", r.path, r.start.Sub(awayAt), r.status, r.body)
					}
				case r.start.After(awayAt.Add(50*time.Millisecond)) && r.end.Before(healAt):
					away++
					wantFaultUnhealthy(t, r, checkTimeout)
				case r.start.After(healAt.Add(time.Second)):
					recovered++
					if r.status != http.StatusOK {
						t.Errorf("GET %s %v after PostgreSQL came back = %d %s, want 200", r.path, r.start.Sub(healAt), r.status, r.body)
					}
				}
			}
			if away < tc.minAway || recovered < tc.minRecovered {
				t.Errorf("requests while away = %d, after recovery = %d: want at least %d and %d (is the load running?)",
					away, recovered, tc.minAway, tc.minRecovered)
			}
			t.Logf("%d requests: %d to the dependency routes while away, %d after recovery", len(results), away, recovered)

			wantFaultGoroutines(t, proxy, before)
			if t.Failed() {
				t.Logf("server log:\n%s", logs)
			}
		})
	}
}

// whileCut: with PostgreSQL cut, opening a connection is refused at once,
// so a request that needs one fails fast with 503 DATABASE_ERROR.
func whileCut(t *testing.T, f postgresFault) func() {
	start := time.Now()
	var one int
	err := f.dialer.db.queryRow(context.Background(), "SELECT 1", nil, &one)
	var ae *apiError
	if !errors.As(err, &ae) || ae.Code != codeDatabase || time.Since(start) > time.Second {
		t.Errorf("queryRow opening a connection while cut = %v in %v, want an *apiError %s within 1s", err, time.Since(start), codeDatabase)
	}
	return func() {}
}

// whileStalled: with PostgreSQL stalled, a request waiting for a pooled
// connection gives up at DB_POOL_TIMEOUT with 503 DATABASE_ERROR, the queries
// stuck on the stalled connections end when it heals, and everything then
// succeeds.
func whileStalled(t *testing.T, f postgresFault) func() {
	const poolTimeout = 500 * time.Millisecond
	ctx := context.Background()
	s := f.s

	// Two queries take both connections and hang on the stalled network: one
	// with no deadline, one whose caller gives up. That caller gets its 503
	// at its deadline, although lib/pq's read goes on (and its cancel
	// request, over a new connection, hangs as well): the connection stays
	// taken until the network heals.
	hung := make(chan error, 1)
	go func() {
		var one int
		hung <- s.db.queryRow(ctx, "SELECT 1", nil, &one)
	}()
	gaveUp, cancelGaveUp := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelGaveUp()
	start := time.Now()
	_, err := s.db.exec(gaveUp, "SELECT 1")
	var ae *apiError
	if !errors.As(err, &ae) || ae.Code != codeDatabase || time.Since(start) > 300*time.Millisecond+faultSlack {
		t.Errorf("a query whose context ends at 300ms on the stalled network = %v after %v, want DATABASE_ERROR at 300ms + %v",
			err, time.Since(start), faultSlack)
	}
	if !waitFor(2*time.Second, func() bool { return s.db.pool.Stats().InUse == 2 }) {
		t.Fatalf("pool in use = %d, want both connections taken by the hanging queries", s.db.pool.Stats().InUse)
	}

	// With the pool exhausted, callers give up at DB_POOL_TIMEOUT, one by one
	// and several at once.
	wantPoolTimeout := func(what string, elapsed time.Duration, err error) {
		t.Helper()
		var ae *apiError
		if !errors.As(err, &ae) || ae.Code != codeDatabase {
			t.Errorf("%s = %v, want an *apiError %s", what, err, codeDatabase)
		}
		if elapsed < poolTimeout-50*time.Millisecond || elapsed >= poolTimeout+400*time.Millisecond {
			t.Errorf("%s took %v, want DB_POOL_TIMEOUT (%v) to %v", what, elapsed, poolTimeout, poolTimeout+400*time.Millisecond)
		}
	}
	for i := range 2 {
		start := time.Now()
		called := false
		err := s.db.withConn(ctx, func(*sql.Conn) error { called = true; return nil })
		wantPoolTimeout(fmt.Sprintf("withConn #%d (pool exhausted)", i+1), time.Since(start), err)
		if called {
			t.Errorf("withConn ran its function without a connection")
		}
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var one int
			start := time.Now()
			err := s.db.queryRow(ctx, "SELECT 1", nil, &one)
			wantPoolTimeout(fmt.Sprintf("concurrent queryRow #%d (pool exhausted)", i+1), time.Since(start), err)
		}()
	}
	wg.Wait()

	// Room in the pool, but the new connection's handshake stalls.
	start = time.Now()
	var one int
	err = f.dialer.db.queryRow(ctx, "SELECT 1", nil, &one)
	wantPoolTimeout("queryRow opening a connection on the stalled network", time.Since(start), err)

	// Through HTTP: the envelope, with the request's ID.
	start = time.Now()
	status, header, body := get(t, f.ts.URL, "/test/query")
	elapsed := time.Since(start)
	if status != http.StatusServiceUnavailable {
		t.Errorf("GET /test/query with the pool exhausted = %d %s, want 503", status, body)
	}
	wantErrorEnvelope(t, "GET /test/query (pool exhausted)", header, body, codeDatabase)
	if elapsed < poolTimeout-50*time.Millisecond || elapsed >= poolTimeout+400*time.Millisecond {
		t.Errorf("GET /test/query (pool exhausted) took %v, want about DB_POOL_TIMEOUT (%v)", elapsed, poolTimeout)
	}

	// The query without a deadline is still stuck: only the network can free it.
	select {
	case err := <-hung:
		t.Errorf("a query on the stalled connection returned %v before the network healed, want it stuck", err)
	default:
	}

	return func() {
		select {
		case err := <-hung:
			// The heal drops the stalled connection; the read may then run
			// again on a fresh one (withConn), or fail as the outage it was.
			var ae *apiError
			if err != nil && (!errors.As(err, &ae) || ae.Code != codeDatabase) {
				t.Errorf("query freed by the heal = %v, want nil or an *apiError %s", err, codeDatabase)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("a query on a stalled connection still runs 2 s after the heal\n%s", goroutineDump())
		}
		if !waitFor(2*time.Second, func() bool { return s.db.pool.Stats().InUse == 0 }) {
			t.Errorf("pool in use = %d 2 s after the heal, want the abandoned query's connection back", s.db.pool.Stats().InUse)
		}
		// Everything succeeds again, the pool refilling with fresh connections.
		var ok sync.WaitGroup
		for i := range 4 {
			ok.Add(1)
			go func() {
				defer ok.Done()
				var n int
				if err := s.db.queryRow(ctx, "SELECT $1::int", []any{i}, &n); err != nil || n != i {
					t.Errorf("queryRow(SELECT %d) after the heal = %d, %v; want %d, nil", i, n, err, i)
				}
			}()
		}
		ok.Wait()
	}
}

// TestFaultRedisRestart kills a private, password-protected redis-server
// under load and starts it again on the same port: /health never fails, the
// cache misses quickly while Redis is down, /health/redis is 503 then and
// 200 within 1 s of its return, and the cache works again.
func TestFaultRedisRestart(t *testing.T) {
	t.Parallel()
	const password = "fault-sentinel-redis-pw-5b1e"
	redis := startPrivateRedis(t, password)
	cfg := testConfig(t, newTestDatabase(t), "REDIS_HOST=127.0.0.1", "REDIS_PORT="+strconv.Itoa(redis.port),
		"REDIS_PASSWORD="+password, "HEALTH_CACHE_TTL=0", "HEALTH_CHECK_TIMEOUT=500ms")
	s, logs := newTestServer(t, cfg)
	ts := startTestServer(t, s)
	ctx := context.Background()
	if !s.cache.set(ctx, "fault:k", "v", time.Minute) {
		t.Fatalf("cache.set against the private Redis failed; log:\n%s", logs)
	}

	load := startFaultLoad(t, ts.URL, 8, 400, 20*time.Millisecond, "/", "/health", "/health/redis")
	finishCacheLoad := startFaultCacheLoad(s.cache, 2, 200)
	killAt, restartAt, upAt := redisOutage(redis)
	results := load.finish()
	calls := finishCacheLoad()

	down, recovered := 0, 0
	for _, r := range results {
		switch {
		case r.err != nil:
			t.Errorf("GET %s: %v, want an answer whatever Redis does", r.path, r.err)
		case r.path != "/health/redis":
			if r.status != http.StatusOK {
				t.Errorf("GET %s at %v = %d %s, want 200 (Redis is optional)", r.path, r.start.Sub(killAt), r.status, r.body)
			}
		case r.start.After(killAt.Add(50*time.Millisecond)) && r.end.Before(restartAt):
			down++
			if r.status != http.StatusServiceUnavailable || r.end.Sub(r.start) > 500*time.Millisecond+faultSlack {
				t.Errorf("GET /health/redis with Redis killed = %d %s in %v, want 503 within HEALTH_CHECK_TIMEOUT (500ms) + %v",
					r.status, r.body, r.end.Sub(r.start), faultSlack)
			} else if m := objectOf(t, "GET "+r.path, r.body); m["connected"] != false || m["status"] != "unhealthy" {
				t.Errorf("GET /health/redis with Redis killed = %s, want status unhealthy, connected false", r.body)
			}
		case r.start.After(upAt.Add(time.Second)):
			recovered++
			if r.status != http.StatusOK {
				t.Errorf("GET /health/redis %v after Redis came back = %d %s, want 200", r.start.Sub(upAt), r.status, r.body)
			}
		}
	}
	if down < 5 || recovered < 5 {
		t.Errorf("/health/redis requests while Redis was down = %d, after = %d: want at least 5 each", down, recovered)
	}

	misses := 0
	for _, c := range calls {
		if c.end.Sub(c.start) >= 1500*time.Millisecond {
			t.Errorf("cache.%s took %v (at %v after the kill), want < 1.5 s", c.op, c.end.Sub(c.start), c.start.Sub(killAt))
		}
		if c.start.After(killAt.Add(50*time.Millisecond)) && c.end.Before(restartAt) {
			misses++
			if c.ok {
				t.Errorf("cache.%s with Redis killed reported success", c.op)
			}
		}
	}
	if misses < 5 {
		t.Errorf("cache calls while Redis was down = %d, want at least 5", misses)
	}

	// The cache works again (the load has had more than a second).
	var got string
	if !s.cache.set(ctx, "fault:k", "back", time.Minute) || !s.cache.get(ctx, "fault:k", &got) || got != "back" {
		t.Errorf("cache set/get 1.5 s after Redis came back = %q, want %q", got, "back")
	}
	if strings.Contains(logs.String(), password) {
		t.Errorf("the log shows REDIS_PASSWORD:\n%s", logs)
	}
	t.Logf("%d requests, %d cache calls; %d /health/redis and %d cache calls while Redis was down", len(results), len(calls), down, misses)
}

// TestFaultRedisStallAndCut puts the proxy between zenspa and the shared
// Redis, stalls it, heals, cuts it and heals again.
func TestFaultRedisStallAndCut(t *testing.T) {
	t.Parallel()
	requireRedis(t)
	const checkTimeout = 500 * time.Millisecond
	proxy := startFaultProxy(t, testRedisAddr)
	host, port, _ := net.SplitHostPort(proxy.addr)
	cfg := testConfig(t, newTestDatabase(t), "REDIS_HOST="+host, "REDIS_PORT="+port,
		"HEALTH_CACHE_TTL=0", "HEALTH_CHECK_TIMEOUT=500ms")
	s, logs := newTestServer(t, cfg)
	ts := startTestServer(t, s)
	key := randomName("zenspa_fault_")
	t.Cleanup(func() { s.cache.delete(context.Background(), key) })

	for _, fault := range []struct {
		name   string
		inject func()
	}{{"stall", proxy.stall}, {"cut", proxy.cut}} {
		load := startFaultLoad(t, ts.URL, 8, 300, 20*time.Millisecond, "/", "/health", "/health/redis")
		finishCacheLoad := startFaultCacheLoad(s.cache, 2, 100)
		time.Sleep(300 * time.Millisecond)
		faultAt := time.Now()
		fault.inject()
		time.Sleep(1500 * time.Millisecond)
		healAt := time.Now()
		proxy.heal()
		time.Sleep(1300 * time.Millisecond)
		results := load.finish()
		calls := finishCacheLoad()

		down, recovered := 0, 0
		for _, r := range results {
			switch {
			case r.err != nil:
				t.Errorf("%s: GET %s: %v, want an answer", fault.name, r.path, r.err)
			case r.path != "/health/redis":
				if r.status != http.StatusOK {
					t.Errorf("%s: GET %s = %d %s, want 200 (Redis is optional)", fault.name, r.path, r.status, r.body)
				}
			case r.start.After(faultAt.Add(50*time.Millisecond)) && r.end.Before(healAt):
				down++
				if r.status != http.StatusServiceUnavailable || r.end.Sub(r.start) > checkTimeout+faultSlack {
					t.Errorf("%s: GET /health/redis = %d in %v, want 503 within %v", fault.name, r.status, r.end.Sub(r.start), checkTimeout+faultSlack)
				}
			case r.start.After(healAt.Add(time.Second)):
				recovered++
				if r.status != http.StatusOK {
					t.Errorf("%s: GET /health/redis %v after the heal = %d %s, want 200", fault.name, r.start.Sub(healAt), r.status, r.body)
				}
			}
		}
		if down < 5 || recovered < 3 {
			t.Errorf("%s: /health/redis requests during the fault = %d, after = %d: want at least 5 and 3", fault.name, down, recovered)
		}
		for _, c := range calls {
			if c.end.Sub(c.start) >= 1500*time.Millisecond {
				t.Errorf("%s: cache.%s took %v, want < 1.5 s", fault.name, c.op, c.end.Sub(c.start))
			}
			if c.start.After(faultAt.Add(50*time.Millisecond)) && c.end.Before(healAt) && c.ok {
				t.Errorf("%s: cache.%s during the fault reported success", fault.name, c.op)
			}
		}
		var got string
		if !s.cache.set(context.Background(), key, fault.name, time.Minute) || !s.cache.get(context.Background(), key, &got) || got != fault.name {
			t.Errorf("%s: cache set/get 1.3 s after the heal = %q, want %q", fault.name, got, fault.name)
		}
	}
	if t.Failed() {
		t.Logf("server log:\n%s", logs)
	}
}

// TestFaultSIGTERMUnderLoad signals the zenspa binary while 8 clients keep it
// busy and a slow request is in flight: every answer is complete, requests
// sent before the signal are answered, the slow one included, and the
// process exits 0.
func TestFaultSIGTERMUnderLoad(t *testing.T) {
	t.Parallel()
	dbURL := newTestDatabase(t)
	redisHost, redisPort, _ := net.SplitHostPort(silentListener(t))
	port := strconv.Itoa(freePort(t))
	base := "http://127.0.0.1:" + port
	child := startChild(t, zenspaBinary(t), childEnv(t, dbURL, "HOST=127.0.0.1", "PORT="+port,
		"REDIS_HOST="+redisHost, "REDIS_PORT="+redisPort, "HEALTH_CHECK_TIMEOUT=1s", "HEALTH_CACHE_TTL=0",
		"SHUTDOWN_DRAIN_DELAY=0", "SHUTDOWN_TIMEOUT=10s", "LOG_LEVEL=DEBUG"))
	// Not waitUntilReady: its 1 s client timeout races the 1 s Redis check
	// that readiness waits for here.
	child.waitServing(t, base+"/health/ready")

	stop := make(chan struct{})
	var mu sync.Mutex
	var results []faultTraced
	var wg sync.WaitGroup
	paths := []string{"/", "/health", "/health/db"}
	for c := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			for i := range 2000 {
				select {
				case <-stop:
					return
				default:
				}
				r := faultTracedGet(client, base+paths[(c+i)%len(paths)])
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
				if r.err != nil {
					time.Sleep(50 * time.Millisecond) // the listener is closed: no need to hammer
				} else {
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
	}

	// The slow request: /health/redis waits HEALTH_CHECK_TIMEOUT (1 s) for
	// the silent Redis. It is in flight when the signal arrives.
	time.Sleep(500 * time.Millisecond)
	slow := make(chan faultTraced, 1)
	go func() {
		slow <- faultTracedGet(&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}, base+"/health/redis")
	}()
	time.Sleep(300 * time.Millisecond)
	signalAt := time.Now()
	mustf(t, child.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
	code := child.exitCode(t, 10*time.Second)
	close(stop)
	wg.Wait()

	if code != 0 {
		t.Errorf("zenspa exit code after SIGTERM = %d, want 0; output:\n%s", code, child.output())
	}
	s := <-slow
	switch {
	case s.err != nil:
		t.Errorf("the slow request in flight at SIGTERM failed: %v (wrote request %v before the signal), want an answer", s.err, signalAt.Sub(s.wrote))
	case s.status != http.StatusServiceUnavailable || !s.complete:
		t.Errorf("the slow request in flight at SIGTERM = %d complete=%v %s, want a complete 503 (Redis silent)", s.status, s.complete, s.body)
	case !s.end.After(signalAt.Add(200 * time.Millisecond)):
		t.Errorf("the slow request ended %v after the signal, want it still in flight then (about 700ms later)", s.end.Sub(signalAt))
	}

	answered, afterSignal, refused, idleClosed, lateNew := 0, 0, 0, 0, 0
	for _, r := range results {
		if r.err == nil {
			answered++
			if r.end.After(signalAt) {
				afterSignal++
			}
			if r.status != http.StatusOK || !r.complete {
				t.Errorf("GET %s = %d, complete %v (Content-Length %q, %d bytes) %s; want a complete 200",
					r.path, r.status, r.complete, r.contentLength, len(r.body), r.body)
			}
			continue
		}
		// No answer. Fine: the listener was closed (refused), or net/http
		// closed an idle keep-alive connection before any byte of a response.
		// Not fine: a response cut after its first byte, or a request written
		// on a fresh connection well before the signal and never answered.
		switch {
		case r.firstByte:
			t.Errorf("GET %s: the response was cut after its first byte: %v", r.path, r.err)
		case !r.reused && !r.wrote.IsZero() && r.wrote.Before(signalAt.Add(-100*time.Millisecond)):
			t.Errorf("GET %s: written on a new connection %v before the signal and never answered: %v", r.path, signalAt.Sub(r.wrote), r.err)
		case r.start.Before(signalAt.Add(-100 * time.Millisecond)):
			t.Errorf("GET %s started %v before the signal and failed: %v", r.path, signalAt.Sub(r.start), r.err)
		case faultDialError(r.err):
			refused++
		case r.reused:
			idleClosed++
		default:
			lateNew++
		}
	}
	if answered < 50 {
		t.Errorf("answered requests = %d, want at least 50 (is the load running?)", answered)
	}
	if !strings.Contains(child.output(), "shutting down") {
		t.Errorf("zenspa output has no \"shutting down\" line:\n%s", child.output())
	}
	t.Logf("%d requests: %d answered (%d after the signal); unanswered after the signal: %d refused, %d on an idle connection closed, %d on a new connection reset",
		len(results), answered, afterSignal, refused, idleClosed, lateNew)
}

// TestFaultStartupWhilePostgresDown starts the binary while PostgreSQL is
// unreachable and brings it back during the retry window: the service starts
// on a later attempt. Then PostgreSQL is cut for 3 s under load: the process
// stays up, reports 503 in time and recovers within 1 s.
func TestFaultStartupWhilePostgresDown(t *testing.T) {
	t.Parallel()
	const checkTimeout = 500 * time.Millisecond
	dbURL := newTestDatabase(t)
	proxy := startFaultProxy(t, urlHost(t, dbURL))
	proxy.cut()
	port := strconv.Itoa(freePort(t))
	base := "http://127.0.0.1:" + port
	child := startChild(t, zenspaBinary(t), childEnv(t, withHost(t, dbURL, proxy.addr), "HOST=127.0.0.1", "PORT="+port,
		"DB_CONNECT_ATTEMPTS=5", "DB_CONNECT_BACKOFF=200ms", "HEALTH_CACHE_TTL=0", "HEALTH_CHECK_TIMEOUT=500ms",
		"SHUTDOWN_DRAIN_DELAY=0"))
	time.Sleep(500 * time.Millisecond)
	proxy.heal()
	child.waitServing(t, base+"/health/ready")
	out := child.output()
	if n := len(logLines(out, "database not reachable, retrying")); n < 1 {
		t.Errorf("zenspa output has %d \"database not reachable, retrying\" lines, want at least 1:\n%s", n, out)
	}
	if !strings.Contains(out, "zenspa started") {
		t.Errorf("zenspa output has no \"zenspa started\" line:\n%s", out)
	}

	// The same process through a 3 s outage.
	load := startFaultLoad(t, base, 4, 400, 20*time.Millisecond, "/health", "/health/db", "/health/ready")
	time.Sleep(300 * time.Millisecond)
	cutAt := time.Now()
	proxy.cut()
	time.Sleep(3 * time.Second)
	healAt := time.Now()
	proxy.heal()
	time.Sleep(1500 * time.Millisecond)
	results := load.finish()
	if !child.running() {
		t.Fatalf("zenspa exited during the PostgreSQL outage; output:\n%s", child.output())
	}
	down, recovered := 0, 0
	for _, r := range results {
		switch {
		case r.err != nil:
			t.Errorf("GET %s: %v, want an answer", r.path, r.err)
		case r.path == "/health":
			if r.status != http.StatusOK {
				t.Errorf("GET /health = %d %s, want 200", r.status, r.body)
			}
		case r.start.After(cutAt.Add(50*time.Millisecond)) && r.end.Before(healAt):
			down++
			wantFaultUnhealthy(t, r, checkTimeout)
		case r.start.After(healAt.Add(time.Second)):
			recovered++
			if r.status != http.StatusOK {
				t.Errorf("GET %s %v after the heal = %d %s, want 200", r.path, r.start.Sub(healAt), r.status, r.body)
			}
		}
	}
	if down < 10 || recovered < 4 {
		t.Errorf("requests while cut = %d, after = %d: want at least 10 and 4", down, recovered)
	}

	mustf(t, child.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
	if code := child.exitCode(t, 10*time.Second); code != 0 {
		t.Errorf("zenspa exit code after SIGTERM = %d, want 0; output:\n%s", code, child.output())
	}
}

// faultRoutes serves s.handler() plus /test/query, a stand-in for a domain
// route: one query through s.db, failures through s.writeError, inside the
// same middleware.
func faultRoutes(s *server) http.Handler {
	query := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var one int
		if err := s.db.queryRow(r.Context(), "SELECT 1", nil, &one); err != nil {
			s.writeError(w, r, err)
			return
		}
		writeSuccess(w, http.StatusOK, map[string]int{"one": one}, "")
	})
	routes := s.routes()
	return s.chain(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/test/query" {
			query.ServeHTTP(w, r)
			return
		}
		routes.ServeHTTP(w, r)
	}))
}

// faultResult is one request of a faultLoad.
type faultResult struct {
	path       string
	start, end time.Time
	status     int
	body       []byte
	err        error
}

// faultLoad is a steady load of GET requests from concurrent clients.
type faultLoad struct {
	client  *http.Client
	workers func() []faultResult
}

// startFaultLoad starts clients goroutines, each sending up to max requests
// (cycling through paths, pausing between them) until finish. Cleanup
// finishes it too.
func startFaultLoad(t testing.TB, base string, clients, max int, pause time.Duration, paths ...string) *faultLoad {
	l := &faultLoad{client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}}
	l.workers = startWorkers(clients, pause, func(c, i int, record func(...faultResult)) bool {
		r := faultResult{path: paths[(c+i)%len(paths)], start: time.Now()}
		resp, err := l.client.Get(base + r.path)
		if err == nil {
			r.status = resp.StatusCode
			r.body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		r.err, r.end = err, time.Now()
		record(r)
		return i+1 < max
	})
	t.Cleanup(func() { l.finish() })
	return l
}

// finish stops the clients, closes their idle connections and returns every
// result.
func (l *faultLoad) finish() []faultResult {
	results := l.workers()
	l.client.CloseIdleConnections()
	return results
}

// faultCacheCall is one cache call of a faultCacheLoad.
type faultCacheCall struct {
	op         string
	start, end time.Time
	ok         bool
}

// redisOutage is the Redis restart both Redis fault tests run under load:
// 500 ms of calm, Redis stopped for 2 s, started again, then 1.5 s to
// recover. It returns when Redis was stopped, restarted, and answered.
func redisOutage(redis *privateRedis) (killAt, restartAt, upAt time.Time) {
	time.Sleep(500 * time.Millisecond)
	killAt = time.Now()
	redis.stop()
	time.Sleep(2 * time.Second)
	restartAt = time.Now()
	redis.start()
	upAt = time.Now()
	time.Sleep(1500 * time.Millisecond)
	return killAt, restartAt, upAt
}

// startFaultCacheLoad runs workers goroutines of at most max set/get pairs
// each, 20 ms apart, each on a key of its own; the returned finish stops
// them, deletes their keys and returns every call.
func startFaultCacheLoad(c *cache, workers, max int) (finish func() []faultCacheCall) {
	prefix := randomName("zenspa_fault_cache_")
	calls := startWorkers(workers, 20*time.Millisecond, func(w, i int, record func(...faultCacheCall)) bool {
		key := prefix + strconv.Itoa(w)
		start := time.Now()
		ok := c.set(context.Background(), key, i, time.Minute)
		mid := time.Now()
		var got int
		hit := c.get(context.Background(), key, &got)
		record(faultCacheCall{"set", start, mid, ok}, faultCacheCall{"get", mid, time.Now(), hit})
		return i+1 < max
	})
	return func() []faultCacheCall {
		for w := range workers {
			defer c.delete(context.Background(), prefix+strconv.Itoa(w))
		}
		return calls()
	}
}

// wantFaultUnhealthy checks an answer of /health/db, /health/ready or
// /test/query while PostgreSQL is away: 503 within the check timeout plus
// faultSlack, with the unhealthy body or the DATABASE_ERROR envelope.
func wantFaultUnhealthy(t *testing.T, r faultResult, checkTimeout time.Duration) {
	t.Helper()
	if r.status != http.StatusServiceUnavailable {
		t.Errorf("GET %s with PostgreSQL away = %d %s, want 503", r.path, r.status, r.body)
		return
	}
	if r.path != "/test/query" && r.end.Sub(r.start) > checkTimeout+faultSlack {
		t.Errorf("GET %s with PostgreSQL away took %v, want <= HEALTH_CHECK_TIMEOUT (%v) + %v", r.path, r.end.Sub(r.start), checkTimeout, faultSlack)
	}
	m := objectOf(t, "GET "+r.path, r.body)
	switch r.path {
	case "/health/db":
		if m["status"] != "unhealthy" || m["connected"] != false {
			t.Errorf("GET /health/db with PostgreSQL away = %s, want status unhealthy, connected false", r.body)
		}
	case "/health/ready":
		db, _ := m["checks"].(map[string]any)["database"].(map[string]any)
		if m["status"] != "unhealthy" || db["status"] != "unhealthy" {
			t.Errorf("GET /health/ready with PostgreSQL away = %s, want status and checks.database.status unhealthy", r.body)
		}
	case "/test/query":
		if e, _ := m["error"].(map[string]any); m["status"] != "error" || e["code"] != string(codeDatabase) {
			t.Errorf("GET /test/query with PostgreSQL away = %s, want the %s envelope", r.body, codeDatabase)
		}
	}
}

// faultFillPool opens n pooled connections at once and returns them to the
// pool, established.
func faultFillPool(t *testing.T, db *database, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conns := make([]*sql.Conn, n)
	for i := range conns {
		c, err := db.pool.Conn(ctx)
		mustf(t, err, "take pooled connection %d", i+1)
		mustf(t, c.PingContext(ctx), "ping pooled connection %d", i+1)
		conns[i] = c
	}
	for _, c := range conns {
		c.Close()
	}
	if idle := db.pool.Stats().Idle; idle != n {
		t.Fatalf("idle pooled connections = %d, want %d", idle, n)
	}
}

// faultGoroutines counts the process's goroutines, less the two each
// forwarding connection of proxy holds (how many connections the pools keep
// open varies from run to run).
func faultGoroutines(proxy *faultProxy) int {
	return runtime.NumGoroutine() - 2*proxy.openLinks()
}

// faultSettledGoroutines is faultGoroutines once the connections just closed
// have had a moment to wind down.
func faultSettledGoroutines(proxy *faultProxy) int {
	time.Sleep(300 * time.Millisecond)
	return faultGoroutines(proxy)
}

// wantFaultGoroutines waits up to 5 s for the goroutine count to come back
// to before, give or take a few.
func wantFaultGoroutines(t *testing.T, proxy *faultProxy, before int) {
	t.Helper()
	const tolerance = 5
	var after int
	if !waitFor(5*time.Second, func() bool { after = faultGoroutines(proxy); return after <= before+tolerance }) {
		t.Errorf("goroutines (less the proxy's) = %d after the fault, want <= %d (%d before, tolerance %d)\n%s",
			after, before+tolerance, before, tolerance, goroutineDump())
	}
}

// urlHost is the host:port of a URL.
func urlHost(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	mustf(t, err, "parse %s", maskDatabaseURL(rawURL))
	return u.Host
}

// withHost is rawURL pointed at another host:port.
func withHost(t *testing.T, rawURL, hostport string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	mustf(t, err, "parse %s", maskDatabaseURL(rawURL))
	u.Host = hostport
	return u.String()
}

// faultStatus is the status of one GET, 0 when there is no answer.
func faultStatus(target string) int {
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(target)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// faultTraced is one GET with what happened on the wire.
type faultTraced struct {
	path          string
	start, end    time.Time
	wrote         time.Time // when the request was on the wire
	reused        bool      // sent on an idle keep-alive connection
	firstByte     bool      // some of the response arrived
	status        int
	body          []byte
	contentLength string
	complete      bool // Content-Length matches the body, which is JSON
	err           error
}

// faultTracedGet sends one GET and records its trace.
func faultTracedGet(client *http.Client, target string) faultTraced {
	r := faultTraced{start: time.Now()}
	if u, err := url.Parse(target); err == nil {
		r.path = u.Path
	}
	var mu sync.Mutex
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			mu.Lock()
			r.reused = info.Reused
			mu.Unlock()
		},
		WroteRequest: func(httptrace.WroteRequestInfo) {
			mu.Lock()
			r.wrote = time.Now()
			mu.Unlock()
		},
		GotFirstResponseByte: func() {
			mu.Lock()
			r.firstByte = true
			mu.Unlock()
		},
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, target, nil)
	if err != nil {
		r.err = err
		return r
	}
	resp, err := client.Do(req)
	if err == nil {
		r.status = resp.StatusCode
		r.contentLength = resp.Header.Get("Content-Length")
		r.body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		n, cerr := strconv.Atoi(r.contentLength)
		r.complete = err == nil && cerr == nil && n == len(r.body) && json.Valid(r.body)
	}
	mu.Lock()
	defer mu.Unlock()
	r.err, r.end = err, time.Now()
	return r
}

// faultDialError reports whether err is a failure to connect.
func faultDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// The treatment menu under faults: the API's reads and writes through a
// PostgreSQL restart, a silent PostgreSQL and a Redis killed mid-run.

// TestFaultTreatmentsPostgresRestart restarts a private PostgreSQL with
// `pg_ctl restart -m fast` while a client sends the menu sequential POSTs
// and GETs (CACHE_TTL=0: every read reaches PostgreSQL). Once it is back no
// request fails, and no POST is applied twice: each 201 is in the database
// once under its id, and a POST that failed while PostgreSQL was down is
// there at most once. Beside it, servers whose pools hold only connections
// from before the restart each send one kind of request first: a POST and
// a PATCH (BEGIN on a dead connection), a GET by id and of the list, and
// /health/db (the probe pool). Each must succeed at once.
func TestFaultTreatmentsPostgresRestart(t *testing.T) {
	t.Parallel()
	pg := startPrivatePostgres(t)
	migrateTestDatabase(t, pg.url)
	p := newProject(t)
	serve := func() (*server, string) {
		s, _ := newTestServer(t, testConfig(t, pg.url, append(p.env(), "CACHE_TTL=0", "HEALTH_CACHE_TTL=0")...))
		return s, startTestServer(t, s).URL
	}
	client := &http.Client{Timeout: 15 * time.Second, Transport: withBearer(p.token(t, algHS256, p.manager()), nil)}
	_, base := serve()
	seed := faultSend(client, http.MethodPost, base+"/api/v1/treatments", faultTreatmentBody("Restart seed"))
	if seed.status != http.StatusCreated {
		t.Fatalf("POST the seed treatment = %d %v %s, want 201", seed.status, seed.err, seed.body)
	}
	seedID := seed.id()

	// The quiet servers: two established idle connections and the probe's,
	// all of which the restart ends.
	quiet := []struct {
		name   string
		method string
		path   string
		body   string
		want   int
	}{
		{"POST", http.MethodPost, "/api/v1/treatments", faultTreatmentBody("Restart first POST"), http.StatusCreated},
		{"PATCH", http.MethodPatch, "/api/v1/treatments/" + seedID, `{"price": 510000}`, http.StatusOK},
		{"GET by id", http.MethodGet, "/api/v1/treatments/" + seedID, "", http.StatusOK},
		{"GET list", http.MethodGet, "/api/v1/treatments?limit=5", "", http.StatusOK},
		{"GET /health/db", http.MethodGet, "/health/db", "", http.StatusOK},
	}
	quietBases := make([]string, len(quiet))
	for i := range quiet {
		s, b := serve()
		faultFillPool(t, s.db, 2)
		mustf(t, s.db.ping(context.Background()), "open the probe connection")
		quietBases[i] = b
	}

	// The client: POST, GET it, GET the list, /health/db, until stopped.
	stop := make(chan struct{})
	done := make(chan []faultCall)
	go func() {
		var calls []faultCall
		lastID := seedID
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- calls
				return
			default:
			}
			var c faultCall
			switch i % 4 {
			case 0:
				name := fmt.Sprintf("Restart ritual %04d", i/4)
				c = faultSend(client, http.MethodPost, base+"/api/v1/treatments", faultTreatmentBody(name))
				c.name = name
				if c.status == http.StatusCreated {
					lastID = c.id()
				}
			case 1:
				c = faultSend(client, http.MethodGet, base+"/api/v1/treatments/"+lastID, "")
			case 2:
				c = faultSend(client, http.MethodGet, base+"/api/v1/treatments?limit=5", "")
			case 3:
				c = faultSend(client, http.MethodGet, base+"/health/db", "")
			}
			calls = append(calls, c)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second)
	downAt := time.Now()
	pg.restart()
	upAt := time.Now()

	// The first request of each quiet server, on a pool of dead connections.
	for i, q := range quiet {
		c := faultSend(client, q.method, quietBases[i]+q.path, q.body)
		if c.err != nil || c.status != q.want {
			t.Errorf("%s first after the restart, on dead pooled connections = %d %v %s, want %d", q.name, c.status, c.err, c.body, q.want)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	calls := <-done

	// Every answer: a success, or, only while PostgreSQL was down, a 503.
	var before, during, after, failed int
	created := map[string]string{} // name: id, of every 201
	var failedPOSTs []string
	for _, c := range calls {
		switch {
		case c.end.Before(downAt):
			before++
		case c.start.After(upAt):
			after++
		default:
			during++
		}
		if c.err == nil && c.status < 300 {
			if c.method == http.MethodPost {
				created[c.name] = c.id()
			}
			continue
		}
		failed++
		overlaps := c.start.Before(upAt) && c.end.After(downAt)
		switch {
		case !overlaps:
			t.Errorf("%s %s %v from the restart = %d %v %s, want success: PostgreSQL was up", c.method, c.path, c.start.Sub(downAt), c.status, c.err, c.body)
		case c.err != nil || c.status != http.StatusServiceUnavailable:
			t.Errorf("%s %s during the restart = %d %v %s, want 503", c.method, c.path, c.status, c.err, c.body)
		case c.path != "/health/db" && c.errorCode() != string(codeDatabase):
			t.Errorf("%s %s during the restart = %s, want the %s envelope", c.method, c.path, c.body, codeDatabase)
		}
		if c.method == http.MethodPost {
			failedPOSTs = append(failedPOSTs, c.name)
		}
	}

	// What the database holds, by name.
	db, err := sql.Open("postgres", pg.url)
	mustf(t, err, "open the private PostgreSQL")
	defer db.Close()
	rows := map[string][]string{}
	mustf(t, faultTreatmentRows(db, rows), "read the treatments")
	for name, id := range created {
		if got := rows[name]; len(got) != 1 || got[0] != id {
			t.Errorf("treatment %q answered 201 with id %s; the database holds it under ids %v, want exactly [%s]", name, id, got, id)
		}
	}
	applied := 0
	for _, name := range failedPOSTs {
		switch n := len(rows[name]); {
		case n > 1:
			t.Errorf("treatment %q, whose POST failed during the restart, is in the database %d times, want at most once", name, n)
		case n == 1:
			applied++
		}
	}
	if before < 20 || after < 20 {
		t.Errorf("requests before the restart = %d, after = %d: want at least 20 each (is the client running?)", before, after)
	}
	t.Logf("restart took %v; %d requests: %d before, %d during, %d after; %d failed, all during the restart (%d POSTs, %d of them applied); %d POSTs answered 201, each in the database once",
		upAt.Sub(downAt).Round(time.Millisecond), len(calls), before, during, after, failed, len(failedPOSTs), applied, len(created))
}

// faultTreatmentBody is the body of a POST creating the treatment name.
func faultTreatmentBody(name string) string {
	return fmt.Sprintf(`{"name": %q, "duration_minutes": 60, "price": 450000}`, name)
}

// faultTreatmentRows adds every treatment's id to rows under its name.
func faultTreatmentRows(db *sql.DB, rows map[string][]string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := db.QueryContext(ctx, "SELECT name, id FROM treatments")
	if err != nil {
		return err
	}
	defer rs.Close()
	for rs.Next() {
		var name, id string
		if err := rs.Scan(&name, &id); err != nil {
			return err
		}
		rows[name] = append(rows[name], id)
	}
	return rs.Err()
}

// startTreatmentClients runs n clients, each sending send(client, i) for
// i = 0, 1, … with a 10 ms pause, until the returned function stops them
// and returns every call.
func startTreatmentClients(n int, send func(client, i int) faultCall) func() []faultCall {
	return startWorkers(n, 10*time.Millisecond, func(c, i int, record func(...faultCall)) bool {
		record(send(c, i))
		return true
	})
}

// faultCall is one request of the treatment fault tests, with its answer.
type faultCall struct {
	method, path string
	name         string // of the treatment a POST creates
	start, end   time.Time
	status       int
	body         []byte
	err          error
}

// faultSend sends one request, with body as JSON unless it is "", and
// reads the whole answer.
func faultSend(client *http.Client, method, target, body string) faultCall {
	c := faultCall{method: method, start: time.Now()}
	if u, err := url.Parse(target); err == nil {
		c.path = u.RequestURI()
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, target, rd)
	if err == nil {
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		var resp *http.Response
		if resp, err = client.Do(req); err == nil {
			c.status = resp.StatusCode
			c.body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
	}
	c.err, c.end = err, time.Now()
	return c
}

// id is data.id of a success envelope, "" if there is none.
func (c faultCall) id() string { return envelopeString(c.body, "data", "id") }

// errorCode is error.code of an error envelope, "" if there is none.
func (c faultCall) errorCode() string { return envelopeString(c.body, "error", "code") }

// envelopeString is the string at outer.inner of a JSON envelope, "" if
// there is none.
func envelopeString(body []byte, outer, inner string) string {
	var o, i map[string]json.RawMessage
	var s string
	if json.Unmarshal(body, &o) != nil || json.Unmarshal(o[outer], &i) != nil || json.Unmarshal(i[inner], &s) != nil {
		return ""
	}
	return s
}

// TestFaultTreatmentsStalled stalls PostgreSQL (the proxy forwards nothing)
// for 6 s while 8 clients send the menu's reads and writes, with
// REQUEST_TIMEOUT=1s, DB_POOL_TIMEOUT=5s and a pool of 2. Every request
// answers 503 DATABASE_ERROR within REQUEST_TIMEOUT + 1 s, the POSTs and
// PATCHes through withTx too, and none of their writes is applied later.
// Each timed-out request leaves its query behind (lib/pq cannot interrupt
// a read blocked on a silent server): the goroutines holding such work stay
// at the pool's size, and the total stays flat, however many requests time
// out. After the heal everything works again. Not parallel: it counts
// goroutines.
func TestFaultTreatmentsStalled(t *testing.T) {
	const (
		requestTimeout = time.Second
		poolSize       = 2
		clients        = 8
		stallFor       = 6 * time.Second
	)
	requireRedis(t)
	dbURL := newTestDatabase(t)
	migrateTestDatabase(t, dbURL)
	proxy := startFaultProxy(t, urlHost(t, dbURL))
	p := newProject(t)
	s, logs := newTestServer(t, testConfig(t, withHost(t, dbURL, proxy.addr), append(p.env(), "REQUEST_TIMEOUT=1s", "DB_POOL_TIMEOUT=5s",
		"DB_POOL_SIZE="+strconv.Itoa(poolSize), "DB_MAX_OVERFLOW=0")...))
	ts := startTestServer(t, s)
	api := ts.URL + "/api/v1/treatments"
	client := &http.Client{Timeout: 10 * time.Second,
		Transport: withBearer(p.token(t, algHS256, p.manager()), &http.Transport{MaxIdleConnsPerHost: clients})}

	// Treatments to read and change. Nothing reads them by id before the
	// stall, so the cache holds none of them and every read needs PostgreSQL.
	var ids []string
	for i := range 4 {
		c := faultSend(client, http.MethodPost, api, faultTreatmentBody(fmt.Sprintf("Stall seed %d", i)))
		if c.status != http.StatusCreated {
			t.Fatalf("POST a seed treatment = %d %v %s, want 201", c.status, c.err, c.body)
		}
		ids = append(ids, c.id())
	}
	// send is request i of client n: the list, one by id, a POST, a PATCH.
	send := func(n, i int) faultCall {
		id := ids[(n+i)%len(ids)]
		switch i % 4 {
		case 0:
			return faultSend(client, http.MethodGet, api+"?limit=5", "")
		case 1:
			return faultSend(client, http.MethodGet, api+"/"+id, "")
		case 2:
			name := fmt.Sprintf("Stalled %d-%d", n, i)
			c := faultSend(client, http.MethodPost, api, faultTreatmentBody(name))
			c.name = name
			return c
		default:
			return faultSend(client, http.MethodPatch, api+"/"+id, fmt.Sprintf(`{"price": %d}`, 1000*(n*100+i)))
		}
	}
	faultFillPool(t, s.db, poolSize) // queries hang on established connections, not in a handshake
	before := faultSettledGoroutines(proxy)

	// The clients, and a sampler of what waits on PostgreSQL.
	clientsDone := startTreatmentClients(clients, send)
	time.Sleep(300 * time.Millisecond)
	stallAt := time.Now()
	proxy.stall()
	var samples []faultSample
	for time.Since(stallAt) < stallFor {
		time.Sleep(100 * time.Millisecond)
		samples = append(samples, takeFaultSample(s, proxy, stallAt))
	}
	healAt := time.Now()
	proxy.heal()
	time.Sleep(2 * time.Second)
	calls := clientsDone()

	// Every answer in time; while stalled, the DATABASE_ERROR envelope.
	timedOut := map[string]int{}
	var stalledPOSTs []string
	created := map[string]string{}
	recovered := 0
	for _, c := range calls {
		kind := c.method + " /api/v1/treatments"
		if c.method != http.MethodPost && !strings.HasPrefix(c.path, "/api/v1/treatments?") {
			kind += "/{id}"
		}
		if c.err != nil {
			t.Errorf("%s %s: %v, want an answer", c.method, c.path, c.err)
			continue
		}
		if d := c.end.Sub(c.start); d > requestTimeout+time.Second {
			t.Errorf("%s %s took %v (at %v from the stall), want at most REQUEST_TIMEOUT (%v) + 1s", c.method, c.path, d, c.start.Sub(stallAt), requestTimeout)
		}
		if c.status == http.StatusCreated {
			created[c.name] = c.id()
		}
		switch {
		case c.start.After(stallAt.Add(50*time.Millisecond)) && c.end.Before(healAt):
			if c.status != http.StatusServiceUnavailable || c.errorCode() != string(codeDatabase) {
				t.Errorf("%s %s with PostgreSQL stalled = %d %s, want 503 %s", c.method, c.path, c.status, c.body, codeDatabase)
			}
			timedOut[kind]++
			if c.method == http.MethodPost {
				stalledPOSTs = append(stalledPOSTs, c.name)
			}
		case c.start.After(healAt.Add(time.Second)):
			recovered++
			if c.status >= 300 {
				t.Errorf("%s %s %v after the heal = %d %s, want success", c.method, c.path, c.start.Sub(healAt), c.status, c.body)
			}
		}
	}
	total := 0
	for kind, n := range timedOut {
		total += n
		if n < 4 {
			t.Errorf("%s requests answered 503 while stalled = %d, want at least 4", kind, n)
		}
	}
	if len(timedOut) < 4 || total < 8*poolSize || recovered < 20 {
		t.Errorf("requests answered 503 while stalled = %v, after the heal %d: want 4 kinds, at least %d in all, and 20 after (is the load running?)",
			timedOut, recovered, 8*poolSize)
	}

	// Abandoned work stays within the pool: no more goroutines hold a
	// query, cancel one or dial than there are connections, and the total
	// does not grow while requests keep timing out.
	settled := requestTimeout + 500*time.Millisecond // every client has timed out once
	var early, late, peak faultSample
	for _, sm := range samples {
		peak = peak.max(sm)
		switch {
		case sm.at < settled:
		case sm.at < settled+time.Second:
			early = early.max(sm)
		case sm.at > stallFor-time.Second:
			late = late.max(sm)
		}
	}
	// lib/pq watches a transaction's context and its statement's: a stuck
	// write on one connection may send two cancel requests.
	if peak.inUse > poolSize || peak.querying > poolSize || peak.dialing > poolSize || peak.cancelling > 2*poolSize {
		t.Errorf("while stalled, at most: %d connections in use, %d goroutines running a query, %d dialing, %d cancelling one; want the pool size %d, twice that cancelling",
			peak.inUse, peak.querying, peak.dialing, peak.cancelling, poolSize)
	}
	const tolerance = 8
	if late.goroutines > early.goroutines+tolerance {
		t.Errorf("goroutines (less the proxy's) = %d at most in the stall's last second, %d in its second one: want no more than %d more, however many requests time out",
			late.goroutines, early.goroutines, tolerance)
	}

	// After the heal: the abandoned queries end, the writes that timed out
	// were never applied, and every kind of request succeeds.
	if !waitFor(3*time.Second, func() bool { return s.db.pool.Stats().InUse == 0 }) {
		t.Errorf("pool in use = %d 3 s after the heal, want the abandoned queries' connections back", s.db.pool.Stats().InUse)
	}
	rows := map[string][]string{}
	db, err := sql.Open("postgres", dbURL)
	mustf(t, err, "open the test database")
	defer db.Close()
	mustf(t, faultTreatmentRows(db, rows), "read the treatments")
	for _, name := range stalledPOSTs {
		if len(rows[name]) != 0 {
			t.Errorf("treatment %q, whose POST answered 503 while PostgreSQL was stalled, is in the database: want it never applied", name)
		}
	}
	for name, id := range created {
		if got := rows[name]; len(got) != 1 || got[0] != id {
			t.Errorf("treatment %q answered 201 with id %s; the database holds ids %v, want exactly [%s]", name, id, got, id)
		}
	}
	for i := range 4 {
		if c := send(clients, i); c.err != nil || c.status >= 300 {
			t.Errorf("%s %s after the heal = %d %v %s, want success", c.method, c.path, c.status, c.err, c.body)
		}
	}
	client.CloseIdleConnections()
	wantFaultGoroutines(t, proxy, before)
	t.Logf("%d requests; while stalled %d answered 503 (%v), %d succeeded after the heal; at most %d goroutines (%d before the stall, %d in its second second, %d in its last), %d in use, %d querying, %d cancelling, %d dialing",
		len(calls), total, timedOut, recovered, peak.goroutines, before, early.goroutines, late.goroutines, peak.inUse, peak.querying, peak.cancelling, peak.dialing)
	if t.Failed() {
		t.Logf("server log:\n%s", logs)
	}
}

// faultSample is what waits on PostgreSQL at one moment of a stall.
type faultSample struct {
	at         time.Duration // since the stall began
	goroutines int           // less the proxy's
	inUse      int           // pooled connections taken
	querying   int           // goroutines of database.bounded: work on a connection
	cancelling int           // lib/pq's watchers, sending a cancel request
	dialing    int           // boundedConnector's handshakes
}

// takeFaultSample counts, from every goroutine's stack, those that hold or
// open a connection of s.
func takeFaultSample(s *server, proxy *faultProxy, since time.Time) faultSample {
	dump := goroutineDump()
	// Test binaries name package main by its import path.
	createdBy := func(fn string) int { return strings.Count(dump, fn+" in goroutine ") }
	return faultSample{
		at:         time.Since(since),
		goroutines: faultGoroutines(proxy),
		inUse:      s.db.pool.Stats().InUse,
		querying:   createdBy(".(*database).bounded"),
		cancelling: createdBy("github.com/lib/pq.(*conn).watchCancel"),
		dialing:    createdBy(".boundedConnector.Connect"),
	}
}

// max is the larger of each count of a and b.
func (a faultSample) max(b faultSample) faultSample {
	return faultSample{at: max(a.at, b.at), goroutines: max(a.goroutines, b.goroutines), inUse: max(a.inUse, b.inUse),
		querying: max(a.querying, b.querying), cancelling: max(a.cancelling, b.cancelling), dialing: max(a.dialing, b.dialing)}
}

// TestFaultTreatmentsRedisRestart kills a private redis-server while 4
// clients read and write the menu with the cache on, and starts it again on
// the same port 2 s later. Every request succeeds throughout; the cache's
// failure is logged a few times at most (the warning is rate-limited), not
// once a request, and nothing is logged while Redis is up. Once Redis is
// back a GET is served from it again: it runs no SQL (DB_ECHO).
func TestFaultTreatmentsRedisRestart(t *testing.T) {
	t.Parallel()
	const clients = 4
	redis := startPrivateRedis(t, testRedisPassword)
	dbURL := newTestDatabase(t)
	migrateTestDatabase(t, dbURL)
	p := newProject(t)
	s, logs := newTestServer(t, testConfig(t, dbURL, append(p.env(), "REDIS_HOST=127.0.0.1", "REDIS_PORT="+strconv.Itoa(redis.port),
		"REDIS_PASSWORD="+testRedisPassword, "CACHE_TTL=1m", "DB_ECHO=true")...))
	api := startTestServer(t, s).URL + "/api/v1/treatments"
	client := &http.Client{Timeout: 10 * time.Second, Transport: withBearer(p.token(t, algHS256, p.manager()), nil)}

	// Treatments the clients read and change, and one nobody changes: the
	// probe of the cache.
	create := func(name string) string {
		t.Helper()
		c := faultSend(client, http.MethodPost, api, faultTreatmentBody(name))
		if c.status != http.StatusCreated {
			t.Fatalf("POST %q = %d %v %s, want 201", name, c.status, c.err, c.body)
		}
		return c.id()
	}
	var ids []string
	for i := range clients {
		ids = append(ids, create(fmt.Sprintf("Redis seed %d", i)))
	}
	probe := api + "/" + create("Redis cache probe")
	if !faultServedFromCache(t, client, probe, logs) {
		t.Fatalf("GET %s twice with Redis up: the second ran SQL too, want it served from Redis; log:\n%s", probe, logs)
	}

	// The clients: one by id, the list, a POST, a PATCH, until stopped.
	clientsDone := startTreatmentClients(clients, func(n, i int) faultCall {
		switch id := ids[(n+i)%len(ids)]; i % 4 {
		case 0:
			return faultSend(client, http.MethodGet, api+"/"+id, "")
		case 1:
			return faultSend(client, http.MethodGet, api+"?limit=5", "")
		case 2:
			return faultSend(client, http.MethodPost, api, faultTreatmentBody(fmt.Sprintf("Redis ritual %d-%d", n, i)))
		default:
			return faultSend(client, http.MethodPatch, api+"/"+id, fmt.Sprintf(`{"price": %d}`, 1000*(n*100+i)))
		}
	})
	killAt, restartAt, upAt := redisOutage(redis)
	calls := clientsDone()

	// Every request succeeds, and in time, whatever Redis does.
	down := 0
	for _, c := range calls {
		if c.err != nil || c.status >= 300 {
			t.Errorf("%s %s at %v from the kill = %d %v %s, want success: Redis is optional", c.method, c.path, c.start.Sub(killAt), c.status, c.err, c.body)
		}
		if d := c.end.Sub(c.start); d > 2*redisTimeout+time.Second {
			t.Errorf("%s %s at %v from the kill took %v, want at most %v", c.method, c.path, c.start.Sub(killAt), d, 2*redisTimeout+time.Second)
		}
		if c.start.After(killAt.Add(50*time.Millisecond)) && c.end.Before(restartAt) {
			down++
		}
	}
	if down < 20 {
		t.Errorf("requests while Redis was down = %d, want at least 20 (is the load running?)", down)
	}

	// The warnings: only while Redis was away, and rate-limited.
	var warned []time.Time
	for _, line := range logLines(logs.String(), "level=WARN", `msg="cache `) {
		at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(strings.Fields(line)[0], "time="))
		mustf(t, err, "the time of log line %q", line)
		warned = append(warned, at)
		if at.Before(killAt) || at.After(upAt.Add(time.Second)) {
			t.Errorf("cache warning %v from the kill, with Redis up: %s", at.Sub(killAt), line)
		}
	}
	if len(warned) < 1 || len(warned) > 2 {
		t.Errorf("cache warnings = %d for %d requests while Redis was down, want 1 or 2 (one per 5 s):\n%s",
			len(warned), down, strings.Join(logLines(logs.String(), "level=WARN"), "\n"))
	}

	// The cache works again.
	var hit bool
	if !waitFor(2*time.Second, func() bool { hit = faultServedFromCache(t, client, probe, logs); return hit }) {
		t.Errorf("GET %s twice %v after Redis came back: the second still runs SQL, want it served from Redis", probe, time.Since(upAt))
	}
	t.Logf("%d requests, all answered 2xx; %d while Redis was down, for which %d cache warning(s) were logged; Redis served a GET again, checked %v after its return",
		len(calls), down, len(warned), time.Since(upAt).Round(100*time.Millisecond))
	if t.Failed() {
		t.Logf("server log:\n%s", logs)
	}
}

// faultServedFromCache GETs target twice and reports whether both answered
// 200 with the same body and the second ran no SQL: it came from Redis.
func faultServedFromCache(t *testing.T, client *http.Client, target string, logs *syncBuffer) bool {
	t.Helper()
	statements := func() int { return len(logLines(logs.String(), "msg=sql", "FROM treatments WHERE id")) }
	first := faultSend(client, http.MethodGet, target, "")
	before := statements()
	second := faultSend(client, http.MethodGet, target, "")
	if first.status != http.StatusOK || second.status != http.StatusOK || !bytes.Equal(first.data(), second.data()) {
		t.Errorf("GET %s twice = %d %v %s, then %d %v %s; want 200 with the same treatment", target,
			first.status, first.err, first.body, second.status, second.err, second.body)
		return false
	}
	return statements() == before
}

// data is the data member of a success envelope, nil if there is none.
func (c faultCall) data() json.RawMessage {
	var env struct {
		Data json.RawMessage `json:"data"`
	}
	_ = json.Unmarshal(c.body, &env)
	return env.Data
}

// TestFaultTreatmentsDeadlineMidTransaction: a PATCH whose deadline ends
// while its transaction holds the row answers DATABASE_ERROR at the
// deadline; the abandoned transaction, which goes on in the background, is
// rolled back, and nothing reads what it still writes (under -race, a read
// of the treatment it fills fails the test).
func TestFaultTreatmentsDeadlineMidTransaction(t *testing.T) {
	t.Parallel()
	dbURL := newTestDatabase(t)
	migrateTestDatabase(t, dbURL)
	s, _ := newTestServer(t, testConfig(t, dbURL))
	ctx := context.Background()
	name, minutes, price := "Deadline ritual", int64(60), int64(450000)
	orig, err := createTreatment(ctx, s.db, treatmentInput{Name: &name, DurationMinutes: &minutes, Price: &price})
	mustf(t, err, "create a treatment")

	const deadline = 200 * time.Millisecond
	reqCtx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	cheaper := int64(1000)
	start := time.Now()
	_, err = updateTreatment(reqCtx, s.db, orig.ID, treatmentInput{Price: &cheaper}, func(string) error {
		<-reqCtx.Done() // the row is locked and read; the request gives up
		time.Sleep(100 * time.Millisecond)
		return nil
	})
	elapsed := time.Since(start)
	var ae *apiError
	if !errors.As(err, &ae) || ae.Code != codeDatabase || elapsed > deadline+time.Second {
		t.Errorf("updateTreatment whose deadline ends mid-transaction = %v after %v, want an *apiError %s at the deadline (%v)", err, elapsed, codeDatabase, deadline)
	}
	if !waitFor(5*time.Second, func() bool { return s.db.pool.Stats().InUse == 0 }) {
		t.Fatalf("pool in use = %d 5 s after the deadline, want the abandoned transaction's connection back", s.db.pool.Stats().InUse)
	}
	got, err := getTreatment(ctx, s.db, orig.ID)
	if err != nil || got.Price != orig.Price {
		t.Errorf("getTreatment after the abandoned PATCH = price %d, %v; want %d, nil: it must not be applied", got.Price, err, orig.Price)
	}
}

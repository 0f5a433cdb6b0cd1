package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of db.go against the real PostgreSQL, and against real sockets that
// misbehave: a listener that hangs up at once, one that never answers, and a
// port where nothing listens.

// depListener is a loopback listener that counts the connections it accepts
// and hands each to handle; it is closed at cleanup, with every connection.
type depListener struct {
	addr     string
	accepted atomic.Int64
}

// startDepListener serves handle on a fresh loopback port.
func startDepListener(t testing.TB, handle func(net.Conn)) *depListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &depListener{addr: ln.Addr().String()}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go handle(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l
}

// hangUp closes a connection at once: a peer that is there but refuses to
// talk.
func hangUp(c net.Conn) { c.Close() }

// stayMute reads and discards everything and never answers: a stalled peer.
func stayMute(c net.Conn) { _, _ = io.Copy(io.Discard, c) }

// deadAddr is a loopback address where nothing listens.
func deadAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
}

// sentinelDatabaseURL points at addr with a password that must never be
// shown anywhere.
func sentinelDatabaseURL(addr, password string) string {
	return "postgres://zenspa:" + password + "@" + addr + "/zenspa_sentinel_db?sslmode=disable"
}

// logLines returns the lines of logs that contain every one of parts.
func logLines(logs string, parts ...string) []string {
	var out []string
	for line := range strings.SplitSeq(logs, "\n") {
		match := line != ""
		for _, p := range parts {
			match = match && strings.Contains(line, p)
		}
		if match {
			out = append(out, line)
		}
	}
	return out
}

// waitFor polls cond every 10 ms until it holds or d has passed, and reports
// whether it held.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// jsonObject decodes a JSON object answer.
func jsonObject(t testing.TB, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("json.Unmarshal(%s) = %v, want a JSON object", body, err)
	}
	return m
}

// databaseName is the database a PostgreSQL URL names.
func databaseName(t testing.TB, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

var retryInPattern = regexp.MustCompile(`retry_in=(\S+)`)

// retryWaits lists the retry_in values of the "database not reachable" lines.
func retryWaits(logs string) []string {
	var waits []string
	for _, line := range logLines(logs, "database not reachable, retrying") {
		if m := retryInPattern.FindStringSubmatch(line); m != nil {
			waits = append(waits, m[1])
		}
	}
	return waits
}

// TestDatabaseConnectWithRetryGivesUp checks the startup retry against a peer that
// hangs up: attempts, waits, elapsed time and a message without the password.
func TestDatabaseConnectWithRetryGivesUp(t *testing.T) {
	t.Parallel()
	const password = "SENTINEL_db_pw_4711"
	ln := startDepListener(t, hangUp)
	s, logs := newTestServer(t, testConfig(t, sentinelDatabaseURL(ln.addr, password)))

	start := time.Now()
	err := s.db.connectWithRetry(context.Background(), 3, 100*time.Millisecond, time.Second)
	elapsed := time.Since(start)

	if err == nil {
		t.Fatalf("connectWithRetry(hang-up listener, 3, 100ms, 1s) = nil, want an error")
	}
	if got := len(logLines(logs.String(), "database not reachable, retrying")); got != 2 {
		t.Errorf("retry log lines after 3 attempts = %d, want 2\nlogs:\n%s", got, logs)
	}
	if got, want := retryWaits(logs.String()), []string{"100ms", "200ms"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("retry_in values = %v, want %v", got, want)
	}
	// lib/pq dials once per attempt; database/sql may redial a connection it
	// considers bad, so at least one connection per attempt is what we know.
	t.Logf("the hang-up listener accepted %d connections for 3 attempts", ln.accepted.Load())
	if got := ln.accepted.Load(); got < 3 {
		t.Errorf("connections accepted by the listener = %d, want >= 3 (one per attempt)", got)
	}
	if elapsed < 300*time.Millisecond || elapsed >= 3*time.Second {
		t.Errorf("connectWithRetry took %v, want >= 300ms (100ms + 200ms of backoff) and < 3s", elapsed)
	}
	host, port, _ := net.SplitHostPort(ln.addr)
	msg := err.Error()
	for _, want := range []string{host, port, "zenspa_sentinel_db", "3 attempts"} {
		if !strings.Contains(msg, want) {
			t.Errorf("connectWithRetry error = %q, want it to name %q", msg, want)
		}
	}
	if strings.Contains(msg, password) {
		t.Errorf("connectWithRetry error = %q, want no password in it", msg)
	}
	if strings.Contains(logs.String(), password) {
		t.Errorf("logs contain the database password:\n%s", logs)
	}
}

// TestDatabaseConnectWithRetryDoublesTheWait checks that each wait doubles the last.
func TestDatabaseConnectWithRetryDoublesTheWait(t *testing.T) {
	t.Parallel()
	s, logs := newTestServer(t, testConfig(t, sentinelDatabaseURL(deadAddr(t), "pw")))

	err := s.db.connectWithRetry(context.Background(), 4, 50*time.Millisecond, time.Second)
	if err == nil {
		t.Fatalf("connectWithRetry(dead port, 4, 50ms, 1s) = nil, want an error")
	}
	if got, want := retryWaits(logs.String()), []string{"50ms", "100ms", "200ms"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("retry_in values = %v, want %v\nlogs:\n%s", got, want, logs)
	}
}

// TestDatabaseConnectWithRetryCapsTheWait needs one real wait over half the
// cap (5.1 s) to see the doubled wait capped at 10 s; it runs in parallel
// with everything else.
func TestDatabaseConnectWithRetryCapsTheWait(t *testing.T) {
	t.Parallel()
	s, logs := newTestServer(t, testConfig(t, sentinelDatabaseURL(deadAddr(t), "pw")))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	errc := make(chan error, 1)
	go func() { errc <- s.db.connectWithRetry(ctx, 5, 5100*time.Millisecond, time.Second) }()
	if !waitFor(10*time.Second, func() bool { return len(retryWaits(logs.String())) >= 2 }) {
		t.Fatalf("second retry not logged within 10s\nlogs:\n%s", logs)
	}
	if got, want := retryWaits(logs.String()), []string{"5.1s", "10s"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("retry_in values = %v, want %v (doubling capped at %v)", got, want, maxConnectBackoff)
	}
	// The 10 s wait is under way: cancelling must end it at once.
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("connectWithRetry after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(time.Second):
		t.Fatalf("connectWithRetry still waiting 1s after its context was cancelled")
	}
}

// TestDatabaseConnectWithRetryStopsWithContext checks that a long backoff ends with
// the context.
func TestDatabaseConnectWithRetryStopsWithContext(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		wantErr error
	}{
		{"cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(200*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 200*time.Millisecond)
		}, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := startDepListener(t, hangUp)
			s, _ := newTestServer(t, testConfig(t, sentinelDatabaseURL(ln.addr, "pw")))
			ctx, cancel := tt.ctx()
			defer cancel()

			start := time.Now()
			err := s.db.connectWithRetry(ctx, 3, 10*time.Second, time.Second)
			elapsed := time.Since(start)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("connectWithRetry(%s ctx, backoff 10s) = %v, want %v", tt.name, err, tt.wantErr)
			}
			if elapsed > 1500*time.Millisecond {
				t.Errorf("connectWithRetry(%s ctx after 200ms, backoff 10s) took %v, want it to return promptly", tt.name, elapsed)
			}
		})
	}
}

// TestDatabaseConnectWithRetrySucceedsAtOnce checks the first attempt against the real
// database.
func TestDatabaseConnectWithRetrySucceedsAtOnce(t *testing.T) {
	t.Parallel()
	s, logs := newTestServer(t, testConfig(t, newTestDatabase(t)))

	start := time.Now()
	if err := s.db.connectWithRetry(context.Background(), 3, 5*time.Second, 2*time.Second); err != nil {
		t.Fatalf("connectWithRetry(real database) = %v, want nil", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("connectWithRetry(real database) took %v, want it to succeed on the first attempt", elapsed)
	}
	if got := retryWaits(logs.String()); len(got) != 0 {
		t.Errorf("retries logged against the real database: %v, want none", got)
	}
}

// TestDatabaseHealthOK checks /health/db against the real database.
func TestDatabaseHealthOK(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, newTestDatabase(t)))
	ts := startTestServer(t, s)

	for _, path := range []string{"/health/db", "/api/v1/health/db"} {
		t.Run(path, func(t *testing.T) {
			status, _, body := get(t, ts.URL, path)
			if status != http.StatusOK {
				t.Fatalf("GET %s = %d %s, want 200", path, status, body)
			}
			m := jsonObject(t, body)
			if m["database"] != "postgresql" || m["connected"] != true || m["status"] != "healthy" {
				t.Errorf("GET %s = %s, want database postgresql, connected true, status healthy", path, body)
			}
			if ms, ok := m["response_time_ms"].(float64); !ok || ms < 0 {
				t.Errorf("GET %s response_time_ms = %v, want a number >= 0", path, m["response_time_ms"])
			}
		})
	}
}

// TestDatabaseHealthStalled probes a database that accepts connections and
// never answers: every probe gets 503 within the timeout, and probes stack up
// neither connections nor goroutines. It does not run in parallel: it
// compares the process's goroutine count before and after.
func TestDatabaseHealthStalled(t *testing.T) {
	ln := startDepListener(t, stayMute)
	const timeout = 500 * time.Millisecond
	cfg := testConfig(t, sentinelDatabaseURL(ln.addr, "pw"),
		"HEALTH_CHECK_TIMEOUT=500ms", "HEALTH_CACHE_TTL=0", "REDIS_PORT="+strconv.Itoa(freePort(t)))
	s, _ := newTestServer(t, cfg)
	ts := startTestServer(t, s)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	before := runtime.NumGoroutine()

	// One probe, then rounds of concurrent ones, each answered in time.
	start := time.Now()
	for round := range 4 {
		n := 1 + 3*round
		results := depGetAll(client, ts.URL, n, "/health/db", "/health/ready")
		for _, r := range results {
			if r.err != nil {
				t.Fatalf("GET %s: %v", r.path, r.err)
			}
			if r.status != http.StatusServiceUnavailable {
				t.Errorf("GET %s (database silent) = %d %s, want 503", r.path, r.status, r.body)
			}
			if r.elapsed > timeout+700*time.Millisecond {
				t.Errorf("GET %s (database silent) took %v, want <= HEALTH_CHECK_TIMEOUT (%v) + 700ms", r.path, r.elapsed, timeout)
			}
			m := jsonObject(t, r.body)
			switch r.path {
			case "/health/db":
				if m["connected"] != false || m["database"] != "postgresql" {
					t.Errorf("GET /health/db (database silent) = %s, want connected false", r.body)
				}
			case "/health/ready":
				if checkStatus(t, r.body, "database") != "unhealthy" {
					t.Errorf("GET /health/ready (database silent) = %s, want checks.database.status unhealthy", r.body)
				}
			}
		}
	}
	elapsed := time.Since(start)

	// Checks share one probe and never stack: about one connection per
	// timeout, not one per request (22 requests were made).
	if got, most := ln.accepted.Load(), int64(elapsed/timeout)+2; got > most {
		t.Errorf("connections to the silent database after %v of probes = %d, want <= %d (one per HEALTH_CHECK_TIMEOUT)", elapsed, got, most)
	}

	// The abandoned probe ends at its own deadline: nothing stays stuck on
	// the silent socket.
	probing := func() bool {
		s.dbCheck.mu.Lock()
		defer s.dbCheck.mu.Unlock()
		return s.dbCheck.probing
	}
	if !waitFor(timeout+time.Second, func() bool { return !probing() }) {
		t.Errorf("database probe still running %v after the last check, want it ended by HEALTH_CHECK_TIMEOUT (%v)", timeout+time.Second, timeout)
	}

	// Once the abandoned probes reach their deadlines, nothing is left.
	client.CloseIdleConnections()
	const tolerance = 5
	var after int
	if !waitFor(5*time.Second, func() bool { after = runtime.NumGoroutine(); return after <= before+tolerance }) {
		t.Errorf("goroutines = %d after the probes settled, want <= %d (%d before, tolerance %d)\n%s",
			after, before+tolerance, before, tolerance, goroutineDump())
	}
}

// depResult is one answer of depGetAll.
type depResult struct {
	path    string
	status  int
	body    []byte
	elapsed time.Duration
	err     error
}

// depGetAll sends n GET requests at once, cycling through paths, and returns
// every answer. It never fails the test itself, so it may run anywhere.
func depGetAll(client *http.Client, base string, n int, paths ...string) []depResult {
	results := make([]depResult, n)
	startGate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			r.path = paths[i%len(paths)]
			<-startGate
			start := time.Now()
			resp, err := client.Get(base + r.path)
			if err != nil {
				r.err = err
				return
			}
			defer resp.Body.Close()
			r.body, r.err = io.ReadAll(resp.Body)
			r.status = resp.StatusCode
			r.elapsed = time.Since(start)
		}()
	}
	close(startGate)
	wg.Wait()
	return results
}

// TestDatabasePoolTimeout checks that a request waits DB_POOL_TIMEOUT for a
// connection, then gets 503 DATABASE_ERROR without driver text.
func TestDatabasePoolTimeout(t *testing.T) {
	t.Parallel()
	s, logs := newTestServer(t, testConfig(t, newTestDatabase(t),
		"DB_POOL_SIZE=1", "DB_MAX_OVERFLOW=0", "DB_POOL_TIMEOUT=300ms"))
	ctx := context.Background()

	// Hold the only connection.
	held, err := s.db.pool.Conn(ctx)
	mustf(t, err, "take the only pooled connection")
	defer held.Close()
	mustf(t, held.PingContext(ctx), "ping the held connection")

	start := time.Now()
	var one int
	err = s.db.queryRow(ctx, "SELECT 1", nil, &one)
	elapsed := time.Since(start)

	var ae *apiError
	if !errors.As(err, &ae) || ae.Code != codeDatabase {
		t.Fatalf("queryRow(exhausted pool) = %v, want an *apiError with code %s", err, codeDatabase)
	}
	if elapsed < 250*time.Millisecond || elapsed > 1500*time.Millisecond {
		t.Errorf("queryRow(exhausted pool) took %v, want about DB_POOL_TIMEOUT (300ms)", elapsed)
	}

	rec := httptest.NewRecorder()
	s.writeError(rec, httptest.NewRequest(http.MethodGet, "/", nil), err)
	body := rec.Body.String()
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(body, `"code":"DATABASE_ERROR"`) {
		t.Errorf("writeError(pool timeout) = %d %s, want 503 DATABASE_ERROR", rec.Code, body)
	}
	for _, leak := range []string{"deadline", "context", "pooled", "pq:", "300ms"} {
		if strings.Contains(body, leak) {
			t.Errorf("writeError(pool timeout) body = %s, want no internal detail like %q", body, leak)
		}
	}
	if len(logLines(logs.String(), "request failed", "DATABASE_ERROR")) != 1 {
		t.Errorf("logs after writeError(pool timeout) = %s, want one \"request failed\" line with DATABASE_ERROR", logs)
	}

	// Released, the connection serves the next query.
	held.Close()
	if err := s.db.queryRow(ctx, "SELECT 1", nil, &one); err != nil || one != 1 {
		t.Errorf("queryRow(SELECT 1) after release = %v (%d), want nil (1)", err, one)
	}
}

// TestDatabaseTranslateDBError checks the translation of real driver errors and
// what writeError makes of them.
func TestDatabaseTranslateDBError(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, newTestDatabase(t)))
	dead, _ := newTestServer(t, testConfig(t, sentinelDatabaseURL(deadAddr(t), "pw")))
	ctx := context.Background()
	_, err := s.db.exec(ctx, `CREATE TABLE clients (email text UNIQUE NOT NULL,
		age int CONSTRAINT clients_age_check CHECK (age >= 0), born date)`)
	mustf(t, err, "create table")
	_, err = s.db.exec(ctx, "INSERT INTO clients (email) VALUES ($1)", "a@example.com")
	mustf(t, err, "first insert")

	tests := []struct {
		name       string
		run        func() error
		wantCode   errorCode // "" means not an *apiError
		wantStatus int
		message    string // what the client is told
		hidden     string // driver text that must not reach the client
	}{
		{"unique violation", func() error {
			_, err := s.db.exec(ctx, "INSERT INTO clients (email) VALUES ($1)", "a@example.com")
			return err
		}, codeConflict, http.StatusConflict, `"field":"email","message":"is already taken"`, "duplicate"},
		{"check violation", func() error {
			_, err := s.db.exec(ctx, "INSERT INTO clients (email, age) VALUES ($1, -1)", "b@example.com")
			return err
		}, codeValidation, http.StatusUnprocessableEntity, `"field":"age"`, "clients_age_check"},
		{"not-null violation", func() error {
			_, err := s.db.exec(ctx, "INSERT INTO clients (age) VALUES (1)")
			return err
		}, codeValidation, http.StatusUnprocessableEntity, `"field":"email","message":"is required"`, "null value"},
		{"invalid text", func() error {
			_, err := s.db.exec(ctx, "INSERT INTO clients (email, born) VALUES ($1, $2)", "c@example.com", "yesterday-ish")
			return err
		}, codeValidation, http.StatusUnprocessableEntity, "not allowed", "yesterday-ish"},
		{"NUL character", func() error {
			_, err := s.db.exec(ctx, "INSERT INTO clients (email) VALUES ($1)", "d\x00@example.com")
			return err
		}, codeValidation, http.StatusUnprocessableEntity, "not allowed", "0x00"},
		{"no rows", func() error {
			var email string
			return s.db.queryRow(ctx, "SELECT email FROM clients WHERE email = $1", []any{"nobody@example.com"}, &email)
		}, codeNotFound, http.StatusNotFound, "not found", "no rows"},
		{"syntax error", func() error {
			var n int
			return s.db.queryRow(ctx, "SELEKT 1", nil, &n)
		}, "", http.StatusInternalServerError, genericInternalMessage, "SELEKT"},
		{"connection refused", func() error {
			var n int
			return dead.db.queryRow(ctx, "SELECT 1", nil, &n)
		}, codeDatabase, http.StatusServiceUnavailable, "unavailable", "refused"},
		{"pool closed (a request cut by shutdown)", func() error {
			closed, _ := newTestServer(t, testConfig(t, adminDatabaseURL()))
			closed.db.close()
			var n int
			return closed.db.queryRow(ctx, "SELECT 1", nil, &n)
		}, codeDatabase, http.StatusServiceUnavailable, "unavailable", "closed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if err == nil {
				t.Fatalf("%s: error = nil, want one", tt.name)
			}
			var ae *apiError
			isAPI := errors.As(err, &ae)
			switch {
			case tt.wantCode == "" && isAPI:
				t.Errorf("%s: error = %v, want a plain error (INTERNAL_ERROR)", tt.name, err)
			case tt.wantCode != "" && (!isAPI || ae.Code != tt.wantCode):
				t.Errorf("%s: error = %v, want an *apiError with code %s", tt.name, err, tt.wantCode)
			}
			rec := httptest.NewRecorder()
			s.writeError(rec, httptest.NewRequest(http.MethodGet, "/", nil), err)
			if rec.Code != tt.wantStatus {
				t.Errorf("%s: writeError status = %d, want %d", tt.name, rec.Code, tt.wantStatus)
			}
			body := rec.Body.String()
			if !strings.Contains(body, tt.message) {
				t.Errorf("%s: writeError body = %s, want the message to say %q", tt.name, body, tt.message)
			}
			if strings.Contains(body, tt.hidden) {
				t.Errorf("%s: writeError body = %s, want no driver text %q", tt.name, body, tt.hidden)
			}
		})
	}
}

// TestDatabaseEcho checks that DB_ECHO logs statements, and only then.
func TestDatabaseEcho(t *testing.T) {
	t.Parallel()
	dbURL := newTestDatabase(t)
	for _, echo := range []bool{true, false} {
		t.Run("DB_ECHO="+strconv.FormatBool(echo), func(t *testing.T) {
			t.Parallel()
			s, logs := newTestServer(t, testConfig(t, dbURL, "DB_ECHO="+strconv.FormatBool(echo), "LOG_LEVEL=INFO"))
			var n int
			err := s.db.queryRow(context.Background(), "SELECT $1::int + 1", []any{4241}, &n)
			if err != nil || n != 4242 {
				t.Fatalf("queryRow(SELECT 4241 + 1) = %v (%d), want nil (4242)", err, n)
			}
			lines := logLines(logs.String(), `msg=sql`, `statement="SELECT $1::int + 1"`)
			if !echo {
				if len(lines) != 0 {
					t.Errorf("DB_ECHO=false logged %q, want nothing", lines)
				}
				return
			}
			if len(lines) != 1 {
				t.Fatalf("DB_ECHO=true statement lines = %q, want exactly one\nlogs:\n%s", lines, logs)
			}
			if !strings.Contains(lines[0], "level=INFO") || !regexp.MustCompile(`duration_ms=[0-9.]+`).MatchString(lines[0]) {
				t.Errorf("DB_ECHO=true line = %q, want level=INFO and a numeric duration_ms", lines[0])
			}
			if strings.Contains(lines[0], "4241") {
				t.Errorf("DB_ECHO=true line = %q, want no arguments logged", lines[0])
			}
		})
	}
}

// TestDatabasePoolRecoversAfterBackendsTerminated checks that both pools replace
// connections whose backends were killed, without a restart.
func TestDatabasePoolRecoversAfterBackendsTerminated(t *testing.T) {
	t.Parallel()
	dbURL := newTestDatabase(t)
	s, _ := newTestServer(t, testConfig(t, dbURL, "HEALTH_CACHE_TTL=0"))
	ts := startTestServer(t, s)
	ctx := context.Background()
	admin := requirePostgres(t)
	defer admin.Close()

	// Open both pools: the health probe's and the request pool.
	if status, _, body := get(t, ts.URL, "/health/db"); status != http.StatusOK {
		t.Fatalf("GET /health/db before = %d %s, want 200", status, body)
	}
	var one int
	mustf(t, s.db.queryRow(ctx, "SELECT 1", nil, &one), "queryRow before")

	// Kill every backend of the test database and wait until they are gone.
	name := databaseName(t, dbURL)
	var killed int
	err := admin.QueryRowContext(ctx,
		"SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
		name).Scan(&killed)
	mustf(t, err, "pg_terminate_backend")
	if killed < 2 {
		t.Fatalf("backends terminated = %d, want >= 2 (health probe and pool)", killed)
	}
	gone := waitFor(5*time.Second, func() bool {
		var n int
		err := admin.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name).Scan(&n)
		return err == nil && n == 0
	})
	if !gone {
		t.Fatalf("backends of %s still alive 5s after pg_terminate_backend", name)
	}

	// One probe is enough: the stale socket is replaced by a fresh one.
	if status, _, body := get(t, ts.URL, "/health/db"); status != http.StatusOK {
		t.Errorf("GET /health/db after the backends were terminated = %d %s, want 200", status, body)
	}

	var lastErr error
	recovered := waitFor(time.Second, func() bool {
		lastErr = s.db.queryRow(ctx, "SELECT 1", nil, &one)
		return lastErr == nil
	})
	if !recovered {
		t.Errorf("queryRow(SELECT 1) after the backends were terminated = %v for 1s, want nil", lastErr)
	}
}

// goroutineDump is the stacks of every goroutine, for a failure message.
func goroutineDump() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

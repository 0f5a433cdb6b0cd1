package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Tests of the whole process: run itself, served from a goroutine of the
// test, and the built binary as a child process for what only a real process
// shows (signals, exit codes, what reaches stdout and stderr).

// Passwords no output may ever show.
const (
	procSentinelDBPassword    = "SENTINEL_pw_9"
	procSentinelRedisPassword = "SENTINEL_redis_7"
)

func TestProcessRun(t *testing.T) {
	t.Parallel()
	requireRedis(t)
	dbURL := newTestDatabase(t)
	p := startProcRun(t, dbURL, "ENVIRONMENT=production", "LOG_LEVEL=DEBUG")

	tests := []struct {
		path   string
		status int
		want   map[string]any
	}{
		{"/", http.StatusOK, map[string]any{"service": "ZenSpa Backend", "status": "running"}},
		{"/health/db", http.StatusOK, map[string]any{"database": "postgresql", "connected": true}},
		{"/health/redis", http.StatusOK, map[string]any{"redis": testRedisAddr, "connected": true}},
		{"/api/v1/health/ready", http.StatusOK, map[string]any{"status": "healthy"}},
		{"/nope", http.StatusNotFound, map[string]any{"status": "error"}},
	}
	for _, tc := range tests {
		status, _, body := get(t, p.base, tc.path)
		if status != tc.status {
			t.Errorf("GET %s = %d %s, want %d", tc.path, status, body, tc.status)
			continue
		}
		m := objectOf(t, "GET "+tc.path, body)
		for k, v := range tc.want {
			if m[k] != v {
				t.Errorf("GET %s %s = %#v, want %#v", tc.path, k, m[k], v)
			}
		}
	}

	// The startup line names the service and where it serves and connects.
	u, err := url.Parse(dbURL)
	mustf(t, err, "parse the test database URL")
	dbPort := u.Port()
	if dbPort == "" {
		dbPort = "5432"
	}
	started := waitLogLine(t, p.logs, "startup line", func(l map[string]any) bool { return l["msg"] == "zenspa started" })
	want := map[string]any{
		"level": "INFO", "name": "ZenSpa Backend", "version": buildVersion, "environment": "production",
		"addr":     net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)),
		"database": u.User.Username() + "@" + net.JoinHostPort(u.Hostname(), dbPort) + u.Path,
	}
	for k, v := range want {
		if started[k] != v {
			t.Errorf("startup line %s = %#v, want %#v", k, started[k], v)
		}
	}
	wantMilliseconds(t, "startup line startup_ms", started["startup_ms"])

	// The password shows nowhere; the logged URL masks it.
	if pw, ok := u.User.Password(); ok && pw != "" {
		if strings.Contains(p.logs.String(), ":"+pw+"@") {
			t.Errorf("the log shows the database password:\n%s", p.logs)
		}
		loaded := waitLogLine(t, p.logs, "configuration line", func(l map[string]any) bool { return l["msg"] == "configuration loaded" })
		cfg, _ := loaded["config"].(map[string]any)
		if dsn, _ := cfg["database_url"].(string); !strings.Contains(dsn, ":"+maskedPassword+"@") {
			t.Errorf("configuration line database_url = %q, want the password masked as %s", dsn, maskedPassword)
		}
	}

	// Ending the context stops run cleanly.
	p.cancel()
	if err := p.wait(t, 5*time.Second); err != nil {
		t.Errorf("run after cancel = %v, want nil", err)
	}
	waitLogLine(t, p.logs, "stop line", func(l map[string]any) bool { return l["msg"] == "stopped" })
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)), time.Second); err == nil {
		c.Close()
		t.Errorf("port %d still accepts connections after run returned", p.port)
	}
	if p.stderr.String() != "" {
		t.Errorf("run wrote to stderr: %q, want nothing", p.stderr)
	}
}

func TestProcessRunWithoutRedis(t *testing.T) {
	t.Parallel()
	deadPort := strconv.Itoa(freePort(t))
	// Readiness answers 200 without Redis: startProcRun waits for it.
	p := startProcRun(t, newTestDatabase(t), "ENVIRONMENT=production", "REDIS_PORT="+deadPort)

	waitLogLine(t, p.logs, "warning that Redis is down", func(l map[string]any) bool {
		return l["level"] == "WARNING" && strings.HasPrefix(l["msg"].(string), "redis not reachable")
	})
	tests := []struct {
		path   string
		status int
		want   map[string]any
	}{
		{"/health", http.StatusOK, map[string]any{"status": "healthy"}},
		{"/", http.StatusOK, map[string]any{"status": "running"}},
		{"/health/redis", http.StatusServiceUnavailable,
			map[string]any{"status": "unhealthy", "connected": false, "redis": "127.0.0.1:" + deadPort}},
		{"/api/v1/health/redis", http.StatusServiceUnavailable, map[string]any{"connected": false}},
		{"/health/db", http.StatusOK, map[string]any{"connected": true}},
		{"/health/ready", http.StatusOK, map[string]any{"status": "healthy"}},
	}
	for _, tc := range tests {
		status, _, body := get(t, p.base, tc.path)
		if status != tc.status {
			t.Errorf("GET %s without Redis = %d %s, want %d", tc.path, status, body, tc.status)
			continue
		}
		m := objectOf(t, "GET "+tc.path, body)
		for k, v := range tc.want {
			if m[k] != v {
				t.Errorf("GET %s without Redis: %s = %#v, want %#v", tc.path, k, m[k], v)
			}
		}
		if tc.path == "/health/ready" {
			redis, _ := m["checks"].(map[string]any)["redis"].(map[string]any)
			if redis["status"] != "unhealthy" {
				t.Errorf("GET /health/ready without Redis: checks.redis = %#v, want unhealthy", redis)
			}
		}
	}
}

func TestProcessServerLimits(t *testing.T) {
	t.Parallel()
	p := startProcRun(t, newTestDatabase(t))
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port))

	for _, tc := range []struct {
		name   string
		size   int
		status int
	}{
		{"headers over 64 KiB", 70 << 10, http.StatusRequestHeaderFieldsTooLarge},
		{"headers of 60 KiB", 60 << 10, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, body := rawExchange(t, addr, 5*time.Second, func(w io.Writer) {
				fmt.Fprintf(w, "GET /health HTTP/1.1\r\nHost: zenspa\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", tc.size))
			})
			if resp.StatusCode != tc.status {
				t.Errorf("GET /health with a %d-byte header = %d %q, want %d", tc.size, resp.StatusCode, body, tc.status)
			}
		})
	}

	t.Run("headers trickling in are cut off", func(t *testing.T) {
		t.Parallel()
		conn, err := net.Dial("tcp", addr)
		mustf(t, err, "dial %s", addr)
		stop, wrote := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(wrote)
			trickleHeader(conn, "GET /health HTTP/1.1\r\nHost: zenspa\r\nX-Slow: ", 500*time.Millisecond, stop)
		}()
		defer func() {
			close(stop)
			conn.Close()
			<-wrote
		}()

		start := time.Now()
		_ = conn.SetReadDeadline(start.Add(12 * time.Second))
		n, err := io.Copy(io.Discard, conn) // until the server hangs up
		elapsed := time.Since(start)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("a client sending one header byte per 500 ms is still connected after 12 s, want it cut at ReadHeaderTimeout (5 s)")
		case elapsed < 4*time.Second:
			t.Errorf("the trickling client was cut after %v (%d bytes, %v), want after ReadHeaderTimeout (5 s)", elapsed, n, err)
		}
	})
}

func TestProcessBinary(t *testing.T) {
	t.Parallel()
	bin := zenspaBinary(t)

	t.Run("version needs no configuration", func(t *testing.T) {
		t.Parallel()
		c := startChild(t, bin, []string{"PATH=" + os.Getenv("PATH")}, "version")
		if code := c.exitCode(t, 5*time.Second); code != 0 {
			t.Fatalf("zenspa version with no environment exited %d, want 0; stderr %q", code, c.stderr)
		}
		if out := c.stdout.String(); !strings.Contains(out, "0.1.0") || strings.Count(out, "\n") != 1 {
			t.Errorf("zenspa version printed %q, want one line with 0.1.0", out)
		}
		if c.stderr.String() != "" {
			t.Errorf("zenspa version wrote %q to stderr, want nothing", c.stderr)
		}
	})

	sentinelURL := func(port int) string {
		return fmt.Sprintf("postgres://zenspa:%s@127.0.0.1:%d/zenspa?sslmode=disable", procSentinelDBPassword, port)
	}

	t.Run("bad configuration exits 2", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name string
			kv   []string
			keys []string // each must be reported on a line of its own
		}{
			{"several bad variables", []string{
				"PORT=abc", "LOG_LEVEL=loud", "DB_POOL_SIZE=-1", "CORS_ORIGINS=*", "HEALTH_CHECK_TIMEOUT=soon",
				"DATABASE_URL=postgresql+asyncpg://zenspa:" + procSentinelDBPassword + "@127.0.0.1:5432/zenspa"},
				[]string{"PORT", "LOG_LEVEL", "DB_POOL_SIZE", "CORS_ORIGINS", "HEALTH_CHECK_TIMEOUT", "DATABASE_URL"}},
			{"port out of range", []string{"PORT=70000", "DATABASE_URL=" + sentinelURL(5432)}, []string{"PORT"}},
			{"no DATABASE_URL", []string{"DATABASE_URL"}, []string{"DATABASE_URL"}},
			{"missing ENV_FILE", []string{"ENV_FILE=/nonexistent/zenspa.env", "DATABASE_URL=" + sentinelURL(5432)}, []string{"ENV_FILE"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				c := startChild(t, bin, childEnv(t, "", slices.Concat([]string{"REDIS_PASSWORD=" + procSentinelRedisPassword}, tc.kv)...), "serve")
				if code := c.exitCode(t, 5*time.Second); code != 2 {
					t.Fatalf("zenspa serve with %v exited %d, want 2; stderr %q", tc.kv, code, c.stderr)
				}
				lines := strings.Split(c.stderr.String(), "\n")
				for _, key := range tc.keys {
					if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(strings.TrimSpace(l), key+":") }) {
						t.Errorf("stderr with %v does not report %s on a line of its own:\n%s", tc.kv, key, c.stderr)
					}
				}
				c.wantNoSecret(t)
			})
		}
	})

	t.Run("PostgreSQL unreachable exits 1", func(t *testing.T) {
		t.Parallel()
		deadPort := freePort(t)
		c := startChild(t, bin, childEnv(t, sentinelURL(deadPort), "DB_CONNECT_ATTEMPTS=2",
			"DB_CONNECT_BACKOFF=100ms", "REDIS_PASSWORD="+procSentinelRedisPassword, "LOG_LEVEL=DEBUG"), "serve")
		if code := c.exitCode(t, 15*time.Second); code != 1 {
			t.Fatalf("zenspa serve with PostgreSQL down exited %d, want 1; stderr %q", code, c.stderr)
		}
		stderr := c.stderr.String()
		for _, want := range []string{"127.0.0.1", strconv.Itoa(deadPort), `"zenspa"`, "2 attempts"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr = %q, want %s in it", stderr, want)
			}
		}
		if n := strings.Count(c.stdout.String(), "retrying"); n != 1 {
			t.Errorf("the log has %d retry lines, want 1 (2 attempts):\n%s", n, c.stdout)
		}
		c.wantNoSecret(t)
	})

	t.Run("bad command line exits 2", func(t *testing.T) {
		t.Parallel()
		for _, args := range [][]string{{"frobnicate"}, {"--port=9000"}, {"-v"}, {"serve", "--verbose"}} {
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				t.Parallel()
				c := startChild(t, bin, childEnv(t, sentinelURL(5432), "REDIS_PASSWORD="+procSentinelRedisPassword), args...)
				if code := c.exitCode(t, 5*time.Second); code != 2 {
					t.Fatalf("zenspa %v exited %d, want 2", args, code)
				}
				if !strings.Contains(c.stderr.String(), "usage: zenspa") {
					t.Errorf("zenspa %v stderr = %q, want the usage", args, c.stderr)
				}
				if c.stdout.String() != "" {
					t.Errorf("zenspa %v stdout = %q, want nothing", args, c.stdout)
				}
				c.wantNoSecret(t)
			})
		}
	})

	t.Run("port taken exits 1", func(t *testing.T) {
		t.Parallel()
		requireRedis(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		mustf(t, err, "listen")
		defer ln.Close()
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		dbURL := newTestDatabase(t)
		c := startChild(t, bin, childEnv(t, dbURL, "PORT="+port, "REDIS_PASSWORD="+procSentinelRedisPassword), "serve")
		if code := c.exitCode(t, 10*time.Second); code != 1 {
			t.Fatalf("zenspa serve on a taken port exited %d, want 1; stderr %q", code, c.stderr)
		}
		if want := "127.0.0.1:" + port; !strings.Contains(c.stderr.String(), want) {
			t.Errorf("stderr = %q, want the address %s in it", c.stderr, want)
		}
		c.wantNoSecret(t)
		if u, _ := url.Parse(dbURL); u != nil {
			if pw, ok := u.User.Password(); ok && strings.Contains(c.stdout.String()+c.stderr.String(), ":"+pw+"@") {
				t.Errorf("output shows the database password:\n%s\n%s", c.stdout, c.stderr)
			}
		}
	})

	// A request in flight during SIGTERM: GET /health/redis against a Redis
	// that accepts and never answers takes about a second (Redis's 1 s read
	// bound), and SIGTERM arrives 300 ms into it.
	inflight := func(t *testing.T, shutdownTimeout string) (*child, inflightResult, time.Time) {
		t.Helper()
		requireRedis(t)
		host, port, _ := net.SplitHostPort(silentListener(t))
		httpPort := strconv.Itoa(freePort(t))
		c := startChild(t, bin, childEnv(t, newTestDatabase(t), "PORT="+httpPort,
			"REDIS_HOST="+host, "REDIS_PORT="+port, "HEALTH_CHECK_TIMEOUT=1.5s", "HEALTH_CACHE_TTL=0",
			"SHUTDOWN_TIMEOUT="+shutdownTimeout), "serve")
		base := "http://127.0.0.1:" + httpPort
		c.waitServing(t, base+"/health/live")

		res := make(chan inflightResult, 1)
		go func() { res <- getOnce(base + "/health/redis") }()
		time.Sleep(300 * time.Millisecond)
		signaled := time.Now()
		mustf(t, c.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
		select {
		case r := <-res:
			return c, r, signaled
		case <-time.After(10 * time.Second):
			t.Fatalf("GET /health/redis still unanswered 10 s after SIGTERM")
			return nil, inflightResult{}, time.Time{}
		}
	}

	t.Run("SIGTERM lets the request in flight finish", func(t *testing.T) {
		t.Parallel()
		c, r, signaled := inflight(t, "10s")
		if r.err != nil {
			t.Fatalf("GET /health/redis in flight at SIGTERM: %v, want a complete answer", r.err)
		}
		if !r.at.After(signaled) {
			t.Errorf("GET /health/redis answered %v before SIGTERM, want it still in flight", signaled.Sub(r.at))
		}
		if r.status != http.StatusServiceUnavailable {
			t.Errorf("GET /health/redis with a silent Redis = %d %s, want 503", r.status, r.body)
		}
		if m := objectOf(t, "GET /health/redis", r.body); m["connected"] != false {
			t.Errorf("GET /health/redis connected = %#v, want false", m["connected"])
		}
		if code := c.exitCode(t, 10*time.Second); code != 0 {
			t.Errorf("zenspa after SIGTERM exited %d, want 0; stderr %q", code, c.stderr)
		}
		for _, want := range []string{"shutting down", "stopped"} {
			if !strings.Contains(c.stdout.String(), want) {
				t.Errorf("the log has no %q line:\n%s", want, c.stdout)
			}
		}
	})

	t.Run("SHUTDOWN_TIMEOUT cuts the request in flight", func(t *testing.T) {
		t.Parallel()
		c, r, _ := inflight(t, "200ms")
		if r.err == nil {
			t.Errorf("GET /health/redis cut at SHUTDOWN_TIMEOUT = complete %d answer, want a broken connection", r.status)
		}
		if code := c.exitCode(t, 10*time.Second); code != 1 {
			t.Errorf("zenspa with SHUTDOWN_TIMEOUT hit exited %d, want 1; stderr %q", code, c.stderr)
		}
		if !strings.Contains(c.stderr.String(), "SHUTDOWN_TIMEOUT") {
			t.Errorf("stderr = %q, want SHUTDOWN_TIMEOUT named", c.stderr)
		}
	})

	t.Run("drain delay answers 503 to readiness", func(t *testing.T) {
		t.Parallel()
		requireRedis(t)
		httpPort := strconv.Itoa(freePort(t))
		c := startChild(t, bin, childEnv(t, newTestDatabase(t), "PORT="+httpPort,
			"SHUTDOWN_DRAIN_DELAY=1s"), "serve")
		base := "http://127.0.0.1:" + httpPort
		c.waitServing(t, base+"/health/ready")

		signaled := time.Now()
		mustf(t, c.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
		time.Sleep(100 * time.Millisecond)
		r := getOnce(base + "/health/ready") // a fresh connection
		if r.err != nil {
			t.Fatalf("GET /health/ready during the drain delay: %v, want an answer", r.err)
		}
		if r.at.Sub(signaled) > 900*time.Millisecond {
			t.Fatalf("GET /health/ready took until %v after SIGTERM, too late to test the 1 s delay", r.at.Sub(signaled))
		}
		if r.status != http.StatusServiceUnavailable {
			t.Errorf("GET /health/ready during the drain delay = %d %s, want 503", r.status, r.body)
		}
		m := objectOf(t, "GET /health/ready", r.body)
		db, _ := m["checks"].(map[string]any)["database"].(map[string]any)
		if m["status"] != "unhealthy" || db["status"] != "healthy" {
			t.Errorf("GET /health/ready during the drain delay = %s, want unhealthy with a healthy database", r.body)
		}
		if code := c.exitCode(t, 10*time.Second); code != 0 {
			t.Errorf("zenspa after SIGTERM exited %d, want 0; stderr %q", code, c.stderr)
		}
		if d := c.exitedAt.Sub(signaled); d < 900*time.Millisecond {
			t.Errorf("zenspa exited %v after SIGTERM, want after the 1 s drain delay", d)
		}
	})
}

// procRun is run(ctx, ["serve"], …) serving from a goroutine of the test.
type procRun struct {
	base     string
	port     int
	logs     *syncBuffer // run's stdout, where the log goes
	stderr   *syncBuffer
	cancel   context.CancelFunc
	finished chan struct{} // closed when run has returned err
	err      error
}

// startProcRun runs `serve` on a free loopback port with testEnv(databaseURL,
// kv...) and waits up to 10 s for /health/ready to answer 200. Cleanup ends it
// and waits for run to return.
func startProcRun(t *testing.T, databaseURL string, kv ...string) *procRun {
	t.Helper()
	port := freePort(t)
	env := testEnv(t, databaseURL, slices.Concat([]string{"HOST=127.0.0.1", "PORT=" + strconv.Itoa(port)}, kv)...)
	ctx, cancel := context.WithCancel(context.Background())
	p := &procRun{
		base: "http://127.0.0.1:" + strconv.Itoa(port), port: port,
		logs: &syncBuffer{}, stderr: &syncBuffer{}, cancel: cancel, finished: make(chan struct{}),
	}
	go func() {
		defer close(p.finished)
		p.err = run(ctx, []string{"serve"}, env, p.logs, p.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.finished:
		case <-time.After(10 * time.Second):
			t.Errorf("run still running 10 s after its context ended")
		}
	})

	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-p.finished:
			t.Fatalf("run returned before serving: %v\nlog:\n%s", p.err, p.logs)
		default:
		}
		if resp, err := client.Get(p.base + "/health/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/health/ready did not answer 200 within 10 s; log:\n%s", p.base, p.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wait returns run's result, failing the test if run does not return within
// limit.
func (p *procRun) wait(t *testing.T, limit time.Duration) error {
	t.Helper()
	select {
	case <-p.finished:
		return p.err
	case <-time.After(limit):
		t.Fatalf("run still running %s after its context ended; log:\n%s", limit, p.logs)
		return nil
	}
}

// wantNoSecret fails if the sentinel passwords show in the child's output.
func (c *child) wantNoSecret(t *testing.T) {
	t.Helper()
	for name, out := range map[string]string{"stdout": c.stdout.String(), "stderr": c.stderr.String()} {
		for _, secret := range []string{procSentinelDBPassword, procSentinelRedisPassword} {
			if strings.Contains(out, secret) {
				t.Errorf("zenspa %v %s shows the password %s:\n%s", c.cmd.Args[1:], name, secret, out)
			}
		}
	}
}

// inflightResult is the outcome of one GET.
type inflightResult struct {
	status int
	body   []byte
	err    error
	at     time.Time // when the answer was complete or failed
}

// getOnce sends one GET on a connection of its own and reads the whole
// answer; it is safe to call from any goroutine.
func getOnce(target string) inflightResult {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(target)
	if err != nil {
		return inflightResult{err: err, at: time.Now()}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return inflightResult{status: resp.StatusCode, body: body, err: err, at: time.Now()}
}

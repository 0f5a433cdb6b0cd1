package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/lib/pq"
)

// Shared test helpers. Tests talk to the real PostgreSQL and Redis that
// `make test` starts (scripts/services.sh); a missing service fails the test
// with a message saying what to start, it never skips.

// testDatabasePassword is the password of the zenspa_test role that
// scripts/services.sh creates for the tests. It is a sentinel: the secret scan
// in TestMain fails the run if it ever shows up in zenspa's output.
const testDatabasePassword = "zenspa-test-pw-SENTINEL-7c1e9a"

// defaultTestDatabaseURL reaches the server as zenspa_test, which may create
// the databases the tests use.
const defaultTestDatabaseURL = "postgres://zenspa_test:" + testDatabasePassword + "@127.0.0.1:5432/postgres?sslmode=disable"

// testRedisPassword is the sentinel REDIS_PASSWORD of the private
// redis-servers the suites start with requirepass.
const testRedisPassword = "zenspa-redis-pw-SENTINEL-3d8f"

// testRedisAddr is the shared Redis; tests use their own key prefixes there.
const testRedisAddr = "127.0.0.1:6379"

// adminDatabaseURL is TEST_DATABASE_URL or the default; its role must be
// allowed to create databases.
func adminDatabaseURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return defaultTestDatabaseURL
}

// randomName returns prefix followed by 12 random hex digits.
func randomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// requirePostgres fails the test when PostgreSQL does not answer.
func requirePostgres(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", adminDatabaseURL())
	if err != nil {
		t.Fatalf("open %s: %v", maskDatabaseURL(adminDatabaseURL()), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		t.Fatalf("PostgreSQL is not reachable at %s (%v): start it with `make services` (or run `make test`), or set TEST_DATABASE_URL",
			maskDatabaseURL(adminDatabaseURL()), err)
	}
	return db
}

// newTestDatabase creates a fresh database for one test, dropped when the
// test ends, and returns its URL.
func newTestDatabase(t testing.TB) string {
	t.Helper()
	admin := requirePostgres(t)
	name := randomName("zenspa_test_")
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		admin.Close()
		t.Fatalf("CREATE DATABASE %s: %v", name, err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		if _, err := admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("DROP DATABASE %s: %v", name, err)
		}
	})
	u, _ := url.Parse(adminDatabaseURL())
	u.Path = "/" + name
	return u.String()
}

// requireRedis fails the test when the shared Redis does not answer.
func requireRedis(t testing.TB) {
	t.Helper()
	c, err := net.DialTimeout("tcp", testRedisAddr, 2*time.Second)
	if err != nil {
		t.Fatalf("Redis is not reachable at %s (%v): start it with `make services` (or run `make test`)", testRedisAddr, err)
	}
	c.Close()
}

// requireToolsEnv is the variable `make test` sets to 1: a missing tool then
// fails the test that needs it instead of skipping it, so that CI runs all.
const requireToolsEnv = "ZENSPA_REQUIRE_TOOLS"

// requireTool returns the path of name, a program looked up on PATH and then
// in /usr/sbin and /sbin (where Debian puts pgbouncer and logrotate, off a
// normal user's PATH), or a file when name holds a slash. A missing tool
// skips the test with a message naming the make target that installs it, so
// that a plain `go test ./...` needs only PostgreSQL and Redis; with
// ZENSPA_REQUIRE_TOOLS=1 it fails the test instead.
func requireTool(t testing.TB, name, makeTarget string) string {
	t.Helper()
	var missing string
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err == nil {
			return name
		}
		missing = name + " not found"
	} else {
		for _, candidate := range []string{name, "/usr/sbin/" + name, "/sbin/" + name} {
			if path, err := exec.LookPath(candidate); err == nil {
				return path
			}
		}
		missing = name + " not found on PATH, in /usr/sbin or in /sbin"
	}
	if os.Getenv(requireToolsEnv) == "1" {
		t.Fatalf("%s: run `%s` (%s=1: a missing tool fails the test)", missing, makeTarget, requireToolsEnv)
	}
	t.Skipf("%s: run `%s` to install it", missing, makeTarget)
	return ""
}

// testEnv returns a lookupEnv for loadConfig: the given KEY=VALUE pairs over
// a working configuration against the test services, with an empty .env file
// so that a developer's own .env never leaks into a test.
func testEnv(t testing.TB, databaseURL string, kv ...string) func(string) (string, bool) {
	t.Helper()
	envFile := filepath.Join(t.TempDir(), "empty.env")
	if err := os.WriteFile(envFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(testRedisAddr)
	m := map[string]string{
		"ENV_FILE":             envFile,
		"DATABASE_URL":         databaseURL,
		"REDIS_HOST":           host,
		"REDIS_PORT":           port,
		"DB_CONNECT_ATTEMPTS":  "1",
		"DB_CONNECT_TIMEOUT":   "2s",
		"HEALTH_CHECK_TIMEOUT": "1s",
		"LOG_LEVEL":            "DEBUG",
	}
	for _, pair := range kv {
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			t.Fatalf("testEnv: %q is not KEY=VALUE", pair)
		}
		m[k] = v
	}
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// testConfig loads a config from testEnv.
func testConfig(t testing.TB, databaseURL string, kv ...string) config {
	t.Helper()
	cfg, err := loadConfig(testEnv(t, databaseURL, kv...))
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	return cfg
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	scanForSecrets("output", p)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newTestServer builds a server from cfg with its pools, closed at cleanup,
// and returns it with its log.
func newTestServer(t testing.TB, cfg config) (*server, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	log := newLogger(logs, cfg.Environment, cfg.LogLevel)
	db, err := openDatabase(cfg, log)
	if err != nil {
		t.Fatalf("openDatabase: %v", err)
	}
	cache := newCache(cfg, log)
	t.Cleanup(func() {
		db.close()
		cache.close()
	})
	return newServer(cfg, log, db, cache), logs
}

// startTestServer serves s.handler() on a real loopback listener.
func startTestServer(t testing.TB, s *server) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(s.handler())
	t.Cleanup(ts.Close)
	return ts
}

// freePort returns a loopback port that was free a moment ago, for a child
// process or server that must listen on a port named in advance. It picks
// below Linux's ephemeral range (32768 and up), where the outgoing
// connections of parallel tests cannot take the port before the child
// listens on it.
func freePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		port := 20000 + mathrand.IntN(12000)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free loopback port between 20000 and 32000")
	return 0
}

// silentListener accepts connections and never answers: a dependency that is
// up but stalled. It is closed at cleanup.
func silentListener(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(io.Discard, c)
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
	return ln.Addr().String()
}

// privateRedis is a redis-server of the test's own on a free port, which the
// test may stop and start again on the same port.
type privateRedis struct {
	t        testing.TB
	port     int
	password string
	cmd      *exec.Cmd
}

// startPrivateRedis starts redis-server (requirepass when password is set);
// it is stopped at cleanup.
func startPrivateRedis(t testing.TB, password string) *privateRedis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not installed: run `make services` (it installs the redis-server package)")
	}
	r := &privateRedis{t: t, port: freePort(t), password: password}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *privateRedis) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// start runs the server and waits until it accepts connections.
func (r *privateRedis) start() {
	r.t.Helper()
	args := []string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"}
	if r.password != "" {
		args = append(args, "--requirepass", r.password)
	}
	r.cmd = exec.Command("redis-server", args...)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", r.addr(), 100*time.Millisecond); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatalf("private redis-server on %s did not start", r.addr())
}

// stop kills the server we started, by PID, and waits for it.
func (r *privateRedis) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// get requests path from base and returns the status, headers and body.
func get(t testing.TB, base, path string) (int, http.Header, []byte) {
	t.Helper()
	return do(t, http.MethodGet, base+path, nil, nil)
}

// do sends one request and reads the whole answer.
func do(t testing.TB, method, target string, header http.Header, body io.Reader) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	client := &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, target, err)
	}
	scanForSecrets("response to "+method+" "+target, b)
	return resp.StatusCode, resp.Header, b
}

// trickleHeader is a slowloris client: it writes prefix to conn, then one
// header byte per interval until stop closes or a write fails.
func trickleHeader(conn net.Conn, prefix string, interval time.Duration, stop <-chan struct{}) {
	if _, err := io.WriteString(conn, prefix); err != nil {
		return
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			if _, err := conn.Write([]byte("a")); err != nil {
				return
			}
		}
	}
}

// discardLogger is for code under test whose log the test does not read.
func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// mustf fails the test with a formatted message when err is not nil.
func mustf(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

// The secret scan. Every suite runs with sentinel passwords: the test role's
// PostgreSQL password in every DATABASE_URL, and testRedisPassword wherever a
// private redis-server runs with requirepass. Everything zenspa prints into a
// syncBuffer (in-process logs, child processes' stdout and stderr) and every
// response body read through do() passes scanForSecrets; TestMain fails the
// run when a sentinel appeared anywhere, after all tests ran.
var secretScan struct {
	mu      sync.Mutex
	scanned int64
	leaks   []string
}

// sentinels are the passwords that must never appear in any output.
func sentinels() []string {
	out := []string{testRedisPassword}
	if u, err := url.Parse(adminDatabaseURL()); err == nil {
		// A short password (a developer's TEST_DATABASE_URL) would match
		// ordinary words; the scan is for distinctive sentinels.
		if p, ok := u.User.Password(); ok && len(p) >= 12 {
			out = append(out, p)
		}
	}
	return out
}

// scanForSecrets records where a sentinel password appeared in p.
func scanForSecrets(where string, p []byte) {
	secretScan.mu.Lock()
	defer secretScan.mu.Unlock()
	secretScan.scanned += int64(len(p))
	for _, s := range sentinels() {
		if i := bytes.Index(p, []byte(s)); i >= 0 {
			start := max(0, i-80)
			excerpt := strings.ReplaceAll(string(p[start:i]), "\n", " ")
			secretScan.leaks = append(secretScan.leaks, fmt.Sprintf("%s: …%s<SENTINEL>", where, excerpt))
		}
	}
}

// zenspaBinary builds the zenspa binary once per test run, into a directory
// TestMain removes, and returns its path, for tests that need a real child
// process.
func zenspaBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "zenspa-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.dir, built.path = dir, filepath.Join(dir, "zenspa")
		out, err := exec.Command("go", "build", "-o", built.path, ".").CombinedOutput()
		if err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

// built is the binary zenspaBinary made.
var built struct {
	once      sync.Once
	dir, path string
	err       error
}

// TestMain runs the tests, removes the built binary, then runs the secret
// scan over all the tests saw.
func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	secretScan.mu.Lock()
	defer secretScan.mu.Unlock()
	if len(secretScan.leaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: secret scan: a sentinel password appeared %d times in zenspa's output or responses:\n", len(secretScan.leaks))
		for _, l := range secretScan.leaks[:min(20, len(secretScan.leaks))] {
			fmt.Fprintln(os.Stderr, "  "+l)
		}
		code = 1
	} else if code == 0 {
		fmt.Printf("secret scan: none of %d sentinel passwords in %d bytes of output and responses\n", len(sentinels()), secretScan.scanned)
	}
	os.Exit(code)
}

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
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

// newMigratedDatabase is newTestDatabase with every migration of schema/
// applied.
func newMigratedDatabase(t testing.TB) string {
	t.Helper()
	dbURL := newTestDatabase(t)
	db, err := openMigrateDB(context.Background(), testConfig(t, dbURL))
	if err != nil {
		t.Fatalf("openMigrateDB: %v", err)
	}
	defer db.Close()
	files, err := loadMigrations(builtinMigrations())
	mustf(t, err, "load the migrations")
	mustf(t, newMigrator(db, files, 30*time.Second, io.Discard).up(context.Background()), "migrate up")
	return dbURL
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

// testVars is the configuration every test starts from: an empty ENV_FILE
// (no developer's .env is read), databaseURL, the shared Redis, DEBUG logs
// and quick failures. The KEY=VALUE pairs in kv override it; a bare KEY
// removes that variable.
func testVars(t testing.TB, databaseURL string, kv ...string) map[string]string {
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
		// On, the rate limit would make every test of the run share one
		// budget, 127.0.0.1's in the shared Redis: the tests of
		// ratelimit_test.go turn it on with keys of their own.
		"RATE_LIMIT": "0",
	}
	for _, pair := range kv {
		if k, v, ok := strings.Cut(pair, "="); ok {
			m[k] = v
		} else {
			delete(m, k)
		}
	}
	return m
}

// testEnv is testVars as run and loadConfig look the environment up.
func testEnv(t testing.TB, databaseURL string, kv ...string) func(string) (string, bool) {
	t.Helper()
	m := testVars(t, databaseURL, kv...)
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// childEnv is testVars as the environment of a zenspa child process, which
// also gets PATH and listens on loopback.
func childEnv(t testing.TB, databaseURL string, kv ...string) []string {
	t.Helper()
	m := testVars(t, databaseURL, slices.Concat([]string{"PATH=" + os.Getenv("PATH"), "HOST=127.0.0.1"}, kv)...)
	env := make([]string, 0, len(m))
	for k, v := range m {
		env = append(env, k+"="+v)
	}
	slices.Sort(env)
	return env
}

// child is a zenspa child process with its output.
type child struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	exited         chan struct{} // closed once the process is reaped
	exitedAt       time.Time
}

// startChild starts bin with exactly env, in an empty directory so that no
// developer's .env is read. Cleanup kills it by its PID if still running.
func startChild(t testing.TB, bin string, env []string, args ...string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(bin, args...), stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan struct{})}
	c.cmd.Dir = t.TempDir()
	c.cmd.Env = env
	c.cmd.Stdout, c.cmd.Stderr = c.stdout, c.stderr
	mustf(t, c.cmd.Start(), "start %s", bin)
	go func() {
		_ = c.cmd.Wait()
		c.exitedAt = time.Now()
		close(c.exited)
	}()
	t.Cleanup(func() {
		if c.running() {
			_ = c.cmd.Process.Kill()
		}
		<-c.exited
	})
	return c
}

// running reports whether the process has not exited yet.
func (c *child) running() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// output is what the process printed, stdout then stderr, for messages.
func (c *child) output() string {
	return c.stdout.String() + c.stderr.String()
}

// exitCode waits for the process to exit and returns its code, failing the
// test if it still runs after limit.
func (c *child) exitCode(t testing.TB, limit time.Duration) int {
	t.Helper()
	select {
	case <-c.exited:
		return c.cmd.ProcessState.ExitCode()
	case <-time.After(limit):
		t.Fatalf("zenspa %v still running after %s; output:\n%s", c.cmd.Args[1:], limit, c.output())
		return -1
	}
}

// waitServing polls target until it answers 200, failing the test if the
// process exits first or 15 s pass.
func (c *child) waitServing(t testing.TB, target string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if !c.running() {
			t.Fatalf("zenspa exited with %v before serving; output:\n%s", c.cmd.ProcessState, c.output())
		}
		if r := getOnce(target); r.err == nil && r.status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 within 15 s; output:\n%s", target, c.output())
		}
		time.Sleep(50 * time.Millisecond)
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

// uuidV4 is the form of a request ID the server makes up.
var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// startWorkers runs a load of a test's own: n goroutines, each calling
// work(worker, i) for i = 0, 1, 2, … with pause after each call, until work
// returns false or finish is called. work hands what it did to record.
// finish stops the workers, waits for them and returns every record; a
// second call (a test's cleanup) returns them again.
func startWorkers[T any](n int, pause time.Duration, work func(worker, i int, record func(...T)) bool) (finish func() []T) {
	stop := make(chan struct{})
	var (
		once    sync.Once
		wg      sync.WaitGroup
		mu      sync.Mutex
		records []T
	)
	record := func(r ...T) {
		mu.Lock()
		records = append(records, r...)
		mu.Unlock()
	}
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if !work(w, i, record) {
					return
				}
				time.Sleep(pause)
			}
		}()
	}
	return func() []T {
		once.Do(func() { close(stop) })
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(records)
	}
}

// edited returns a copy of m with change applied: each key of change set to
// its value, or removed where the value is nil.
func edited(m, change map[string]any) map[string]any {
	c := maps.Clone(m)
	if c == nil {
		c = map[string]any{}
	}
	for k, v := range change {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// objectOf decodes body, which must be one JSON object.
func objectOf(t testing.TB, what string, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil || m == nil {
		t.Fatalf("%s body = %q, want a JSON object (%v)", what, body, err)
	}
	return m
}

// wantKeys fails unless m has exactly the keys want.
func wantKeys(t testing.TB, what string, m map[string]any, want ...string) {
	t.Helper()
	got, w := slices.Sorted(maps.Keys(m)), slices.Sorted(slices.Values(want))
	if !slices.Equal(got, w) {
		t.Errorf("%s keys = %v, want %v", what, got, w)
	}
}

// wantTimestamp fails unless v is an RFC 3339 time in UTC, close to now.
func wantTimestamp(t testing.TB, what string, v any) {
	t.Helper()
	s, _ := v.(string)
	ts, err := time.Parse(time.RFC3339, s)
	if err != nil || !strings.HasSuffix(s, "Z") {
		t.Errorf("%s timestamp = %#v, want RFC 3339 in UTC ending in Z", what, v)
		return
	}
	if d := time.Since(ts); d < -time.Minute || d > time.Minute {
		t.Errorf("%s timestamp = %s, want about now", what, s)
	}
}

// wantErrorEnvelope fails unless the answer is exactly the error envelope
// with code, whose request_id is the X-Request-ID header. It returns the
// decoded body.
func wantErrorEnvelope(t testing.TB, what string, h http.Header, body []byte, code errorCode) map[string]any {
	t.Helper()
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s Content-Type = %q, want application/json", what, ct)
	}
	m := objectOf(t, what, body)
	wantKeys(t, what, m, "status", "error", "timestamp", "request_id")
	if m["status"] != "error" {
		t.Errorf("%s status = %#v, want error", what, m["status"])
	}
	e, ok := m["error"].(map[string]any)
	if !ok {
		t.Fatalf("%s error = %#v, want an object", what, m["error"])
	}
	wantKeys(t, what+" error", e, "code", "message", "details")
	if e["code"] != string(code) {
		t.Errorf("%s error.code = %#v, want %s", what, e["code"], code)
	}
	if msg, _ := e["message"].(string); msg == "" {
		t.Errorf("%s error.message = %#v, want a message", what, e["message"])
	}
	wantTimestamp(t, what, m["timestamp"])
	if id := h.Get(headerRequestID); id == "" || m["request_id"] != id {
		t.Errorf("%s request_id = %#v, want the X-Request-ID header %q", what, m["request_id"], id)
	}
	return m
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

// A private PostgreSQL, for a test that restarts or stops the server under
// load: initdb in a temporary directory and pg_ctl on a free loopback port,
// from the OS package's server binaries. initdb refuses to run as root, so a
// test running as root runs every server command as the postgres user, who
// then owns the directory.

// privatePostgres is a PostgreSQL server of the test's own.
type privatePostgres struct {
	t    testing.TB
	url  string // the postgres database as the superuser postgres, trust auth
	bin  string // where initdb and pg_ctl are
	dir  string // holds data and the server log; removed at cleanup
	cred *syscall.Credential
}

// startPrivatePostgres initializes a cluster and starts it: loopback only,
// trust auth, no fsync, small shared buffers. At cleanup it is stopped with
// `pg_ctl stop -m immediate` and its directory removed.
func startPrivatePostgres(t testing.TB) *privatePostgres {
	t.Helper()
	bin, err := postgresBinDir()
	if err != nil {
		t.Fatalf("%v: install the postgresql package (`make services` does)", err)
	}
	// Not t.TempDir: its parents are private to the user running the test,
	// and the postgres user must reach the data directory.
	dir, err := os.MkdirTemp("", "zenspa-pg-")
	mustf(t, err, "make the private PostgreSQL's directory")
	p := &privatePostgres{t: t, bin: bin, dir: dir}
	t.Cleanup(func() {
		p.stop()
		os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		p.cred, err = postgresUser()
		mustf(t, err, "run initdb as someone other than root")
		mustf(t, os.Chown(dir, int(p.cred.Uid), int(p.cred.Gid)), "hand %s to the postgres user", dir)
	}

	data := filepath.Join(dir, "data")
	p.run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
	port := freePort(t)
	settings := fmt.Sprintf(`
port = %d
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 50
shared_buffers = 16MB
fsync = off
synchronous_commit = off
full_page_writes = off
`, port)
	conf, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	mustf(t, err, "open postgresql.conf")
	_, err = conf.WriteString(settings)
	mustf(t, errors.Join(err, conf.Close()), "write postgresql.conf")
	p.pgctl("start")
	p.url = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	return p
}

// restart is `pg_ctl restart -m fast`: every session is ended, and the call
// returns once the server accepts connections again.
func (p *privatePostgres) restart() {
	p.t.Helper()
	p.pgctl("restart", "-m", "fast")
}

// stop is `pg_ctl stop -m immediate`; it does nothing when the server is not
// running.
func (p *privatePostgres) stop() {
	p.t.Helper()
	if _, err := os.Stat(filepath.Join(p.dir, "data", "postmaster.pid")); err != nil {
		return
	}
	p.pgctl("stop", "-m", "immediate")
}

// pgctl runs pg_ctl on the cluster, waiting at most a minute for it to
// start or stop. The server logs to a file, so that it holds none of the
// test's pipes open.
func (p *privatePostgres) pgctl(args ...string) {
	p.t.Helper()
	p.run("pg_ctl", append([]string{"-D", filepath.Join(p.dir, "data"), "-l", filepath.Join(p.dir, "server.log"), "-w", "-t", "60"}, args...)...)
}

// run runs one of the server binaries as the cluster's owner, failing the
// test with its output and the server log's end when it fails.
func (p *privatePostgres) run(name string, args ...string) {
	p.t.Helper()
	cmd := exec.Command(filepath.Join(p.bin, name), args...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(p.dir, "server.log"))
		p.t.Fatalf("%s %s: %v\n%s\nserver log (end):\n%s", name, strings.Join(args, " "), err, out, log[max(0, len(log)-2000):])
	}
}

// postgresBinDir finds initdb and pg_ctl: on PATH, where pg_config says, or
// in the newest /usr/lib/postgresql/N/bin (Debian keeps them off PATH).
func postgresBinDir() (string, error) {
	var dirs []string
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(versions, func(a, b string) int { return postgresMajor(b) - postgresMajor(a) })
	for _, dir := range append(dirs, versions...) {
		if isFile(filepath.Join(dir, "initdb")) && isFile(filepath.Join(dir, "pg_ctl")) {
			return dir, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries (initdb and pg_ctl) on PATH, at pg_config --bindir or in /usr/lib/postgresql/*/bin")
}

// postgresMajor is N of /usr/lib/postgresql/N/bin, 0 if it is no number.
func postgresMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// isFile reports whether path is a regular file.
func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// postgresUser is the credential of the postgres user, which the OS
// package creates.
func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("no postgres user (%v): install the postgresql package", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("postgres user: %v", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// migrateTestDatabase runs `zenspa migrate up` against the database at
// dbURL.
func migrateTestDatabase(t testing.TB, dbURL string) {
	t.Helper()
	var stdout, stderr syncBuffer
	if err := run(context.Background(), []string{"migrate", "up"}, testEnv(t, dbURL), &stdout, &stderr); err != nil {
		t.Fatalf("zenspa migrate up: %v\n%s%s", err, stdout.String(), stderr.String())
	}
}

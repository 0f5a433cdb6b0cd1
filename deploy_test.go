package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"debug/elf"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Tests for running zenspa on a VM: the release build, the self-probe,
// systemd (unit file and sd_notify), secrets from files, LOG_FILE rotation,
// PgBouncer in transaction mode and TLS to PostgreSQL.

// TestMakeBuildIsStaticAndStamped builds with `make build` and checks that
// the binary is static and that `version` shows the stamped values.
func TestMakeBuildIsStaticAndStamped(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "zenspa")
	cmd := exec.Command("make", "-s", "build", "BINARY="+bin, "VERSION=9.8.7", "COMMIT=abc123def456", "DATE=2026-01-02T03:04:05Z")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	mustf(t, err, "open %s as ELF", bin)
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("make build produced a dynamically linked binary (it has an ELF interpreter); want CGO_ENABLED=0, static")
		}
	}
	out, err := exec.Command(bin, "version").Output()
	mustf(t, err, "zenspa version")
	for _, want := range []string{"9.8.7", "abc123def456", "2026-01-02T03:04:05Z"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("zenspa version = %q, want it to contain %q", out, want)
		}
	}
}

// TestVersionFallsBackWithoutStamps checks a plain go build: version 0.1.0
// and no configuration needed.
func TestVersionFallsBackWithoutStamps(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"version"}, func(string) (string, bool) { return "", false }, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run(version) = %v, want nil", err)
	}
	if got := stdout.String(); !strings.HasPrefix(got, "zenspa 0.1.0 (commit ") || !strings.Contains(got, "built ") {
		t.Errorf("run(version) printed %q, want \"zenspa 0.1.0 (commit …, built …)\"", got)
	}
}

// TestHealthcheckCommand probes a ready server, an unready one and a port
// where nothing listens, with no DATABASE_URL in the environment.
func TestHealthcheckCommand(t *testing.T) {
	t.Parallel()
	ready := httptest503(t, http.StatusOK)
	unready := httptest503(t, http.StatusServiceUnavailable)
	dead := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	emptyEnvFile := filepath.Join(t.TempDir(), "empty.env")
	mustf(t, os.WriteFile(emptyEnvFile, nil, 0o600), "write an empty .env")
	env := func(k string) (string, bool) {
		if k == "ENV_FILE" {
			return emptyEnvFile, true
		}
		return "", false // no DATABASE_URL: healthcheck must not need it
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"ready", []string{"--url", ready}, 0, "ready: " + ready + "/health/ready answered 200"},
		{"ready with path", []string{"--url", ready + "/health/ready"}, 0, "ready: "},
		{"unready", []string{"--url", unready}, 1, "answered 503"},
		{"nothing listens", []string{"--url", dead, "--timeout", "1s"}, 1, "not ready: " + dead},
		{"bad flag", []string{"--nope"}, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"healthcheck"}, tt.args...), env, &stdout, &stderr)
			code := 0
			if err != nil {
				code = exitCode(err)
			}
			if code != tt.wantCode {
				t.Errorf("healthcheck %v: exit code %d (err %v), want %d", tt.args, code, err, tt.wantCode)
			}
			if !strings.Contains(stdout.String(), tt.wantOut) {
				t.Errorf("healthcheck %v printed %q, want it to contain %q", tt.args, stdout.String(), tt.wantOut)
			}
			if tt.wantCode != 2 && strings.Count(stdout.String(), "\n") != 1 {
				t.Errorf("healthcheck %v printed %q, want exactly one line", tt.args, stdout.String())
			}
		})
	}

	// Without --url it asks 127.0.0.1:$PORT, PORT read from the environment.
	port := strings.TrimPrefix(ready, "http://127.0.0.1:")
	var stdout bytes.Buffer
	portEnv := func(k string) (string, bool) {
		if k == "PORT" {
			return port, true
		}
		return env(k)
	}
	if err := run(context.Background(), []string{"healthcheck"}, portEnv, &stdout, io.Discard); err != nil {
		t.Errorf("healthcheck with PORT=%s: %v (printed %q), want ready", port, err, stdout.String())
	}
}

// httptest503 serves /health/ready with the given status on a loopback port.
func httptest503(t *testing.T, status int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	mustf(t, err, "listen")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health/ready" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestSystemdUnitVerifies runs systemd-analyze verify on the shipped unit
// (with ExecStart pointed at a freshly built binary, since verify insists
// that the executable exists) and checks the sandbox directives.
func TestSystemdUnitVerifies(t *testing.T) {
	t.Parallel()
	systemdAnalyze := requireTool(t, "systemd-analyze", "make services-test")
	unit, err := os.ReadFile("deploy/zenspa.service")
	mustf(t, err, "read the unit")
	for _, want := range []string{
		"Type=notify", "EnvironmentFile=/etc/zenspa/zenspa.env", "User=zenspa", "Restart=on-failure",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service",
		"LoadCredential=database_url:", "LoadCredential=redis_password:",
		"DATABASE_URL_FILE=%d/database_url", "REDIS_PASSWORD_FILE=%d/redis_password",
		"ExecStart=/usr/local/bin/zenspa serve",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("deploy/zenspa.service lacks %q", want)
		}
	}
	bin := zenspaBinary(t)
	dir := t.TempDir()
	copyUnit := filepath.Join(dir, "zenspa.service")
	err = os.WriteFile(copyUnit, bytes.ReplaceAll(unit, []byte("/usr/local/bin/zenspa"), []byte(bin)), 0o644)
	mustf(t, err, "write the unit copy")
	out, err := exec.Command(systemdAnalyze, "verify", copyUnit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v, output %q; want success and no output", err, out)
	}
}

// TestLogrotateConfigParses checks the shipped logrotate file with
// logrotate's own parser.
func TestLogrotateConfigParses(t *testing.T) {
	t.Parallel()
	logrotate := requireTool(t, "logrotate", "make services-test")
	state := filepath.Join(t.TempDir(), "state")
	out, err := exec.Command(logrotate, "--debug", "--state", state, "deploy/zenspa.logrotate").CombinedOutput()
	if err != nil || bytes.Contains(bytes.ToLower(out), []byte("error")) {
		t.Errorf("logrotate --debug deploy/zenspa.logrotate: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("/var/log/zenspa/*.log")) {
		t.Errorf("logrotate did not read the /var/log/zenspa/*.log rule:\n%s", out)
	}
}

// TestSDNotify listens on a unix datagram socket as systemd does and checks
// that serve sends READY=1 once it answers HTTP and STOPPING=1 on shutdown.
func TestSDNotify(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	mustf(t, err, "listen on %s", sock)
	defer conn.Close()

	port := freePort(t)
	env := testEnv(t, newTestDatabase(t), "PORT="+strconv.Itoa(port), "HOST=127.0.0.1", "NOTIFY_SOCKET="+sock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, env, io.Discard, io.Discard) }()

	read := func() string {
		t.Helper()
		buf := make([]byte, 256)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := conn.Read(buf)
		mustf(t, err, "read a notification")
		return string(buf[:n])
	}
	if got := read(); got != "READY=1" {
		t.Fatalf("first notification = %q, want READY=1", got)
	}
	// READY=1 promises a listening server and a database that answered.
	if status, _, _ := get(t, "http://127.0.0.1:"+strconv.Itoa(port), "/health/ready"); status != http.StatusOK {
		t.Errorf("GET /health/ready right after READY=1 = %d, want 200", status)
	}
	cancel()
	if got := read(); got != "STOPPING=1" {
		t.Errorf("notification on shutdown = %q, want STOPPING=1", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return 10 s after cancel")
	}
}

// TestSecretsFromFiles covers DATABASE_URL_FILE and REDIS_PASSWORD_FILE.
func TestSecretsFromFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		mustf(t, os.WriteFile(p, []byte(content), 0o600), "write %s", name)
		return p
	}
	const dbURL = "postgres://u:SENTINEL_file_pw@127.0.0.1:5432/db"
	urlFile := write("database_url", dbURL+"\n")
	crlfFile := write("database_url_crlf", dbURL+"\r\n")
	pwFile := write("redis_password", "SENTINEL_redis_file\n")
	empty := write("empty.env", "")

	load := func(kv ...string) (config, error) {
		m := map[string]string{"ENV_FILE": empty}
		for _, pair := range kv {
			k, v, _ := strings.Cut(pair, "=")
			m[k] = v
		}
		return loadConfig(func(k string) (string, bool) { v, ok := m[k]; return v, ok })
	}

	cfg, err := load("DATABASE_URL_FILE="+urlFile, "REDIS_PASSWORD_FILE="+pwFile)
	mustf(t, err, "loadConfig with both _FILE variables")
	if cfg.DatabaseURL != dbURL || cfg.RedisPassword != "SENTINEL_redis_file" {
		t.Errorf("from files: DatabaseURL %q, RedisPassword %q; want the file contents without the newline", cfg.DatabaseURL, cfg.RedisPassword)
	}
	cfg, err = load("DATABASE_URL_FILE=" + crlfFile)
	mustf(t, err, "loadConfig with a CRLF file")
	if cfg.DatabaseURL != dbURL {
		t.Errorf("from a CRLF file: DatabaseURL %q, want %q", cfg.DatabaseURL, dbURL)
	}

	bad := []struct {
		name string
		kv   []string
		want string
	}{
		{"both DATABASE_URL and its file", []string{"DATABASE_URL=" + dbURL, "DATABASE_URL_FILE=" + urlFile}, "DATABASE_URL: is set together with DATABASE_URL_FILE"},
		{"both REDIS_PASSWORD and its file", []string{"DATABASE_URL=" + dbURL, "REDIS_PASSWORD=SENTINEL_x", "REDIS_PASSWORD_FILE=" + pwFile}, "REDIS_PASSWORD: is set together with REDIS_PASSWORD_FILE"},
		{"missing DATABASE_URL_FILE", []string{"DATABASE_URL_FILE=" + filepath.Join(dir, "nope")}, "DATABASE_URL_FILE: cannot read"},
		{"missing REDIS_PASSWORD_FILE", []string{"DATABASE_URL=" + dbURL, "REDIS_PASSWORD_FILE=" + filepath.Join(dir, "nope")}, "REDIS_PASSWORD_FILE: cannot read"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(tt.kv...)
			if err == nil || exitCode(err) != 2 {
				t.Fatalf("loadConfig(%v) = %v, want a configuration error (exit 2)", tt.kv, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("loadConfig(%v) = %q, want it to contain %q", tt.kv, err, tt.want)
			}
			if strings.Contains(err.Error(), "SENTINEL") {
				t.Errorf("loadConfig(%v) = %q: the error shows a secret", tt.kv, err)
			}
		})
	}
}

// TestLogFileReopensOnSIGHUP runs the binary with LOG_FILE under load, moves
// the file away twice as logrotate does, sends SIGHUP after each move, and
// counts the access-log lines over all files: none may be lost.
func TestLogFileReopensOnSIGHUP(t *testing.T) {
	t.Parallel()
	bin := zenspaBinary(t)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "zenspa.log")
	port := freePort(t)
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "serve")
	cmd.Dir = dir
	cmd.Env = childEnv(t, newTestDatabase(t), "PORT="+strconv.Itoa(port), "HOST=127.0.0.1",
		"LOG_FILE="+logPath, "LOG_LEVEL=INFO")
	mustf(t, cmd.Start(), "start %s", bin)
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	waitUntilReady(t, base)

	const workers, perWorker = 8, 150
	var sent atomic.Int64
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 5 * time.Second}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				resp, err := client.Get(base + "/")
				if err != nil {
					t.Errorf("GET /: %v", err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				sent.Add(1)
			}
		}()
	}
	for i := 1; i <= 2; i++ {
		for sent.Load() < int64(i*workers*perWorker/3) {
			time.Sleep(time.Millisecond)
		}
		mustf(t, os.Rename(logPath, logPath+"."+strconv.Itoa(i)), "rotate")
		mustf(t, cmd.Process.Signal(syscall.SIGHUP), "SIGHUP")
	}
	wg.Wait()
	mustf(t, cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
	mustf(t, cmd.Wait(), "zenspa exit")

	total := 0
	for _, name := range []string{logPath + ".1", logPath + ".2", logPath} {
		n := countLines(t, name, "msg=request ")
		if n == 0 {
			t.Errorf("%s holds no request lines: the rotation did not switch files", filepath.Base(name))
		}
		total += n
	}
	if want := workers * perWorker; total != want {
		t.Errorf("request lines over all log files = %d, want %d (one per request)", total, want)
	}
	fi, err := os.Stat(logPath)
	mustf(t, err, "stat the new log file")
	if perm := fi.Mode().Perm(); perm != 0o640 {
		t.Errorf("LOG_FILE mode = %v, want 0640", perm)
	}
}

// countLines counts the lines of name that contain substr.
func countLines(t *testing.T, name, substr string) int {
	t.Helper()
	f, err := os.Open(name)
	mustf(t, err, "open %s", name)
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			n++
		}
	}
	mustf(t, sc.Err(), "read %s", name)
	return n
}

// TestPgBouncerTransactionMode puts PgBouncer in transaction mode between
// zenspa and PostgreSQL and runs health checks, the migrations and
// parameterized queries under concurrency: no errors allowed.
func TestPgBouncerTransactionMode(t *testing.T) {
	t.Parallel()
	dbURL := newTestDatabase(t)
	bouncerURL := startPgBouncer(t, dbURL)

	// The migrations, through the pooler.
	var stdout, stderr bytes.Buffer
	env := testEnv(t, bouncerURL, "HEALTH_CACHE_TTL=0")
	if err := run(context.Background(), []string{"migrate", "up"}, env, &stdout, &stderr); err != nil {
		t.Fatalf("migrate up through PgBouncer: %v\n%s%s", err, stdout.String(), stderr.String())
	}

	cfg := testConfig(t, bouncerURL, "HEALTH_CACHE_TTL=0", "DB_POOL_SIZE=8", "DB_MAX_OVERFLOW=8")
	s, _ := newTestServer(t, cfg)
	mustf(t, s.db.connectWithRetry(context.Background(), 1, time.Second, 5*time.Second), "connect through PgBouncer")
	ts := startTestServer(t, s)

	var applied int
	mustf(t, s.db.queryRow(context.Background(), "SELECT count(*) FROM schema_migrations WHERE version >= $1", []any{1}, &applied), "count migrations")
	if applied == 0 {
		t.Errorf("schema_migrations through PgBouncer has no rows after migrate up")
	}

	var errs atomic.Int64
	var first sync.Once
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 60; i++ {
				var sum int
				err := s.db.queryRow(context.Background(), "SELECT $1::int + $2::int", []any{i, g}, &sum)
				if err != nil || sum != i+g {
					errs.Add(1)
					first.Do(func() { t.Errorf("SELECT $1 + $2 through PgBouncer = %d, %v; want %d", sum, err, i+g) })
				}
				if i%10 == 0 {
					for _, path := range []string{"/health/db", "/health/ready"} {
						if status, _, body := get(t, ts.URL, path); status != http.StatusOK {
							errs.Add(1)
							first.Do(func() { t.Errorf("GET %s through PgBouncer = %d %s, want 200", path, status, body) })
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	if n := errs.Load(); n != 0 {
		t.Errorf("%d errors behind PgBouncer in transaction mode, want 0", n)
	}
}

// startPgBouncer starts pgbouncer in transaction mode on a free port in
// front of dbURL's server and returns dbURL rewritten to go through it.
func startPgBouncer(t *testing.T, dbURL string) string {
	t.Helper()
	pgbouncer := requireTool(t, "pgbouncer", "make services-test")
	u, err := url.Parse(dbURL)
	mustf(t, err, "parse the test database URL")
	password, _ := u.User.Password()
	// pgbouncer drops root privileges to nobody, who must read these files.
	dir, err := os.MkdirTemp("", "zenspa-pgbouncer-")
	mustf(t, err, "make a directory for pgbouncer")
	t.Cleanup(func() { os.RemoveAll(dir) })
	mustf(t, os.Chmod(dir, 0o755), "chmod")
	port := freePort(t)
	users := filepath.Join(dir, "users.txt")
	mustf(t, os.WriteFile(users, []byte(fmt.Sprintf("%q %q\n", u.User.Username(), password)), 0o644), "write users")
	ini := filepath.Join(dir, "pgbouncer.ini")
	conf := fmt.Sprintf(`[databases]
* = host=%s port=%s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = md5
auth_file = %s
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
`, u.Hostname(), u.Port(), port, users)
	mustf(t, os.WriteFile(ini, []byte(conf), 0o644), "write pgbouncer.ini")

	args := []string{ini}
	if os.Geteuid() == 0 {
		args = []string{"-u", "nobody", ini} // pgbouncer refuses to run as root
	}
	cmd := exec.Command(pgbouncer, args...)
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	mustf(t, cmd.Start(), "start pgbouncer")
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbouncer did not listen on %s: %v\n%s", addr, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	u.Host = addr
	return u.String()
}

// TestDatabaseTLS connects with sslmode=require and sslmode=verify-ca
// against the local server's certificate, checks pg_stat_ssl, and checks that
// a wrong root certificate fails startup with a clear message.
func TestDatabaseTLS(t *testing.T) {
	t.Parallel()
	dbURL := newTestDatabase(t)
	u, _ := url.Parse(dbURL)
	dir := t.TempDir()
	serverCert := filepath.Join(dir, "server.pem")
	mustf(t, os.WriteFile(serverCert, serverCertificatePEM(t, u.Host), 0o600), "write the server certificate")
	wrongCA := filepath.Join(dir, "wrong-ca.pem")
	mustf(t, os.WriteFile(wrongCA, selfSignedPEM(t), 0o600), "write a wrong CA")

	withParams := func(kv ...string) string {
		v := *u
		q := v.Query()
		for i := 0; i < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		v.RawQuery = q.Encode()
		return v.String()
	}
	for _, tt := range []struct{ name, url string }{
		{"require", withParams("sslmode", "require")},
		{"verify-ca", withParams("sslmode", "verify-ca", "sslrootcert", serverCert)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, tt.url)
			s, _ := newTestServer(t, cfg)
			mustf(t, s.db.connectWithRetry(context.Background(), 1, time.Second, 5*time.Second), "connect with sslmode=%s", tt.name)
			var encrypted bool
			mustf(t, s.db.queryRow(context.Background(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil, &encrypted), "read pg_stat_ssl")
			if !encrypted {
				t.Errorf("pg_stat_ssl.ssl = false with sslmode=%s, want true", tt.name)
			}
			if status, _, body := get(t, startTestServer(t, s).URL, "/health/db"); status != http.StatusOK {
				t.Errorf("GET /health/db with sslmode=%s = %d %s, want 200", tt.name, status, body)
			}
		})
	}

	t.Run("wrong root certificate", func(t *testing.T) {
		env := testEnv(t, withParams("sslmode", "verify-ca", "sslrootcert", wrongCA), "PORT="+strconv.Itoa(freePort(t)))
		err := run(context.Background(), nil, env, io.Discard, io.Discard)
		if err == nil || exitCode(err) != 1 {
			t.Fatalf("run with a wrong sslrootcert = %v, want a startup failure (exit 1)", err)
		}
		msg := err.Error()
		for _, want := range []string{"cannot connect to PostgreSQL", "certificate"} {
			if !strings.Contains(msg, want) {
				t.Errorf("startup error = %q, want it to mention %q", msg, want)
			}
		}
		if pw, _ := u.User.Password(); pw != "" && strings.Contains(msg, ":"+pw+"@") {
			t.Errorf("startup error = %q: it shows the password", msg)
		}
	})
}

// serverCertificatePEM asks the PostgreSQL server at hostport for TLS (the
// SSLRequest message) and returns its certificate, which for Debian's
// self-signed default is also the root to verify it with.
func serverCertificatePEM(t *testing.T, hostport string) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", hostport, 5*time.Second)
	mustf(t, err, "dial PostgreSQL")
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req := make([]byte, 8)
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], 80877103) // the SSLRequest code
	_, err = c.Write(req)
	mustf(t, err, "send SSLRequest")
	answer := make([]byte, 1)
	_, err = io.ReadFull(c, answer)
	mustf(t, err, "read the SSLRequest answer")
	if answer[0] != 'S' {
		t.Fatalf("PostgreSQL at %s answered %q to SSLRequest: TLS is off (Debian's package enables it with the snakeoil certificate; set ssl = on)", hostport, answer)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // only to read the certificate
	mustf(t, tc.Handshake(), "TLS handshake")
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		t.Fatal("PostgreSQL sent no certificate")
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certs[len(certs)-1].Raw})
}

// selfSignedPEM makes a CA certificate that signed nothing the server has.
func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mustf(t, err, "generate a key")
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "not the server's CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	mustf(t, err, "create a certificate")
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// waitUntilReady polls base/health/ready until it answers 200, for 10 s at
// most.
func waitUntilReady(t *testing.T, base string) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := client.Get(base + "/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s/health/ready did not answer 200 within 10 s", base)
}

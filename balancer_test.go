package main

import (
	"database/sql"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Tests of deploy/haproxy.cfg: HAProxy's own check of the file, the headers
// and retries it promises, and a rolling restart of three zenspa instances
// behind it under a steady mix of reads and writes. Each test runs HAProxy
// with the shipped file, rewritten only where a test must differ: loopback
// ports, the foreground, the log on stderr (balancerSetup).

// shippedHAProxyConfig is the configuration deploy/README.md installs.
const shippedHAProxyConfig = "deploy/haproxy.cfg"

// TestHAProxyConfig checks the shipped file as HAProxy reads it, with the
// server addresses it names, and that the drain delay of deploy/zenspa.env
// outlasts the time the checks take to take an instance out.
func TestHAProxyConfig(t *testing.T) {
	t.Parallel()
	haproxy := requireTool(t, "haproxy", "make services-test")
	out, err := exec.Command(haproxy, "-c", "-f", shippedHAProxyConfig).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Configuration file is valid") {
		t.Errorf("haproxy -c -f %s: %v\n%s", shippedHAProxyConfig, err, out)
	}
	if strings.Contains(string(out), "WARNING") || strings.Contains(string(out), "ALERT") {
		t.Errorf("haproxy -c -f %s warns:\n%s", shippedHAProxyConfig, out)
	}

	// An instance that turns unready is out after at most fall checks, one
	// every inter, plus the checks' own time: the drain must last at least
	// one more interval.
	inter, fall := shippedCheckTiming(t)
	drain := deployDuration(t, "SHUTDOWN_DRAIN_DELAY")
	if least := time.Duration(fall+1) * inter; drain < least {
		t.Errorf("SHUTDOWN_DRAIN_DELAY = %s with checks every %s, fall %d: want at least %s, or instances still get requests after their listener closes",
			drain, inter, fall, least)
	}
}

// TestBalancerHeaders sends requests with and without X-Forwarded-For and
// X-Request-ID through the balancer to a server that echoes what it got: the
// client's address replaces any X-Forwarded-For, a request ID zenspa would
// keep is kept, and anything else becomes a UUID.
func TestBalancerHeaders(t *testing.T) {
	t.Parallel()
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(headerRequestID, r.Header.Get(headerRequestID)) // as zenspa echoes it
		_ = json.NewEncoder(w).Encode(r.Header)
	}))
	t.Cleanup(echo.Close)
	b := startBalancer(t, echo.Listener.Addr().String())

	long := strings.Repeat("a", 129)
	for _, tc := range []struct {
		name   string
		header http.Header
		wantID string // "" wants a new UUID
	}{
		{"nothing", http.Header{}, ""},
		{"a forged client address", http.Header{"X-Forwarded-For": {"203.0.113.7, 10.0.0.1"}}, ""},
		{"a request ID", http.Header{headerRequestID: {"client-7.b:c_d"}}, "client-7.b:c_d"},
		{"128 characters", http.Header{headerRequestID: {long[:128]}}, long[:128]},
		{"129 characters", http.Header{headerRequestID: {long}}, ""},
		{"a slash", http.Header{headerRequestID: {"a/b"}}, ""},
		{"a comma", http.Header{headerRequestID: {"a,b"}}, ""},
		{"two of them", http.Header{headerRequestID: {"a", "b"}}, ""},
	} {
		status, h, body := do(t, http.MethodGet, b.url+"/anything", tc.header, nil)
		if status != http.StatusOK {
			t.Fatalf("GET with %s = %d %s, want 200", tc.name, status, body)
		}
		var got http.Header
		mustf(t, json.Unmarshal(body, &got), "decode the echo of %s", tc.name)
		if xff := got.Values("X-Forwarded-For"); !slices.Equal(xff, []string{"127.0.0.1"}) {
			t.Errorf("with %s the server got X-Forwarded-For %q, want only [127.0.0.1]", tc.name, xff)
		}
		ids := got.Values(headerRequestID)
		switch {
		case len(ids) != 1:
			t.Errorf("with %s the server got X-Request-ID %q, want one", tc.name, ids)
		case tc.wantID != "" && ids[0] != tc.wantID:
			t.Errorf("with %s the server got X-Request-ID %q, want the client's %q", tc.name, ids[0], tc.wantID)
		case tc.wantID == "" && !uuidV4.MatchString(ids[0]):
			t.Errorf("with %s the server got X-Request-ID %q, want a new UUID", tc.name, ids[0])
		case h.Get(headerRequestID) != ids[0]:
			t.Errorf("with %s the client got X-Request-ID %q, want the server's %q", tc.name, h.Get(headerRequestID), ids[0])
		}
		if len(ids) == 1 && !b.logged("{"+ids[0]+"}") {
			t.Errorf("with %s the balancer's log has no {%s}:\n%s", tc.name, ids[0], b.proc.output())
		}
	}
}

// TestBalancerRetries puts a healthy server beside a broken one and sends
// numbered GETs and POSTs: where the connection is refused, every request is
// answered by the healthy server; where the broken one closes connections
// without answering, every GET is answered after a retry, and no POST ever
// reaches a second server.
func TestBalancerRetries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		closes bool // the broken server accepts, then closes without an answer
	}{
		{"refused", false},
		{"closed without an answer", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			good, broken := newSeqServer(t, false), newSeqServer(t, true)
			healthy := good.Listener.Addr().String()
			_, goodPort, _ := net.SplitHostPort(healthy)
			// The refusing server is checked on the healthy one's port, so
			// that the balancer keeps sending it requests.
			brokenLine := "127.0.0.1:" + strconv.Itoa(freePort(t)) + " port " + goodPort
			if tc.closes {
				brokenLine = broken.Listener.Addr().String()
			}
			b := startBalancer(t, brokenLine, healthy)

			// One connection per request: every request is the first on its
			// connection, so a failure is HAProxy's 502, not a silent close.
			// The GETs go first: round robin then sends each of them to the
			// broken server first, since a retry moves it on by one.
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			retriedGETs, failedPOSTs := 0, 0
			for i := range 40 {
				method := http.MethodGet
				if i >= 20 {
					method = http.MethodPost
				}
				seq := strconv.Itoa(i)
				req, err := http.NewRequest(method, b.url+"/seq", strings.NewReader(`{"n":`+seq+`}`))
				mustf(t, err, "new request")
				req.Header.Set("X-Test-Seq", seq)
				resp, err := client.Do(req)
				status := 0
				if err == nil {
					status = resp.StatusCode
					resp.Body.Close()
				}
				g, br := good.hits(seq), broken.hits(seq)
				switch {
				case method == http.MethodGet && (status != http.StatusOK || g != 1):
					t.Errorf("GET %s = %d %v, reached the healthy server %d times (broken %d): want 200 from it, after a retry if need be", seq, status, err, g, br)
				case method == http.MethodGet:
					retriedGETs += br
				case g+br != 1:
					t.Errorf("POST %s reached the healthy server %d times and the broken one %d: want exactly once in all", seq, g, br)
				case status != http.StatusCreated:
					failedPOSTs++
					if !tc.closes || br != 1 {
						t.Errorf("POST %s = %d %v, healthy server %d times, broken %d: want 201 unless the broken server closed on it", seq, status, err, g, br)
					}
				}
			}
			if tc.closes && (retriedGETs < 10 || failedPOSTs == 0) {
				t.Errorf("GETs retried after the broken server closed = %d, POSTs it failed = %d: want at least 10 and 1, or the test proves little", retriedGETs, failedPOSTs)
			}
			st := b.serverStats(t)
			t.Logf("GETs retried: %d, POSTs not retried: %d; the balancer counts %s redispatches", retriedGETs, failedPOSTs, st["vm1"]["wredis"])
		})
	}
}

// seqServer counts the requests it gets by their X-Test-Seq header. It
// answers /health/ready with 200; other requests get 200 (GET) or 201, or,
// from a closing server, a closed connection and nothing else.
type seqServer struct {
	*httptest.Server
	mu  sync.Mutex
	seq map[string]int
}

// newSeqServer serves until the test ends.
func newSeqServer(t *testing.T, closes bool) *seqServer {
	s := &seqServer{seq: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health/ready" {
			return
		}
		s.mu.Lock()
		s.seq[r.Header.Get("X-Test-Seq")]++
		s.mu.Unlock()
		if closes {
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusCreated)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// hits is how many times request seq arrived.
func (s *seqServer) hits(seq string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq[seq]
}

// TestRollingRestart runs three zenspa instances of one database behind
// HAProxy with the shipped configuration and the shipped drain delay, sends
// a steady mix of list, get-by-id and create requests through it, and
// restarts the instances one after the other: SIGTERM, wait for the exit,
// start a new one on the same port, wait until the balancer has it back.
// Not one request may fail, every 201 must be in the database exactly once,
// and every instance must exit 0.
func TestRollingRestart(t *testing.T) {
	t.Parallel()
	requireRedis(t)
	p := newProject(t)
	dbURL := newMigratedDatabase(t)
	drain, shutdownTimeout := deployDuration(t, "SHUTDOWN_DRAIN_DELAY"), deployDuration(t, "SHUTDOWN_TIMEOUT")
	bin := zenspaBinary(t)

	// The instances, configured as deploy/zenspa.env shuts them down.
	const instances = 3
	ports := make([]int, instances)
	servers := make([]string, instances)
	for i := range ports {
		ports[i] = freePort(t)
		servers[i] = "127.0.0.1:" + strconv.Itoa(ports[i])
	}
	start := func(i int) *child {
		t.Helper()
		c := startChild(t, bin, childEnv(t, dbURL, slices.Concat(p.env(), []string{
			"PORT=" + strconv.Itoa(ports[i]), "SHUTDOWN_DRAIN_DELAY=" + drain.String(),
			"SHUTDOWN_TIMEOUT=" + shutdownTimeout.String(), "HEALTH_CHECK_TIMEOUT", "LOG_LEVEL=INFO",
		})...))
		c.waitServing(t, "http://"+servers[i]+"/health/ready")
		return c
	}
	running := make([]*child, instances)
	for i := range running {
		running[i] = start(i)
	}
	b := startBalancer(t, servers...)

	load := startRollingLoad(t, b.url, p.token(t, algES256, p.manager()), 4)
	var codes []string
	failed := false
	for i := range running {
		name := "vm" + strconv.Itoa(i+1)
		time.Sleep(time.Second) // all three serve for a while
		old := running[i]
		signalled := time.Now()
		mustf(t, old.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM %s", name)
		down := b.waitServer(t, name, "DOWN", drain+5*time.Second)
		code := old.exitCode(t, drain+shutdownTimeout+5*time.Second)
		codes = append(codes, name+"="+strconv.Itoa(code))
		if code != 0 {
			failed = true
			t.Errorf("%s exit code after SIGTERM = %d, want 0; output:\n%s", name, code, old.output())
		}
		// The listener closes when the drain ends: the balancer must have
		// taken the instance out before.
		if listenerClosed := signalled.Add(drain); !down.Before(listenerClosed) {
			t.Errorf("%s: the balancer marked it DOWN %s after SIGTERM, not before its listener closed (%s)",
				name, down.Sub(signalled).Round(time.Millisecond), drain)
		}
		restarted := time.Now()
		running[i] = start(i)
		up := b.waitServer(t, name, "UP", 15*time.Second)
		t.Logf("%s: DOWN at the balancer %s after SIGTERM, exited %s after it; back UP %s after the restart",
			name, down.Sub(signalled).Round(time.Millisecond), old.exitedAt.Sub(signalled).Round(time.Millisecond),
			up.Sub(restarted).Round(time.Millisecond))
	}
	time.Sleep(time.Second) // the new three serve for a while too
	results := load.finish()
	stats := b.serverStats(t)
	for i, c := range running {
		mustf(t, c.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM the new vm%d", i+1)
	}
	for i, c := range running {
		code := c.exitCode(t, drain+shutdownTimeout+5*time.Second)
		codes = append(codes, "new vm"+strconv.Itoa(i+1)+"="+strconv.Itoa(code))
		if code != 0 {
			failed = true
			t.Errorf("new vm%d exit code after SIGTERM = %d, want 0; output:\n%s", i+1, code, c.output())
		}
	}

	// Every request answered as it should be.
	counts := map[string]map[int]int{}
	var created []rollingResult
	bad := 0
	for _, r := range results {
		if counts[r.kind] == nil {
			counts[r.kind] = map[int]int{}
		}
		counts[r.kind][r.status]++
		want := map[string]int{"list": http.StatusOK, "get": http.StatusOK, "create": http.StatusCreated}[r.kind]
		if r.err == nil && r.status == want {
			if r.kind == "create" {
				created = append(created, r)
			}
			continue
		}
		if bad++; bad <= 10 {
			t.Errorf("%s (X-Request-ID %s) at %s = %d %v %s, want %d; the balancer logged:\n%s", r.kind, r.requestID,
				r.at.Format("15:04:05.000"), r.status, r.err, r.body, want, strings.Join(logLines(b.proc.output(), "{"+r.requestID+"}"), "\n"))
		}
	}
	if bad > 0 {
		failed = true
		t.Errorf("%d of %d requests failed", bad, len(results))
	}
	for _, kind := range []string{"list", "get", "create"} {
		if n := sumValues(counts[kind]); n < 50 {
			t.Errorf("%s requests = %d, want at least 50 (is the load running?)", kind, n)
		}
	}

	// Every 201 in the database once; nothing else there.
	db, err := sql.Open("postgres", dbURL)
	mustf(t, err, "open the test database")
	defer db.Close()
	rows, err := db.Query(`SELECT id, name FROM treatments WHERE name LIKE $1 || '%'`, load.prefix)
	mustf(t, err, "read back the treatments")
	found := map[string]int{} // by "id name"
	n := 0
	for rows.Next() {
		var id, name string
		mustf(t, rows.Scan(&id, &name), "scan a treatment")
		found[id+" "+name]++
		n++
	}
	mustf(t, rows.Err(), "read back the treatments")
	for _, r := range created {
		if got := found[r.created+" "+r.name]; got != 1 {
			failed = true
			t.Errorf("treatment %s %q answered 201 and is in the database %d times, want once", r.created, r.name, got)
		}
	}
	if n != len(created) {
		failed = true
		t.Errorf("rows in the database = %d, POSTs answered 201 = %d: want as many", n, len(created))
	}

	t.Logf("%d requests through the balancer: list %v, get %v, create %v (status: count)",
		len(results), counts["list"], counts["get"], counts["create"])
	t.Logf("POSTs answered 201: %d; rows found: %d; exit codes: %s", len(created), n, strings.Join(codes, " "))
	for _, name := range slices.Sorted(maps.Keys(stats)) {
		s := stats[name]
		down := s["chkdown"] + " times DOWN"
		if s["chkdown"] == "" {
			down = "not checked" // a backup server
		}
		t.Logf("balancer %s: %s requests, %s retries, %s redispatches, %s 5xx, %s", name, s["stot"], s["wretr"], s["wredis"], s["hrsp_5xx"], down)
	}
	if failed {
		t.Logf("the balancer's log:\n%s", b.proc.output())
	}
}

// rollingLoad is a steady mix from a few clients through the balancer: the
// menu's first page, a treatment by id, and new treatments with unique
// names, one kind after the other.
type rollingLoad struct {
	base, token string
	prefix      string // of every name it creates
	client      *http.Client
	first       rollingResult // the seed treatment's POST
	workers     func() []rollingResult

	mu  sync.Mutex
	ids []string // of the treatments it created
}

// rollingResult is one request of a rollingLoad.
type rollingResult struct {
	kind      string // list, get or create
	requestID string // sent, so that the balancer's log can be searched
	at        time.Time
	status    int
	body      []byte
	err       error
	name      string // of a create
	created   string // the id a create's 201 returned
}

// startRollingLoad creates one treatment for the gets to read, then starts
// the clients; cleanup stops them.
func startRollingLoad(t *testing.T, base, token string, clients int) *rollingLoad {
	t.Helper()
	l := &rollingLoad{
		base: base + "/api/v1/treatments", token: token, prefix: randomName("rolling-"),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}},
	}
	l.first = l.send("create", "seed", 0)
	if l.first.status != http.StatusCreated || l.first.err != nil {
		t.Fatalf("the first POST through the balancer = %d %v %s, want 201", l.first.status, l.first.err, l.first.body)
	}
	kinds := []string{"list", "get", "create", "get"}
	l.workers = startWorkers(clients, 5*time.Millisecond, func(c, i int, record func(...rollingResult)) bool {
		record(l.send(kinds[(c+i)%len(kinds)], strconv.Itoa(c), i))
		return true
	})
	t.Cleanup(func() { l.finish() })
	return l
}

// send makes one request of kind, the i-th of client c.
func (l *rollingLoad) send(kind, c string, i int) rollingResult {
	r := rollingResult{kind: kind, requestID: l.prefix + "-" + c + "-" + strconv.Itoa(i), at: time.Now()}
	method, target, body := http.MethodGet, l.base+"?limit=20", ""
	switch kind {
	case "get":
		l.mu.Lock()
		target = l.base + "/" + l.ids[i%len(l.ids)]
		l.mu.Unlock()
	case "create":
		r.name = l.prefix + " " + c + "-" + strconv.Itoa(i)
		method, target = http.MethodPost, l.base
		body = fmt.Sprintf(`{"name":%q,"duration_minutes":60,"price":350000}`, r.name)
	}
	req, err := http.NewRequest(method, target, strings.NewReader(body))
	if err != nil {
		r.err = err
		return r
	}
	req.Header.Set(headerRequestID, r.requestID)
	if kind == "create" {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+l.token)
	}
	resp, err := l.client.Do(req)
	if err != nil {
		r.err = err
		return r
	}
	defer resp.Body.Close()
	r.status = resp.StatusCode
	r.body, r.err = io.ReadAll(resp.Body)
	if r.err != nil || !json.Valid(r.body) {
		r.err = fmt.Errorf("the answer is cut or not JSON (%v)", r.err)
		return r
	}
	if kind == "create" && r.status == http.StatusCreated {
		var answer struct{ Data treatment }
		if err := json.Unmarshal(r.body, &answer); err != nil || answer.Data.ID == "" {
			r.err = fmt.Errorf("a 201 without a treatment (%v)", err)
			return r
		}
		r.created = answer.Data.ID
		l.mu.Lock()
		l.ids = append(l.ids, r.created)
		l.mu.Unlock()
	}
	if r.status < 300 {
		r.body = nil // only failures are shown
	}
	return r
}

// finish stops the clients and returns every result.
func (l *rollingLoad) finish() []rollingResult {
	results := append([]rollingResult{l.first}, l.workers()...)
	l.client.CloseIdleConnections()
	return results
}

// balancer is an HAProxy of a test's own, running deploy/haproxy.cfg with
// its servers replaced.
type balancer struct {
	url      string // the zenspa frontend
	statsURL string // the stats page's CSV
	proc     *child
}

// startBalancer runs HAProxy in the foreground with servers ("ADDRESS
// [PARAMETERS]", named vm1, vm2, …) and waits until it counts each of them
// UP. Cleanup kills it by its PID.
func startBalancer(t *testing.T, servers ...string) *balancer {
	t.Helper()
	haproxy := requireTool(t, "haproxy", "make services-test")
	dir := t.TempDir()
	setup := balancerSetup{front: freePort(t), stats: freePort(t), socket: filepath.Join(dir, "admin.sock"), servers: servers}
	for setup.stats == setup.front {
		setup.stats = freePort(t)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	mustf(t, os.WriteFile(cfg, []byte(setup.config(t)), 0o600), "write %s", cfg)
	if out, err := exec.Command(haproxy, "-c", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c on the test's configuration: %v\n%s", err, out)
	}
	b := &balancer{
		url:      "http://127.0.0.1:" + strconv.Itoa(setup.front),
		statsURL: "http://127.0.0.1:" + strconv.Itoa(setup.stats) + "/stats;csv",
		proc:     startChild(t, haproxy, []string{"PATH=" + os.Getenv("PATH")}, "-db", "-f", cfg),
	}
	for i := range servers {
		b.waitServer(t, "vm"+strconv.Itoa(i+1), "UP", 15*time.Second)
	}
	return b
}

// logged reports whether the balancer's log has s within a second: HAProxy
// writes a request's line once the answer has gone.
func (b *balancer) logged(s string) bool {
	for range 20 {
		if strings.Contains(b.proc.output(), s) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// waitServer polls the stats page until server's state is want ("UP",
// "DOWN") and returns when it first saw it, failing the test after limit.
func (b *balancer) waitServer(t *testing.T, server, want string, limit time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	last := "no answer"
	for {
		if !b.proc.running() {
			t.Fatalf("haproxy exited: %v\n%s", b.proc.cmd.ProcessState, b.proc.output())
		}
		if st, err := b.readStats(); err == nil {
			last = st[server]["status"]
			if last == want {
				return time.Now()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the balancer's %s is %q after %s, want %s; its log:\n%s", server, last, limit, want, b.proc.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serverStats is readStats, failing the test when the page does not answer.
func (b *balancer) serverStats(t *testing.T) map[string]map[string]string {
	t.Helper()
	st, err := b.readStats()
	mustf(t, err, "read the balancer's stats")
	return st
}

// readStats returns the servers of backend zenspa, each as its row of the
// stats CSV by column: status is "UP", "DOWN", or "UP 1/2" going down and
// "DOWN 1/2" going up; stot, wretr and wredis count requests, retries and
// redispatches.
func (b *balancer) readStats() (map[string]map[string]string, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(b.statsURL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	records, err := csv.NewReader(resp.Body).ReadAll()
	if err != nil || len(records) == 0 {
		return nil, fmt.Errorf("stats CSV: %v (%d lines)", err, len(records))
	}
	columns := records[0]
	columns[0] = strings.TrimPrefix(columns[0], "# ")
	out := map[string]map[string]string{}
	for _, rec := range records[1:] {
		row := map[string]string{}
		for i, c := range columns {
			if i < len(rec) {
				row[c] = rec[i]
			}
		}
		if row["pxname"] == "zenspa" && row["svname"] != "FRONTEND" && row["svname"] != "BACKEND" {
			out[row["svname"]] = row
		}
	}
	return out, nil
}

// balancerSetup is what a test's HAProxy changes in the shipped file: the
// two frontends on loopback ports, the runtime socket in the test's
// directory, the servers, and the global settings of a daemon (jail, user,
// background, syslog), since the test runs it in the foreground as a child
// that logs to stderr. Everything else, the checks, retries, headers and
// timeouts, is the shipped text.
type balancerSetup struct {
	front, stats int // ports of frontends zenspa and stats
	socket       string
	servers      []string // "ADDRESS [PARAMETERS]"
}

// config is the shipped file with the setup's changes.
func (s balancerSetup) config(t *testing.T) string {
	t.Helper()
	var out strings.Builder
	binds := 0
	servers := false
	for _, l := range haproxyLines(t) {
		line := l.text
		key := ""
		if len(l.fields) > 0 {
			key = l.fields[0]
		}
		switch {
		case l.section == "global" && slices.Contains([]string{"chroot", "user", "group", "daemon"}, key):
			continue
		case l.section == "global" && key == "log":
			line = "    log stderr format raw local0"
		case l.section == "global" && key == "stats" && len(l.fields) > 2 && l.fields[1] == "socket":
			line = "    " + strings.Join(slices.Concat(l.fields[:2], []string{s.socket}, l.fields[3:]), " ")
		case key == "bind":
			port := map[string]int{"frontend zenspa": s.front, "frontend stats": s.stats}[l.section]
			if port == 0 {
				t.Fatalf("%s: a bind in %q, which the test does not know", shippedHAProxyConfig, l.section)
			}
			binds++
			line = "    " + strings.Join(slices.Concat([]string{"bind", "127.0.0.1:" + strconv.Itoa(port)}, l.fields[2:]), " ")
		case key == "server":
			if servers {
				continue
			}
			servers = true
			for i, srv := range s.servers {
				fmt.Fprintf(&out, "    server vm%d %s\n", i+1, srv)
			}
			for i, srv := range s.servers { // the backups, as the shipped file has them
				fmt.Fprintf(&out, "    server vm%d-backup %s backup no-check\n", i+1, strings.Fields(srv)[0])
			}
			continue
		}
		out.WriteString(line + "\n")
	}
	if binds != 2 || !servers {
		t.Fatalf("%s: %d binds and servers %v, want the binds of frontends zenspa and stats and server lines", shippedHAProxyConfig, binds, servers)
	}
	return out.String()
}

// haproxyLine is one line of the shipped file with the section it is in
// ("global", "backend zenspa") and its words without a comment.
type haproxyLine struct {
	section string
	text    string
	fields  []string
}

// haproxyLines reads the shipped file.
func haproxyLines(t *testing.T) []haproxyLine {
	t.Helper()
	data, err := os.ReadFile(shippedHAProxyConfig)
	mustf(t, err, "read %s", shippedHAProxyConfig)
	var lines []haproxyLine
	section := ""
	for text := range strings.SplitSeq(strings.TrimSuffix(string(data), "\n"), "\n") {
		code, _, _ := strings.Cut(text, "#") // the file has no # but in comments
		fields := strings.Fields(code)
		if len(fields) > 0 && text[0] != ' ' && text[0] != '\t' {
			section = strings.Join(fields, " ")
		}
		lines = append(lines, haproxyLine{section: section, text: text, fields: fields})
	}
	return lines
}

// shippedCheckTiming returns the inter and fall of the shipped backend's
// default-server line.
func shippedCheckTiming(t *testing.T) (inter time.Duration, fall int) {
	t.Helper()
	for _, l := range haproxyLines(t) {
		if l.section != "backend zenspa" || len(l.fields) == 0 || l.fields[0] != "default-server" {
			continue
		}
		for i := 1; i+1 < len(l.fields); i++ {
			switch l.fields[i] {
			case "inter":
				v := l.fields[i+1]
				if _, err := strconv.Atoi(v); err == nil {
					v += "ms" // HAProxy's unit when none is given
				}
				d, err := time.ParseDuration(v)
				mustf(t, err, "%s: inter %q", shippedHAProxyConfig, l.fields[i+1])
				inter = d
			case "fall":
				n, err := strconv.Atoi(l.fields[i+1])
				mustf(t, err, "%s: fall %q", shippedHAProxyConfig, l.fields[i+1])
				fall = n
			}
		}
	}
	if inter == 0 || fall == 0 {
		t.Fatalf("%s: no inter and fall on the default-server line of backend zenspa", shippedHAProxyConfig)
	}
	return inter, fall
}

// deployDuration is a duration variable of deploy/zenspa.env.
func deployDuration(t *testing.T, key string) time.Duration {
	t.Helper()
	data, err := os.ReadFile("deploy/zenspa.env")
	mustf(t, err, "read deploy/zenspa.env")
	vars, err := parseDotenv("deploy/zenspa.env", data)
	mustf(t, err, "parse deploy/zenspa.env")
	d, err := time.ParseDuration(vars[key])
	mustf(t, err, "deploy/zenspa.env: %s", key)
	return d
}

// sumValues adds up the counts of m.
func sumValues(m map[int]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// TestRateLimitThroughBalancer: three instances behind the balancer share
// one budget per client address in Redis. One address sending three times
// the limit gets the limit admitted (±1) and 429s with a sane Retry-After
// for the rest; another address has a budget of its own; a forged
// X-Forwarded-For buys no new budget, through the balancer or straight from
// a peer the instances do not trust.
func TestRateLimitThroughBalancer(t *testing.T) {
	t.Parallel()
	const limit = 30
	redis := startPrivateRedis(t, testRedisPassword)
	p := newProject(t)
	dbURL := newMigratedDatabase(t)
	bin := zenspaBinary(t)
	var servers []string
	for range 3 {
		port := freePort(t)
		servers = append(servers, "127.0.0.1:"+strconv.Itoa(port))
		c := startChild(t, bin, childEnv(t, dbURL, slices.Concat(p.env(), []string{
			"PORT=" + strconv.Itoa(port), "LOG_LEVEL=INFO", "REDIS_HOST=127.0.0.1", "REDIS_PORT=" + strconv.Itoa(redis.port),
			"REDIS_PASSWORD=" + testRedisPassword, "RATE_LIMIT=" + strconv.Itoa(limit), "RATE_LIMIT_WINDOW=1m",
			"TRUSTED_PROXIES=127.0.0.1/32", // the balancer's address, and no one else's
		})...))
		c.waitServing(t, "http://"+servers[len(servers)-1]+"/health/ready")
	}
	b := startBalancer(t, servers...)

	// from sends n GETs of the menu from a loopback address of its own, each
	// with the X-Forwarded-For forged(i) returns ("" for none), and counts
	// the answers by status.
	from := func(source, base string, n int, forged func(i int) string) (map[int]int, []string) {
		t.Helper()
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}).DialContext}}
		defer client.CloseIdleConnections()
		statuses := map[int]int{}
		var retryAfter []string
		for i := range n {
			req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/treatments?limit=1", nil)
			if f := forged(i); f != "" {
				req.Header.Set("X-Forwarded-For", f)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("GET from %s: %v", source, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses[resp.StatusCode]++
			if resp.StatusCode == http.StatusTooManyRequests {
				retryAfter = append(retryAfter, resp.Header.Get("Retry-After"))
			}
			if resp.Header.Get("RateLimit-Limit") != strconv.Itoa(limit) {
				t.Errorf("GET from %s: RateLimit-Limit = %q, want %d", source, resp.Header.Get("RateLimit-Limit"), limit)
			}
		}
		return statuses, retryAfter
	}
	none := func(int) string { return "" }
	admitted := func(what string, got map[int]int, want int) {
		t.Helper()
		if n := got[http.StatusOK]; n < want-1 || n > want+1 || got[http.StatusOK]+got[http.StatusTooManyRequests] != sumValues(got) {
			t.Errorf("%s: answers %v, want %d (±1) admitted and the rest 429", what, got, want)
		}
		t.Logf("%s: %v", what, got)
	}

	got, retryAfter := from("127.0.0.2", b.url, 3*limit, none)
	admitted("one address, three times the limit, through the balancer", got, limit)
	for _, ra := range retryAfter {
		if n, err := strconv.Atoi(ra); err != nil || n < 1 || n > 60 {
			t.Errorf("Retry-After = %q, want whole seconds from 1 to the window (60)", ra)
			break
		}
	}
	// The budget held across the three instances, not per instance.
	for name, s := range b.serverStats(t) {
		if n, _ := strconv.Atoi(s["stot"]); strings.HasPrefix(name, "vm") && !strings.HasSuffix(name, "-backup") && n < limit/2 {
			t.Errorf("balancer %s served %s requests, want each instance to have served many", name, s["stot"])
		}
	}
	got, _ = from("127.0.0.3", b.url, 10, none)
	admitted("another address, through the balancer", got, 10)
	got, _ = from("127.0.0.2", b.url, 10, func(i int) string { return fmt.Sprintf("198.51.100.%d", i+1) })
	admitted("the first address again, forging X-Forwarded-For", got, 0)
	// Straight to an instance, from a peer it does not trust: the header is
	// ignored, the peer's own address is the budget.
	got, _ = from("127.0.0.4", "http://"+servers[0], 2*limit, func(i int) string { return fmt.Sprintf("203.0.113.%d", i+1) })
	admitted("an untrusted peer forging a new X-Forwarded-For each time", got, limit)
}

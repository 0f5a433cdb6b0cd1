package main

import (
	"database/sql"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The soak (`make soak`, RELIABILITY.md): three instances behind HAProxy on
// a private PostgreSQL (behind the fault proxy) and a private Redis, a
// client with mixed reads and writes at a steady rate, and a fault every
// ~20 s in an order fixed by a seed. The first fifth of the run is fault
// free: its p99 is the yardstick of the rest. At the end every invariant is
// a row of a table, and the test fails if one does not hold.

// soakFaults are the faults, in the order a seed shuffles.
var soakFaults = []string{"postgres restart", "postgres stall 5s", "redis kill", "instance SIGKILL", "rolling restart"}

// soakCall is one request of the soak's client.
type soakCall struct {
	kind       string // list, get, post, patch
	name       string // a POST's treatment
	start, end time.Time
	status     int
	err        error
}

// soakWindow is when a fault was under way, with a margin after it.
type soakWindow struct {
	kind       string
	start, end time.Time
}

// soakInstance is one zenspa behind the balancer.
type soakInstance struct {
	name       string
	port       int
	c          *child
	goroutines float64 // after its warm-up
	rssKB      int
}

func TestSoak(t *testing.T) {
	length, err := time.ParseDuration(os.Getenv("ZENSPA_SOAK"))
	if err != nil || length <= 0 {
		t.Skip("the soak runs only with ZENSPA_SOAK=<duration>: run `make soak` (or `SOAK=60s make soak`)")
	}
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("ZENSPA_SOAK_SEED"), 10, 64); err == nil {
		seed = s
	}
	requireRedis(t)
	pg := startPrivatePostgres(t)
	migrateTestDatabase(t, pg.url)
	proxy := startFaultProxy(t, urlHost(t, pg.url))
	dbURL := withHost(t, pg.url, proxy.addr)
	redis := startPrivateRedis(t, testRedisPassword)
	p := newProject(t)
	bin := zenspaBinary(t)
	drain := deployDuration(t, "SHUTDOWN_DRAIN_DELAY")

	instances := make([]*soakInstance, 3)
	var servers []string
	for i := range instances {
		instances[i] = &soakInstance{name: "vm" + strconv.Itoa(i+1), port: freePort(t)}
		servers = append(servers, "127.0.0.1:"+strconv.Itoa(instances[i].port))
	}
	start := func(in *soakInstance) {
		t.Helper()
		in.c = startChild(t, bin, childEnv(t, dbURL, slices.Concat(p.env(), []string{
			"PORT=" + strconv.Itoa(in.port), "LOG_LEVEL=WARNING", "REDIS_HOST=127.0.0.1", "REDIS_PORT=" + strconv.Itoa(redis.port),
			"REDIS_PASSWORD=" + testRedisPassword, "SHUTDOWN_DRAIN_DELAY=" + drain.String(), "HEALTH_CHECK_TIMEOUT=1s",
			"REQUEST_TIMEOUT=3s", "DB_POOL_TIMEOUT=3s", "DB_CONNECT_ATTEMPTS=5",
		})...))
		in.c.waitServing(t, "http://127.0.0.1:"+strconv.Itoa(in.port)+"/health/ready")
	}
	for _, in := range instances {
		start(in)
	}
	b := startBalancer(t, servers...)

	// The schedule: a fault-free fifth, then faults every ~20 s (more often in
	// a short soak, so that each kind comes at least once), cycling through
	// the kinds in the seeded order.
	order := slices.Clone(soakFaults)
	rand.New(rand.NewPCG(seed, seed)).Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	calm := length / 5
	every := min(20*time.Second, (length-calm)/time.Duration(len(order)+1))
	t.Logf("soak: %s, seed %d (ZENSPA_SOAK_SEED), a fault every %s after %s without: %s", length, seed, every, calm, strings.Join(order, ", "))

	finishLoad := startSoakLoad(b.url, p.token(t, algHS256, p.manager()))
	began := time.Now()
	time.Sleep(5 * time.Second) // the instances warm up before their figures are taken
	for _, in := range instances {
		in.goroutines, in.rssKB = soakFigures(t, in)
	}
	var windows []soakWindow
	killed := map[int]bool{} // PIDs killed on purpose
	var exits []string
	restart := func(in *soakInstance, sig syscall.Signal) {
		t.Helper()
		mustf(t, in.c.cmd.Process.Signal(sig), "signal %s", in.name)
		code := in.c.exitCode(t, drain+20*time.Second)
		if sig == syscall.SIGKILL {
			killed[in.c.cmd.Process.Pid] = true
		} else if code != 0 {
			t.Errorf("%s exited %d after SIGTERM, want 0; output:\n%s", in.name, code, in.c.output())
		}
		exits = append(exits, fmt.Sprintf("%s %s: %d", in.name, sig, code))
		start(in)
		b.waitServer(t, in.name, "UP", 20*time.Second)
		in.goroutines, in.rssKB = 0, 0 // a new process: its figures are taken at the end of its warm-up
	}
	for n, at := 0, began.Add(calm); at.Add(every).Before(began.Add(length)); n, at = n+1, at.Add(every) {
		time.Sleep(time.Until(at)) // a fault overrunning its slot only delays the next
		kind, w := order[n%len(order)], soakWindow{start: time.Now()}
		w.kind = kind
		switch kind {
		case "postgres restart":
			pg.restart()
		case "postgres stall 5s":
			proxy.stall()
			time.Sleep(5 * time.Second)
			proxy.heal()
		case "redis kill":
			redis.stop()
			time.Sleep(2 * time.Second)
			redis.start()
		case "instance SIGKILL":
			restart(instances[n%len(instances)], syscall.SIGKILL)
		case "rolling restart":
			for _, in := range instances {
				restart(in, syscall.SIGTERM)
			}
		}
		w.end = time.Now().Add(2 * time.Second) // what the fault leaves behind: a pool refilling, a check turning over
		windows = append(windows, w)
		t.Logf("soak: %s at %s, took %s", kind, w.start.Sub(began).Round(time.Millisecond), time.Since(w.start).Round(time.Millisecond))
		time.Sleep(5 * time.Second) // a restarted instance warms up before its figures are taken
		for _, in := range instances {
			if in.goroutines == 0 {
				in.goroutines, in.rssKB = soakFigures(t, in)
			}
		}
	}
	time.Sleep(time.Until(began.Add(length)))
	calls := finishLoad()
	t.Log(soakReport(t, soakResult{calls: calls, windows: windows, instances: instances, killed: killed, exits: exits,
		began: began, calm: calm, db: pg.url}))
}

// soakFigures reads an instance's goroutines (from /metrics) and resident
// memory (/proc).
func soakFigures(t *testing.T, in *soakInstance) (float64, int) {
	t.Helper()
	sc := scrapeMetrics(t, "http://127.0.0.1:"+strconv.Itoa(in.port))
	g, _ := sc.value("go_goroutines", nil)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.c.cmd.Process.Pid))
	mustf(t, err, "read the status of %s", in.name)
	rss := 0
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss, _ = strconv.Atoi(strings.Fields(v)[0])
		}
	}
	return g, rss
}

// startSoakLoad starts the soak's client: four workers, each about 15
// requests a second, in a fixed mix: POSTs, the list, GETs and PATCHes of
// its own treatments, and now and then /health/live, which no fault may
// fail. The returned finish stops it and returns every call.
func startSoakLoad(base, token string) (finish func() []soakCall) {
	const workers = 4
	client := &http.Client{Timeout: 15 * time.Second, Transport: withBearer(token, &http.Transport{MaxIdleConnsPerHost: workers})}
	ticks := make([]*time.Ticker, workers) // a steady pace, whatever the latency
	own := make([][]string, workers)       // each worker's treatments
	for w := range ticks {
		ticks[w] = time.NewTicker(66 * time.Millisecond)
	}
	var stopping atomic.Bool // no request after a tick that came while finish waited
	calls := startWorkers(workers, 0, func(w, i int, record func(...soakCall)) bool {
		<-ticks[w].C
		if stopping.Load() {
			return false
		}
		c := soakCall{start: time.Now()}
		var method, target, body string
		switch {
		case i%8 == 5:
			c.kind, method, target = "health", http.MethodGet, base+"/health/live"
		case i%4 == 0 || len(own[w]) == 0:
			c.kind, c.name = "post", fmt.Sprintf("Soak %d-%d-%d", w, i, c.start.UnixNano())
			method, target, body = http.MethodPost, base+"/api/v1/treatments", faultTreatmentBody(c.name)
		case i%4 == 1:
			c.kind, method, target = "list", http.MethodGet, base+"/api/v1/treatments?limit=10"
		case i%4 == 2:
			c.kind, method, target = "get", http.MethodGet, base+"/api/v1/treatments/"+own[w][i%len(own[w])]
		default:
			c.kind, method, target = "patch", http.MethodPatch, base+"/api/v1/treatments/"+own[w][i%len(own[w])]
			body = fmt.Sprintf(`{"price": %d}`, 1000*i)
		}
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, target, rd)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err == nil {
			c.status = resp.StatusCode
			var b []byte
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if c.kind == "post" && c.status == http.StatusCreated {
				id := (faultCall{body: b}).id()
				own[w] = append(own[w], id)
			}
		}
		c.err, c.end = err, time.Now()
		record(c)
		return true
	})
	return func() []soakCall {
		stopping.Store(true)
		records := calls()
		for _, t := range ticks {
			t.Stop()
		}
		return records
	}
}

// soakResult is what the report judges.
type soakResult struct {
	calls     []soakCall
	windows   []soakWindow
	instances []*soakInstance
	killed    map[int]bool
	exits     []string
	began     time.Time
	calm      time.Duration
	db        string
}

// soakReport judges the run: one row an invariant, and a failed test for any
// row that does not hold.
func soakReport(t *testing.T, r soakResult) string {
	in := func(c soakCall, kinds ...string) bool {
		for _, w := range r.windows {
			if slices.Contains(kinds, w.kind) && c.start.Before(w.end) && c.end.After(w.start) {
				return true
			}
		}
		return false
	}
	var rows [][4]string
	row := func(name, measured, bound string, ok bool) {
		mark := "yes"
		if !ok {
			mark = "**no**"
			t.Errorf("soak invariant %q: %s, want %s", name, measured, bound)
		}
		rows = append(rows, [4]string{name, measured, bound, mark})
	}

	// Failures, by where they fell.
	var unexplained, dbOutage, killedInFlight, total int
	for _, c := range r.calls {
		total++
		failed := c.err != nil || c.status >= 500
		switch {
		case !failed:
		case c.status == http.StatusServiceUnavailable && c.kind != "health" && in(c, "postgres restart", "postgres stall 5s"):
			dbOutage++
		case in(c, "instance SIGKILL"):
			killedInFlight++ // a request that was on the killed instance
		default:
			unexplained++
		}
	}
	row("requests failed (5xx or no answer) outside every fault window", strconv.Itoa(unexplained), "0", unexplained == 0)
	if unexplained > 0 {
		shown := 0
		for _, c := range r.calls {
			if (c.err != nil || c.status >= 500) && !(c.status == http.StatusServiceUnavailable && c.kind != "health" && in(c, "postgres restart", "postgres stall 5s")) && !in(c, "instance SIGKILL") && shown < 20 {
				shown++
				t.Logf("unexplained: %s at %s: %d %v", c.kind, c.start.Sub(r.began).Round(time.Millisecond), c.status, c.err)
			}
		}
	}
	row("503 while PostgreSQL was restarting or stalled, on the menu's routes (liveness never fails)", strconv.Itoa(dbOutage), "any", true)
	row("failures in flight on the instance SIGKILLed on purpose", strconv.Itoa(killedInFlight), "≤ 4 per kill (one a worker)",
		killedInFlight <= 4*soakCount(r.windows, "instance SIGKILL"))

	// Writes.
	rows2 := map[string][]string{}
	db, err := sql.Open("postgres", r.db)
	mustf(t, err, "open the soak database")
	defer db.Close()
	mustf(t, faultTreatmentRows(db, rows2), "read the treatments")
	var posted, twice, lost int
	for _, c := range r.calls {
		if c.kind != "post" {
			continue
		}
		n := len(rows2[c.name])
		switch {
		case c.status == http.StatusCreated && n != 1:
			lost++
		case c.status == http.StatusCreated:
			posted++
		case n > 1:
			twice++
		}
	}
	row("POSTs answered 201 and stored exactly once", strconv.Itoa(posted), "every one", lost == 0)
	row("POSTs stored twice", strconv.Itoa(twice), "0", twice == 0)

	// The processes.
	var crashed []string
	for _, in := range r.instances {
		if !in.c.running() {
			crashed = append(crashed, in.name)
		}
	}
	row("instances that died but for the one killed on purpose", strconv.Itoa(len(crashed)), "0", len(crashed) == 0)
	row("exits along the way", strings.Join(r.exits, "; "), "0 after SIGTERM", true)
	for _, in := range r.instances {
		g, rss := soakFigures(t, in)
		row(in.name+" goroutines, after its warm-up → at the end", fmt.Sprintf("%.0f → %.0f", in.goroutines, g), "≤ +30",
			g <= in.goroutines+30)
		row(in.name+" RSS, after its warm-up → at the end", fmt.Sprintf("%.1f → %.1f MB", float64(in.rssKB)/1024, float64(rss)/1024),
			"≤ 2× + 30 MB", rss <= 2*in.rssKB+30<<10)
	}

	// Latency outside the faults against the calm start.
	var calm, quiet []time.Duration
	for _, c := range r.calls {
		switch d := c.end.Sub(c.start); {
		case c.start.Before(r.began.Add(r.calm)):
			calm = append(calm, d)
		case !in(c, soakFaults...):
			quiet = append(quiet, d)
		}
	}
	p99 := func(ds []time.Duration) time.Duration {
		if len(ds) == 0 {
			return 0
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)*99/100]
	}
	c99, q99 := p99(calm), p99(quiet)
	row("p99 outside the fault windows, against the fault-free start", fmt.Sprintf("%s vs %s", q99.Round(100*time.Microsecond), c99.Round(100*time.Microsecond)),
		"≤ 2×", q99 <= 2*c99)

	var b strings.Builder
	fmt.Fprintf(&b, "\n%d requests (%d fault-free at the start), %d faults\n\n", total, len(calm), len(r.windows))
	fmt.Fprintln(&b, "| invariant | measured | bound | holds |\n|---|---|---|---|")
	for _, rw := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", rw[0], rw[1], rw[2], rw[3])
	}
	return b.String()
}

// soakCount is how many windows are of kind.
func soakCount(ws []soakWindow, kind string) int {
	n := 0
	for _, w := range ws {
		if w.kind == kind {
			n++
		}
	}
	return n
}

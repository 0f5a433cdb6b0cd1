// Command run is the load benchmark behind BENCHMARKS.md (`make bench`). It
// starts a zenspa binary and the bare net/http baseline (bench/baseline) on
// free loopback ports, drives both with wrk at fixed settings, alternating,
// on /health, /health/db and /health/redis, then floods /health/db with 256
// connections while counting the transactions PostgreSQL commits in zenspa's
// database. It prints one Markdown report: throughput, latency, errors and
// CPU per request of each server, zenspa's as ratios to the baseline; memory,
// start-to-ready time and binary size; and each target, met or missed.
//
//	go run ./bench/run -zenspa ./zenspa -baseline /tmp/baseline
//
// It needs wrk and psql on PATH, PostgreSQL and Redis on 127.0.0.1, and
// Linux (/proc). Only the standard library: it reads the database through
// psql rather than a driver.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command-line settings.
type options struct {
	zenspa, baseline string
	databaseURL      string
	redisHost        string
	connections      int
	stormConnections int
	threads          int
	duration         time.Duration
	warmup           time.Duration
	rounds           int
	waitIdle         time.Duration
	maxSteal         float64
	stealRetries     int
}

func main() {
	var o options
	flag.StringVar(&o.zenspa, "zenspa", "./zenspa", "the zenspa binary under test (a `make build` binary)")
	flag.StringVar(&o.baseline, "baseline", "", "the bench/baseline binary")
	flag.StringVar(&o.databaseURL, "database-url", "postgres://zenspa:zenspa@127.0.0.1:5432/zenspa?sslmode=disable", "zenspa's DATABASE_URL")
	flag.StringVar(&o.redisHost, "redis-host", "127.0.0.1", "zenspa's REDIS_HOST")
	flag.IntVar(&o.connections, "c", 64, "wrk connections")
	flag.IntVar(&o.stormConnections, "storm-c", 256, "wrk connections of the probe storm on /health/db")
	flag.IntVar(&o.threads, "t", 2, "wrk threads")
	flag.DurationVar(&o.duration, "d", 10*time.Second, "length of each wrk run")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured wrk run on /health against each server first")
	flag.IntVar(&o.rounds, "rounds", 5, "runs of each case per server; the round with the median ratio to the baseline is reported")
	flag.Float64Var(&o.maxSteal, "max-steal", 0.05, "run a round again when the hypervisor took more than this share of the CPU")
	flag.IntVar(&o.stealRetries, "steal-retries", 3, "how many times at most a round is run again for steal")
	flag.DurationVar(&o.waitIdle, "wait-idle", 15*time.Minute, "wait this long at most for other `go test` processes to end before measuring")
	flag.Parse()
	if o.baseline == "" || o.rounds < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: run -zenspa BINARY -baseline BINARY [flags]")
		flag.PrintDefaults()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// run measures everything and writes the report to out; progress goes to
// progress.
func run(ctx context.Context, o options, out, progress io.Writer) error {
	for _, tool := range []string{"wrk", "psql"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed: run `make services`", tool)
		}
	}
	say := func(format string, args ...any) { fmt.Fprintf(progress, "bench: "+format+"\n", args...) }
	others := waitForIdleMachine(ctx, o.waitIdle, say)

	dir, err := os.MkdirTemp("", "zenspa-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	envFile := filepath.Join(dir, "empty.env")
	if err := os.WriteFile(envFile, nil, 0o600); err != nil {
		return err
	}
	zenspa, err := startZenspa(ctx, o, dir, envFile, "zenspa")
	if err != nil {
		return err
	}
	defer zenspa.stop()
	say("zenspa ready in %s", zenspa.ready.Round(100*time.Microsecond))

	bport, err := freePort()
	if err != nil {
		return err
	}
	baseline, err := startProcess(o.baseline, []string{"-addr", "127.0.0.1:" + strconv.Itoa(bport)}, []string{"PATH=" + os.Getenv("PATH")}, filepath.Join(dir, "baseline.log"))
	if err != nil {
		return err
	}
	defer baseline.stop()
	bbase := "http://127.0.0.1:" + strconv.Itoa(bport)
	if _, err := waitReady(ctx, baseline, bbase+"/health"); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	// The same server sending zenspa's response headers under its server
	// limits: the floor for any server that must do what zenspa promises at
	// the HTTP level, measured on /health only.
	fport, err := freePort()
	if err != nil {
		return err
	}
	floor, err := startProcess(o.baseline, []string{"-headers", "-limits", "-addr", "127.0.0.1:" + strconv.Itoa(fport)}, []string{"PATH=" + os.Getenv("PATH")}, filepath.Join(dir, "floor.log"))
	if err != nil {
		return err
	}
	defer floor.stop()
	fbase := "http://127.0.0.1:" + strconv.Itoa(fport)
	if _, err := waitReady(ctx, floor, fbase+"/health"); err != nil {
		return fmt.Errorf("baseline -headers -limits: %w", err)
	}

	// Idle memory, once both have settled.
	if err := sleep(ctx, time.Second); err != nil {
		return err
	}
	zIdleRSS, err := rssKB(zenspa.pid())
	if err != nil {
		return err
	}
	bIdleRSS, err := rssKB(baseline.pid())
	if err != nil {
		return err
	}

	bt := &target{name: "baseline", proc: baseline, base: bbase}
	ft := &target{name: "baseline with zenspa's headers and limits", proc: floor, base: fbase}
	zt := &target{name: "zenspa", proc: zenspa.process, base: zenspa.base}
	for _, s := range []*target{bt, ft, zt} {
		say("warm-up of %s", s.name)
		if _, err := s.measure(ctx, o.warmup, o.connections, o.threads, "/health"); err != nil {
			return err
		}
	}

	var rows []row
	discarded := 0
	for _, path := range []string{"/health", "/health/db", "/health/redis"} {
		servers := []*target{bt, zt} // the baseline first, zenspa last
		if path == "/health" {
			servers = []*target{bt, ft, zt}
		}
		runs := make([][]result, len(servers))
		for round := range o.rounds {
			// A round in which the hypervisor took more than -max-steal of
			// the CPU measured the neighbours as much as the servers: it is
			// run again, a few times at most.
			results := make([]result, len(servers))
			for attempt := 0; ; attempt++ {
				steal := 0.0
				for j := range servers {
					i := j
					if round%2 == 1 { // alternate who goes first
						i = len(servers) - 1 - j
					}
					say("%s %s, round %d of %d", servers[i].name, path, round+1, o.rounds)
					res, err := servers[i].measure(ctx, o.duration, o.connections, o.threads, path)
					if err != nil {
						return err
					}
					results[i] = res
					steal = max(steal, res.steal)
				}
				if steal <= o.maxSteal || attempt == o.stealRetries {
					break
				}
				discarded++
				say("steal %.0f%%, over %.0f%%: the round again", 100*steal, 100*o.maxSteal)
			}
			for i := range servers {
				runs[i] = append(runs[i], results[i])
			}
		}
		// The round reported is the one with the median ratio of zenspa's
		// requests/s to the baseline's: the servers of one round ran back to
		// back, so the machine's drift from round to round cancels out.
		last := len(servers) - 1
		var ratios []string
		for i := range runs[0] {
			ratios = append(ratios, fmt.Sprintf("%.2f", runs[last][i].rps/runs[0][i].rps))
		}
		m := medianRound(runs[0], runs[last])
		rw := row{name: fmt.Sprintf("`%s` c=%d", path, o.connections), base: runs[0][m], zenspa: runs[last][m], ratios: ratios}
		if len(servers) == 3 {
			rw.floor = &runs[1][m]
		}
		rows = append(rows, rw)
	}
	say("baseline /health/db storm, c=%d", o.stormConnections)
	bStorm, err := bt.measure(ctx, o.duration, o.stormConnections, o.threads, "/health/db")
	if err != nil {
		return err
	}
	zRSS, err := rssKB(zenspa.pid())
	if err != nil {
		return err
	}
	bRSS, err := rssKB(baseline.pid())
	if err != nil {
		return err
	}
	zenspa.stop()

	// The probe storm, counted by PostgreSQL: the transactions committed in
	// zenspa's database (pg_stat_database.xact_commit, read from another
	// database so that reading adds nothing). A backend publishes its
	// counters reliably only when it exits, so the storm gets a zenspa of its
	// own, stopped before the count is read; and a second one, started and
	// stopped without a storm, measures what starting costs (connections,
	// the startup SELECT 1, the readiness check) to subtract.
	dbName, statsURL, err := statsTarget(o.databaseURL)
	if err != nil {
		return err
	}
	readies := []time.Duration{zenspa.ready}
	var lifetimes [2]int64
	var zStorm result
	for i, storm := range []bool{false, true} {
		before, err := settledXactCommit(ctx, statsURL, dbName)
		if err != nil {
			return err
		}
		z, err := startZenspa(ctx, o, dir, envFile, fmt.Sprintf("zenspa-%d", i+2))
		if err != nil {
			return err
		}
		readies = append(readies, z.ready)
		if storm {
			say("zenspa /health/db storm, c=%d", o.stormConnections)
			st := &target{name: "zenspa", proc: z.process, base: z.base}
			if zStorm, err = st.measure(ctx, o.duration, o.stormConnections, o.threads, "/health/db"); err != nil {
				z.stop()
				return err
			}
		}
		z.stop()
		after, err := settledXactCommit(ctx, statsURL, dbName)
		if err != nil {
			return err
		}
		lifetimes[i] = after - before
	}
	rows = append(rows, row{name: fmt.Sprintf("`/health/db` storm c=%d", o.stormConnections), base: bStorm, zenspa: zStorm})
	storm := stormResult{lifetime: lifetimes[1], startup: lifetimes[0], probes: zStorm.requests, seconds: zStorm.seconds}

	zSize, err := fileSize(o.zenspa)
	if err != nil {
		return err
	}
	bSize, err := fileSize(o.baseline)
	if err != nil {
		return err
	}
	rep := report{
		opts: o, rows: rows, storm: storm, others: others, discarded: discarded,
		zenspaIdleRSS: zIdleRSS, zenspaRSS: zRSS, baselineIdleRSS: bIdleRSS, baselineRSS: bRSS,
		readies: readies, zenspaSize: zSize, baselineSize: bSize,
	}
	rep.write(out)
	return nil
}

// zenspaProcess is a zenspa under test.
type zenspaProcess struct {
	*process
	base  string        // http://127.0.0.1:PORT
	ready time.Duration // from its start to the first 200 of /health/ready
}

// startZenspa starts the binary with the documented settings on a free
// loopback port, an empty env file so that no .env of the checkout leaks in,
// and waits until it is ready.
func startZenspa(ctx context.Context, o options, dir, envFile, name string) (*zenspaProcess, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"DATABASE_URL=" + o.databaseURL, "REDIS_HOST=" + o.redisHost,
		"LOG_LEVEL=INFO", "ENV_FILE=" + envFile,
		"HOST=127.0.0.1", "PORT=" + strconv.Itoa(port),
	}
	p, err := startProcess(o.zenspa, nil, env, filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	z := &zenspaProcess{process: p, base: "http://127.0.0.1:" + strconv.Itoa(port)}
	if z.ready, err = waitReady(ctx, p, z.base+"/health/ready"); err != nil {
		p.stop()
		return nil, fmt.Errorf("%s: %w (its log: %s)", name, err, p.logTail())
	}
	return z, nil
}

// target is one server under load.
type target struct {
	name string
	proc *process
	base string
}

// result is one wrk run against one server.
type result struct {
	requests   int64
	seconds    float64
	rps        float64
	p50, p99   time.Duration
	non2xx     int64 // wrk's count of responses with status 400 and up
	sockErrors int64 // connect, read, write and timeout errors
	cpuPerReq  time.Duration
	steal      float64 // share of the machine's CPU time the hypervisor took
}

// measure runs wrk against path and charges the server's CPU time (user and
// system, from /proc) to the requests wrk completed.
func (t *target) measure(ctx context.Context, d time.Duration, connections, threads int, path string) (result, error) {
	cpu0, err := cpuTime(t.proc.pid())
	if err != nil {
		return result{}, err
	}
	steal0, total0 := machineSteal()
	args := []string{"-c" + strconv.Itoa(connections), "-t" + strconv.Itoa(threads), "-d" + d.String(), "--latency", t.base + path}
	wctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	outb, err := exec.CommandContext(wctx, "wrk", args...).CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, outb)
	}
	cpu1, err := cpuTime(t.proc.pid())
	if err != nil {
		return result{}, err
	}
	steal1, total1 := machineSteal()
	res, err := parseWrk(string(outb))
	if err != nil {
		return result{}, fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, outb)
	}
	if res.requests > 0 {
		res.cpuPerReq = (cpu1 - cpu0) / time.Duration(res.requests)
	}
	if total1 > total0 {
		res.steal = float64(steal1-steal0) / float64(total1-total0)
	}
	return res, nil
}

// machineSteal returns the steal and total CPU time of the machine so far,
// in clock ticks, from /proc/stat: on a virtual machine another guest's load
// shows as steal, and makes every figure of that run worse.
func machineSteal() (steal, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i < 8 { // guest time is already in user and nice
			total += n
		}
		if i == 7 {
			steal = n
		}
	}
	return steal, total
}

// parseWrk reads wrk's report (with --latency).
func parseWrk(s string) (result, error) {
	var res result
	var seen int
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "50%":
			res.p50 = parseWrkDuration(f[1])
			seen |= 1
		case len(f) == 2 && f[0] == "99%":
			res.p99 = parseWrkDuration(f[1])
			seen |= 2
		case len(f) >= 4 && f[1] == "requests" && f[2] == "in":
			res.requests, _ = strconv.ParseInt(f[0], 10, 64)
			res.seconds = parseWrkDuration(strings.TrimSuffix(f[3], ",")).Seconds()
			seen |= 4
		case len(f) == 2 && f[0] == "Requests/sec:":
			res.rps, _ = strconv.ParseFloat(f[1], 64)
			seen |= 8
		case strings.HasPrefix(sc.Text(), "  Non-2xx or 3xx responses:"):
			res.non2xx, _ = strconv.ParseInt(f[len(f)-1], 10, 64)
		case len(f) > 0 && f[0] == "Socket":
			for i := 3; i < len(f); i += 2 { // Socket errors: connect 0, read 0, write 0, timeout 0
				n, _ := strconv.ParseInt(strings.TrimSuffix(f[i], ","), 10, 64)
				res.sockErrors += n
			}
		}
	}
	if seen != 15 {
		return res, errors.New("cannot read the report")
	}
	return res, nil
}

// parseWrkDuration reads wrk's durations: 386.00us, 2.51ms, 1.02s, 1.50m.
func parseWrkDuration(s string) time.Duration {
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{{"us", time.Microsecond}, {"ms", time.Millisecond}, {"s", time.Second}, {"m", time.Minute}, {"h", time.Hour}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0
			}
			return time.Duration(f * float64(u.unit))
		}
	}
	return 0
}

// medianRound returns the round in which the ratio of zenspa's requests/s
// to the baseline's was the median one.
func medianRound(base, zenspa []result) int {
	rounds := make([]int, len(base))
	for i := range rounds {
		rounds[i] = i
	}
	ratio := func(i int) float64 { return zenspa[i].rps / base[i].rps }
	slices.SortFunc(rounds, func(a, b int) int { return cmp.Compare(ratio(a), ratio(b)) })
	return rounds[len(rounds)/2]
}

// process is a server started by the benchmark; stop ends it by its PID.
type process struct {
	cmd     *exec.Cmd
	log     string
	started time.Time // just before the fork
	done    chan struct{}
}

// startProcess starts path with args and exactly the environment env, its
// output going to logPath.
func startProcess(path string, args, env []string, logPath string) (*process, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	started := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &process{cmd: cmd, log: logPath, started: started, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL if the process is still there after 10 s.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// logTail returns the end of the process's output, for error messages.
func (p *process) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// waitReady polls url without pause until it answers 200 and returns the time
// from the process's start to that answer. It gives up after 30 s or when the
// process exits.
func waitReady(ctx context.Context, p *process, url string) (time.Duration, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for time.Since(p.started) < 30*time.Second {
		if p.exited() {
			return 0, errors.New("exited before it was ready")
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(p.started), nil
			}
		}
		time.Sleep(100 * time.Microsecond)
	}
	return 0, fmt.Errorf("%s did not answer 200 within 30 s", url)
}

// procStat returns the fields of /proc/PID/stat after the command name: the
// first one is field 3, the state.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// cpuTime is the user plus system CPU time the process has used.
func cpuTime(pid int) (time.Duration, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * time.Second / clockTicks(), nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: getconf CLK_TCK,
// and 100, its value on every Linux port that matters, if that fails.
func clockTicks() time.Duration {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return time.Duration(n)
		}
	}
	return 100
}

// rssKB is the process's resident set size (VmRSS) in KiB.
func rssKB(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// fileSize is the size of a file in bytes.
func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// statsTarget returns the database name of dsn and a URL for the same server
// and role on the postgres database, from which pg_stat_database is read
// without adding transactions to the one being counted.
func statsTarget(dsn string) (name, statsURL string, err error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", "", fmt.Errorf("database URL: %w", err)
	}
	name = strings.TrimPrefix(u.Path, "/")
	if name == "" {
		return "", "", errors.New("database URL names no database")
	}
	u.Path = "/postgres"
	return name, u.String(), nil
}

// xactCommit reads pg_stat_database.xact_commit of database name: every
// SELECT 1 of a health check is one committed transaction.
func xactCommit(ctx context.Context, statsURL, name string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-v", "db="+name, "-d", statsURL)
	cmd.Stdin = strings.NewReader("SELECT xact_commit FROM pg_stat_database WHERE datname = :'db';\n")
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=5")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("psql: %w: %s", err, bytes.TrimSpace(out))
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("psql: no xact_commit for database %q: %q", name, out)
	}
	return n, nil
}

// settledXactCommit reads xactCommit until two readings 500 ms apart agree:
// a backend that has just exited may still be publishing its counters.
func settledXactCommit(ctx context.Context, statsURL, name string) (int64, error) {
	last, err := xactCommit(ctx, statsURL, name)
	if err != nil {
		return 0, err
	}
	for range 20 {
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return 0, err
		}
		n, err := xactCommit(ctx, statsURL, name)
		if err != nil {
			return 0, err
		}
		if n == last {
			return n, nil
		}
		last = n
	}
	return last, nil
}

// waitForIdleMachine waits, up to limit, until no other `go test` or test
// binary runs: they would take the CPU the servers and wrk need. It returns
// what still ran when it gave up, for the report.
func waitForIdleMachine(ctx context.Context, limit time.Duration, say func(string, ...any)) []string {
	deadline := time.Now().Add(limit)
	for {
		others := testProcesses()
		if len(others) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return others
		}
		say("waiting for %d test process(es) to end: %s", len(others), strings.Join(others, "; "))
		_ = sleep(ctx, 10*time.Second)
	}
}

// testProcesses lists the command lines of running `go test` and compiled
// test binaries (name ending in .test).
func testProcesses() []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		isGoTest := len(args) > 1 && filepath.Base(args[0]) == "go" && args[1] == "test"
		if isGoTest || strings.HasSuffix(args[0], ".test") {
			out = append(out, strings.Join(args[:min(len(args), 4)], " "))
		}
	}
	return out
}

// row is one case: the baseline's run and zenspa's, and the ratio of their
// requests/s in each round.
type row struct {
	name         string
	base, zenspa result
	ratios       []string
	floor        *result // the baseline with zenspa's headers and limits, on /health
}

// stormResult is what PostgreSQL saw of the probe storm: the transactions
// committed in zenspa's database over the life of the zenspa that took the
// storm, and over the life of one that only started and stopped.
type stormResult struct {
	lifetime, startup int64
	probes            int64 // /health/db requests answered
	seconds           float64
}

// perSecond is the storm's own queries per second.
func (s stormResult) perSecond() float64 { return float64(s.lifetime-s.startup) / s.seconds }

// report is everything the benchmark prints.
type report struct {
	opts                         options
	rows                         []row
	storm                        stormResult
	others                       []string
	discarded                    int // rounds run again for steal
	zenspaIdleRSS, zenspaRSS     int64
	baselineIdleRSS, baselineRSS int64
	readies                      []time.Duration // of every zenspa started, the measured one first
	zenspaSize, baselineSize     int64
}

// write prints the report in Markdown.
func (r *report) write(w io.Writer) {
	o := r.opts
	fmt.Fprintf(w, "Date: %s. Machine: %d cores (%s), %s, Linux %s.\n", time.Now().UTC().Format("2006-01-02 15:04 MST"),
		runtime.NumCPU(), cpuModel(), runtime.Version(), kernel())
	fmt.Fprintf(w, "wrk -c%d -t%d -d%s --latency (storm: -c%d), %d round(s) per case (the servers back to back in each, baseline first in odd rounds); the table shows the round with the median requests/s ratio.\n",
		o.connections, o.threads, o.duration, o.stormConnections, o.rounds)
	if r.discarded > 0 {
		fmt.Fprintf(w, "%d round(s) were run again because the hypervisor took more than %.0f%% of the CPU (steal).\n", r.discarded, 100*o.maxSteal)
	}
	if len(r.others) > 0 {
		fmt.Fprintf(w, "**Warning:** other test processes were running: %s.\n", strings.Join(r.others, "; "))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | server | requests/s | p50 | p99 | non-2xx | CPU/request | steal |")
	fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|--:|--:|")
	for _, rw := range r.rows {
		b, z := rw.base, rw.zenspa
		fmt.Fprintf(w, "| %s | baseline | %.0f | %s | %s | %s | %.1f µs | %.0f%% |\n", rw.name, b.rps, ms(b.p50), ms(b.p99), errs(b), us(b.cpuPerReq), 100*b.steal)
		if f := rw.floor; f != nil {
			fmt.Fprintf(w, "| | baseline with zenspa's headers and limits | %.0f (%.2f×) | %s (%.2f×) | %s (%.2f×) | %s | %.1f µs (%.2f×) | %.0f%% |\n",
				f.rps, f.rps/b.rps, ms(f.p50), ratio(f.p50, b.p50), ms(f.p99), ratio(f.p99, b.p99), errs(*f),
				us(f.cpuPerReq), ratio(f.cpuPerReq, b.cpuPerReq), 100*f.steal)
		}
		fmt.Fprintf(w, "| | zenspa | %.0f (%.2f×) | %s (%.2f×) | %s (%.2f×) | %s | %.1f µs (%.2f×) | %.0f%% |\n",
			z.rps, z.rps/b.rps, ms(z.p50), ratio(z.p50, b.p50), ms(z.p99), ratio(z.p99, b.p99), errs(z),
			us(z.cpuPerReq), ratio(z.cpuPerReq, b.cpuPerReq), 100*z.steal)
	}
	fmt.Fprintln(w)
	if f := r.rows[0].floor; f != nil {
		z := r.rows[0].zenspa
		fmt.Fprintf(w, "Against the baseline that sends the same response headers under the same server limits, zenspa's `/health` reaches %.2f× the requests/s at %.2f× the CPU per request: "+
			"that is what its middleware costs; the rest of the gap to the bare baseline is net/http handling eight more headers and resetting more deadlines.\n\n",
			z.rps/f.rps, ratio(z.cpuPerReq, f.cpuPerReq))
	}
	if o.rounds > 1 {
		fmt.Fprintln(w, "zenspa's requests/s as a ratio to the baseline's, round by round:")
		fmt.Fprintln(w)
		for _, rw := range r.rows {
			if len(rw.ratios) > 0 {
				fmt.Fprintf(w, "- %s: %s\n", rw.name, strings.Join(rw.ratios, ", "))
			}
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "| process | zenspa | baseline |")
	fmt.Fprintln(w, "|---|--:|--:|")
	fmt.Fprintf(w, "| idle RSS after start | %s | %s |\n", mb(r.zenspaIdleRSS<<10), mb(r.baselineIdleRSS<<10))
	fmt.Fprintf(w, "| RSS after the runs | %s | %s |\n", mb(r.zenspaRSS<<10), mb(r.baselineRSS<<10))
	readies := make([]string, len(r.readies))
	for i, d := range r.readies {
		readies[i] = msec(d)
	}
	fmt.Fprintf(w, "| start to first 200 of `/health/ready` (each zenspa started) | %s | |\n", strings.Join(readies, ", "))
	fmt.Fprintf(w, "| binary size | %s | %s |\n", mb(r.zenspaSize), mb(r.baselineSize))
	fmt.Fprintln(w)
	qps := r.storm.perSecond()
	fmt.Fprintf(w, "Probe storm: %d `/health/db` answers in %.1f s. PostgreSQL committed %d transactions in the database over the life of the zenspa that took them "+
		"(start, storm, stop) and %d over the life of one only started and stopped: the storm itself cost %d queries, %.2f per second.\n",
		r.storm.probes, r.storm.seconds, r.storm.lifetime, r.storm.startup, r.storm.lifetime-r.storm.startup, qps)
	fmt.Fprintln(w)

	rows := r.rows
	var checks []check
	h := rows[0]
	checks = append(checks,
		atLeast("`/health` requests/s ≥ 0.85× baseline", h.zenspa.rps/h.base.rps, 0.85),
		atMost("`/health` CPU/request ≤ 1.3× baseline", float64(h.zenspa.cpuPerReq)/float64(h.base.cpuPerReq), 1.3),
		atMost("`/health` p99 ≤ 1.5× baseline", float64(h.zenspa.p99)/float64(h.base.p99), 1.5),
		atLeast("`/health/db` requests/s ≥ 0.75× baseline", rows[1].zenspa.rps/rows[1].base.rps, 0.75),
		atLeast("`/health/redis` requests/s ≥ 0.75× baseline", rows[2].zenspa.rps/rows[2].base.rps, 0.75),
		check{"probe storm: at most a few PostgreSQL queries per second", fmt.Sprintf("%.2f/s", qps), qps <= 3},
		check{"idle RSS ≤ 15 MB", mb(r.zenspaIdleRSS << 10), r.zenspaIdleRSS<<10 <= 15_000_000},
		check{"start to ready ≤ 100 ms (the slowest start)", msec(slices.Max(r.readies)), slices.Max(r.readies) <= 100*time.Millisecond},
	)
	non2xx := int64(0)
	for _, rw := range rows {
		non2xx += rw.zenspa.non2xx + rw.zenspa.sockErrors
	}
	checks = append(checks, check{"zero non-2xx (and socket errors) in every case", strconv.FormatInt(non2xx, 10), non2xx == 0})
	fmt.Fprintln(w, "| target | measured | met |")
	fmt.Fprintln(w, "|---|--:|---|")
	for _, c := range checks {
		met := "yes"
		if !c.ok {
			met = "**no**"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", c.name, c.value, met)
	}
}

// check is one target and whether it was met.
type check struct {
	name, value string
	ok          bool
}

func atLeast(name string, v, min float64) check {
	return check{name, fmt.Sprintf("%.2f×", v), v >= min}
}

func atMost(name string, v, max float64) check {
	return check{name, fmt.Sprintf("%.2f×", v), v <= max}
}

// ms formats a latency in milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

// msec formats a start time in milliseconds.
func msec(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// us is a duration in microseconds.
func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// ratio is a/b, 0 when b is.
func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// errs is the non-2xx count, with socket errors when there were any.
func errs(r result) string {
	if r.sockErrors > 0 {
		return fmt.Sprintf("%d (+%d socket errors)", r.non2xx, r.sockErrors)
	}
	return strconv.FormatInt(r.non2xx, 10)
}

// mib formats a size in bytes as MB (10^6) with one decimal, as the targets
// are stated.
func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// cpuModel is the first model name in /proc/cpuinfo.
func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// kernel is the running kernel's release.
func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

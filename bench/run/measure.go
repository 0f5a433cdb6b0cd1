package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A row is one case as the report shows it: each server's run in the round
// with the median ratio of zenspa's requests/s to the baseline's.
type row struct {
	name      string
	c         benchCase // the targets; zero for the probe storm
	servers   []string  // the baseline first, zenspa last
	results   []result  // in the order of servers
	ratios    []float64 // zenspa's requests/s over the baseline's, round by round
	zenspa    []result  // zenspa's runs, round by round, for the comparisons
	discarded int       // rounds run again for steal
}

// A load is what wrk sends to a server.
type load struct {
	path        string // after the server's base URL
	script      string // a wrk Lua script file, or ""
	env         []string
	connections int
}

// measureCase warms each server of c up, then measures them o.rounds times
// back to back. The round reported is the one with the median ratio of
// zenspa's requests/s to the baseline's: the servers of one round ran within
// seconds of each other, so the machine's drift from round to round cancels
// out of the ratio.
func measureCase(ctx context.Context, o options, dir string, fx *fixture, c benchCase, started map[string]*server, say func(string, ...any)) (row, error) {
	l, err := caseLoad(c, o, dir)
	if err != nil {
		return row{}, err
	}
	l.env = fx.wrkEnv()
	rw := row{name: fmt.Sprintf("`%s` c=%d", c.name(), o.connections), c: c, servers: c.servers()}
	srvs := make([]*server, len(rw.servers))
	for i, name := range rw.servers {
		srvs[i] = started[name]
	}
	// Every run of the case, the warm-up too, leaves the database as it
	// found it.
	run := func(s *server, d time.Duration) (result, error) {
		res, err := s.measure(ctx, o, l, d)
		if err == nil && c.cleanup != "" {
			err = fx.exec(ctx, c.cleanup)
		}
		return res, err
	}

	if c.prewarm {
		say("%s %s, filling the cache", c.zenspa, c.name())
		if err := fx.prewarm(ctx, started[c.zenspa].base); err != nil {
			return row{}, err
		}
	}
	// Pools, caches and the CPU's clock warm up unmeasured.
	if o.warmup > 0 {
		for _, s := range srvs {
			say("%s %s, warm-up", s.spec.name, c.name())
			if _, err := run(s, o.warmup); err != nil {
				return row{}, err
			}
		}
	}

	runs := make([][]result, len(srvs)) // by server, then round
	for round := range o.rounds {
		// A round in which the hypervisor took more than -max-steal of the
		// CPU measured the neighbours as much as the servers: it is run
		// again, a few times at most.
		for attempt := 0; ; attempt++ {
			results, steal, err := measureRound(srvs, round, func(s *server) (result, error) {
				say("%s %s, round %d of %d", s.spec.name, c.name(), round+1, o.rounds)
				return run(s, o.duration)
			})
			if err != nil {
				return row{}, err
			}
			if steal <= o.maxSteal || attempt == o.stealRetries {
				for i := range srvs {
					runs[i] = append(runs[i], results[i])
				}
				break
			}
			rw.discarded++
			say("steal %.0f%%, over %.0f%%: the round again", 100*steal, 100*o.maxSteal)
		}
	}

	base, zenspa := runs[0], runs[len(runs)-1]
	for i := range base {
		rw.ratios = append(rw.ratios, zenspa[i].rps/base[i].rps)
	}
	rw.zenspa = zenspa
	m := medianIndex(rw.ratios)
	for i := range srvs {
		rw.results = append(rw.results, runs[i][m])
	}
	return rw, nil
}

// caseLoad is what wrk sends for c: the case's own script, or one written
// into dir when the request is more than a plain GET.
func caseLoad(c benchCase, o options, dir string) (load, error) {
	l := load{path: c.path(), connections: o.connections}
	if c.script != "" {
		abs, err := filepath.Abs(c.script) // bench.sh runs from bench/
		l.script = abs
		return l, err
	}
	if lua := c.wrkScript(); lua != "" {
		f, err := os.CreateTemp(dir, "case-*.lua")
		if err != nil {
			return l, err
		}
		_, err = f.WriteString(lua)
		l.script = f.Name()
		return l, errors.Join(err, f.Close())
	}
	return l, nil
}

// measureRound runs every server, one after the other: in the order given
// in even rounds and in reverse in odd ones, so that no server always goes
// first. It returns the results in the order given, and the highest share
// of steal any run saw.
func measureRound(srvs []*server, round int, run func(*server) (result, error)) ([]result, float64, error) {
	results := make([]result, len(srvs))
	steal := 0.0
	for j := range srvs {
		i := j
		if round%2 == 1 {
			i = len(srvs) - 1 - j
		}
		res, err := run(srvs[i])
		if err != nil {
			return nil, 0, err
		}
		results[i] = res
		steal = max(steal, res.steal)
	}
	return results, steal, nil
}

// medianIndex returns the index of the median of v (the upper one of an
// even count).
func medianIndex(v []float64) int {
	idx := make([]int, len(v))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(v[a], v[b]) })
	return idx[len(idx)/2]
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

// measure runs wrk with l for d and charges the server's CPU time (user and
// system, from /proc) to the requests wrk completed. A script reads l.env,
// and BENCH_RUN, a tag no other run of the benchmark gets.
func (s *server) measure(ctx context.Context, o options, l load, d time.Duration) (result, error) {
	args := []string{
		"-c" + strconv.Itoa(l.connections), "-t" + strconv.Itoa(o.threads),
		"-d" + strconv.Itoa(int(d.Round(time.Second).Seconds())) + "s", "--latency",
	}
	if l.script != "" {
		args = append(args, "-s", l.script)
	}
	args = append(args, s.base+l.path)

	cpu0, err := cpuTime(s.pid())
	if err != nil {
		return result{}, err
	}
	steal0, total0 := machineSteal()
	wctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(wctx, "wrk", args...)
	cmd.Env = append(slices.Concat(os.Environ(), l.env), "BENCH_RUN="+strconv.FormatInt(time.Now().UnixNano(), 36))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // as the servers'
	out, err := cmd.CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	cpu1, err := cpuTime(s.pid())
	if err != nil {
		return result{}, err
	}
	steal1, total1 := machineSteal()

	res, err := parseWrk(string(out))
	if err != nil {
		return result{}, fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	if res.requests > 0 {
		res.cpuPerReq = (cpu1 - cpu0) / time.Duration(res.requests)
	}
	if total1 > total0 {
		res.steal = float64(steal1-steal0) / float64(total1-total0)
	}
	return res, nil
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

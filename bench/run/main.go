// Command run is the load benchmark behind BENCHMARKS.md (`make bench`).
// It makes the bench database anew (fixture.go), starts zenspa binaries and
// the bench/baseline servers on it, on free loopback ports (servers.go), and
// measures every case of the table in cases.go: wrk
// at fixed settings against zenspa and against the baseline that answers
// the same, back to back, for a few rounds (measure.go). Then it floods
// /health/db while counting what PostgreSQL receives (storm.go), and prints
// one Markdown report (report.go): throughput, latency, errors and CPU per
// request, zenspa's as ratios to its baseline; memory, start-to-ready time
// and binary size; and each target, met or missed.
//
//	run -zenspa ./zenspa -baseline ./baseline [-rounds 1] [-d 3s]
//
// It needs wrk and psql on PATH, PostgreSQL and Redis on 127.0.0.1, and
// Linux (/proc, machine.go). bench.sh builds both binaries and runs it from
// bench/, where the wrk scripts of the cases are found.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
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
	project          *project // the stand-in Supabase project the authenticated cases use
}

func main() {
	var o options
	flag.StringVar(&o.zenspa, "zenspa", "./zenspa", "the zenspa binary under test (a `make build` binary)")
	flag.StringVar(&o.baseline, "baseline", "", "the bench/baseline binary")
	flag.StringVar(&o.databaseURL, "database-url", "postgres://zenspa:zenspa@127.0.0.1:5432/zenspa_bench?sslmode=disable",
		"the bench database, which is dropped and created anew (a name ending in _bench), as the role that owns it: zenspa's DATABASE_URL")
	flag.StringVar(&o.redisHost, "redis-host", "127.0.0.1", "zenspa's REDIS_HOST (port 6379)")
	flag.IntVar(&o.connections, "c", 64, "wrk connections")
	flag.IntVar(&o.stormConnections, "storm-c", 256, "wrk connections of the probe storm on /health/db")
	flag.IntVar(&o.threads, "t", 2, "wrk threads")
	flag.DurationVar(&o.duration, "d", 10*time.Second, "length of each measured wrk run (whole seconds)")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured wrk run of each case on each server first (whole seconds, 0 for none)")
	flag.IntVar(&o.rounds, "rounds", 5, "runs of each case per server; the round with the median ratio to the baseline is reported")
	flag.Float64Var(&o.maxSteal, "max-steal", 0.05, "run a round again when the hypervisor took more than this share of the CPU")
	flag.IntVar(&o.stealRetries, "steal-retries", 3, "how many times at most a round is run again for steal")
	flag.DurationVar(&o.waitIdle, "wait-idle", 15*time.Minute, "wait this long at most for other `go test` processes to end before measuring")
	flag.Parse()
	if o.baseline == "" || o.rounds < 1 || o.duration < time.Second || (o.warmup != 0 && o.warmup < time.Second) || flag.NArg() > 0 {
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
	// A mistake in the tables fails now, not after minutes of measuring.
	if err := errors.Join(checkCases(cases, servers), checkComparisons(comparisons, cases)); err != nil {
		return err
	}
	for _, tool := range []string{"wrk", "psql"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed: run `bash scripts/services.sh --bench`", tool)
		}
	}
	say := func(format string, args ...any) { fmt.Fprintf(progress, "bench: "+format+"\n", args...) }
	others := waitForIdleMachine(ctx, o.waitIdle, say)

	dir, err := os.MkdirTemp("", "zenspa-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	if o.project, err = startProject(); err != nil {
		return fmt.Errorf("project: %w", err)
	}
	defer o.project.stop()
	say("bench database: %d treatments", seedRows)
	fx, err := prepareDatabase(ctx, o, dir)
	if err != nil {
		return fmt.Errorf("bench database: %w", err)
	}
	fx.token = o.project.token

	// Every server of the table, started once; stopped at the end (the
	// zenspas earlier, before the probe storm is counted).
	var rep report
	started := make(map[string]*server, len(servers))
	for _, spec := range servers {
		s, err := startServer(ctx, o, dir, spec)
		if err != nil {
			return fmt.Errorf("%s: %w", spec.name, err)
		}
		defer s.stop()
		started[spec.name] = s
		if spec.zenspa {
			say("%s ready in %s", spec.name, s.ready.Round(100*time.Microsecond))
			rep.readies = append(rep.readies, s.ready)
		}
	}
	z, b := started[zenspaServer], started[withHeadersBaseline]

	// Idle memory, once all have settled.
	if err := sleep(ctx, time.Second); err != nil {
		return err
	}
	if rep.zenspa.idleRSS, err = rssKB(z.pid()); err != nil {
		return err
	}
	if rep.baseline.idleRSS, err = rssKB(b.pid()); err != nil {
		return err
	}
	// Only then zenspa is asked for the deep page's cursor.
	if err := fx.findCursor(ctx, z.base); err != nil {
		return err
	}

	for _, c := range cases {
		rw, err := measureCase(ctx, o, dir, fx, c, started, say)
		if err != nil {
			return fmt.Errorf("%s: %w", c.route, err)
		}
		rep.rows = append(rep.rows, rw)
	}

	// The probe storm: the baseline's for comparison, then zenspa's, counted
	// by PostgreSQL once every zenspa has stopped.
	say("%s storm on %s, c=%d", b.spec.name, stormPath, o.stormConnections)
	bStorm, err := b.measure(ctx, o, load{path: stormPath, connections: o.stormConnections}, o.duration)
	if err != nil {
		return err
	}
	if rep.zenspa.rss, err = rssKB(z.pid()); err != nil {
		return err
	}
	if rep.baseline.rss, err = rssKB(b.pid()); err != nil {
		return err
	}
	for _, s := range started {
		if s.spec.zenspa {
			s.stop()
		}
	}
	storm, zStorm, readies, err := probeStorm(ctx, o, dir, z.spec, say)
	if err != nil {
		return err
	}
	rep.storm = storm
	rep.readies = append(rep.readies, readies...)
	rep.rows = append(rep.rows, row{
		name:    fmt.Sprintf("`GET %s` storm c=%d", stormPath, o.stormConnections),
		servers: []string{b.spec.name, zenspaServer},
		results: []result{bStorm, zStorm},
	})

	if rep.zenspa.size, err = fileSize(o.zenspa); err != nil {
		return err
	}
	if rep.baseline.size, err = fileSize(o.baseline); err != nil {
		return err
	}
	rep.opts, rep.others = o, others
	for _, rw := range rep.rows {
		rep.discarded += rw.discarded
	}
	rep.write(out)
	return nil
}

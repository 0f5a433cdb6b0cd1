package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// report is everything the benchmark prints.
type report struct {
	opts      options
	rows      []row // the cases, then the probe storm
	storm     stormResult
	others    []string // test processes that ran anyway
	discarded int      // rounds run again for steal
	zenspa    processFacts
	baseline  processFacts // the with-headers baseline
	readies   []time.Duration
}

// processFacts are a server's memory and binary size.
type processFacts struct {
	idleRSS, rss int64 // KiB, one second after start and after the cases
	size         int64 // bytes
}

// write prints the report in Markdown: the setting, the runs, the
// processes, the storm, then the targets.
func (r *report) write(w io.Writer) {
	o := r.opts
	fmt.Fprintf(w, "Date: %s. Machine: %d cores (%s), %s, Linux %s.\n", time.Now().UTC().Format("2006-01-02 15:04 MST"),
		runtime.NumCPU(), cpuModel(), runtime.Version(), kernel())
	fmt.Fprintf(w, "wrk -c%d -t%d -d%s --latency (storm: -c%d), %d round(s) per case, the servers back to back in each (the baseline first in odd rounds); "+
		"each case shows the round with the median ratio of zenspa's requests/s to its baseline's. Ratios are to the first server of the case, the baseline its targets are judged against.\n",
		o.connections, o.threads, o.duration, o.stormConnections, o.rounds)
	fmt.Fprintf(w, "The treatment cases run on a database made anew for the run, zenspa's schema and %d treatments; "+
		"the deep page is the one after row %d, the by-id cases ask for every %dth row in turn, and the POST rows are deleted after each run.\n",
		seedRows, deepRow, idEvery)
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
		b := rw.results[0]
		fmt.Fprintf(w, "| %s | %s | %.0f | %s | %s | %s | %.1f µs | %.0f%% |\n",
			rw.name, rw.servers[0], b.rps, ms(b.p50), ms(b.p99), errs(b), us(b.cpuPerReq), 100*b.steal)
		for i, s := range rw.results[1:] {
			fmt.Fprintf(w, "| | %s | %.0f (%.2f×) | %s (%.2f×) | %s (%.2f×) | %s | %.1f µs (%.2f×) | %.0f%% |\n",
				rw.servers[i+1], s.rps, s.rps/b.rps, ms(s.p50), ratio(s.p50, b.p50), ms(s.p99), ratio(s.p99, b.p99),
				errs(s), us(s.cpuPerReq), ratio(s.cpuPerReq, b.cpuPerReq), 100*s.steal)
		}
	}
	fmt.Fprintln(w)
	if o.rounds > 1 {
		fmt.Fprintln(w, "zenspa's requests/s as a ratio to its baseline's, round by round:")
		fmt.Fprintln(w)
		for _, rw := range r.rows {
			if len(rw.ratios) == 0 {
				continue
			}
			ratios := make([]string, len(rw.ratios))
			for i, v := range rw.ratios {
				ratios[i] = fmt.Sprintf("%.2f", v)
			}
			fmt.Fprintf(w, "- %s: %s\n", rw.name, strings.Join(ratios, ", "))
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintf(w, "| process | %s | %s |\n", zenspaServer, withHeadersBaseline)
	fmt.Fprintln(w, "|---|--:|--:|")
	fmt.Fprintf(w, "| idle RSS after start | %s | %s |\n", mb(r.zenspa.idleRSS<<10), mb(r.baseline.idleRSS<<10))
	fmt.Fprintf(w, "| RSS after the cases | %s | %s |\n", mb(r.zenspa.rss<<10), mb(r.baseline.rss<<10))
	readies := make([]string, len(r.readies))
	for i, d := range r.readies {
		readies[i] = msec(d)
	}
	fmt.Fprintf(w, "| start to first 200 of `/health/ready` (each zenspa started) | %s | |\n", strings.Join(readies, ", "))
	fmt.Fprintf(w, "| binary size | %s | %s |\n", mb(r.zenspa.size), mb(r.baseline.size))
	fmt.Fprintln(w)

	qps := r.storm.perSecond()
	fmt.Fprintf(w, "Probe storm: %d `%s` answers in %.1f s. PostgreSQL committed %d transactions in the database over the life of the zenspa that took them "+
		"(start, storm, stop) and %d over the life of one only started and stopped: the storm itself cost %d queries, %.2f per second.\n",
		r.storm.probes, stormPath, r.storm.seconds, r.storm.lifetime, r.storm.startup, r.storm.lifetime-r.storm.startup, qps)
	fmt.Fprintln(w)

	fmt.Fprintln(w, "| target | measured | met |")
	fmt.Fprintln(w, "|---|--:|---|")
	for _, c := range r.checks() {
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

// checks are the targets: each case's, then the process-wide ones.
func (r *report) checks() []check {
	var checks []check
	non2xx := int64(0)
	for _, rw := range r.rows {
		b, z, c := rw.results[0], rw.results[len(rw.results)-1], rw.c
		if c.minRPS > 0 {
			checks = append(checks, atLeast(fmt.Sprintf("`%s` requests/s ≥ %.2f× %s", c.name(), c.minRPS, rw.servers[0]), z.rps/b.rps, c.minRPS))
		}
		if c.maxCPU > 0 {
			checks = append(checks, atMost(fmt.Sprintf("`%s` CPU/request ≤ %.2f× %s", c.name(), c.maxCPU, rw.servers[0]), ratio(z.cpuPerReq, b.cpuPerReq), c.maxCPU))
		}
		if c.maxP99 > 0 {
			checks = append(checks, atMost(fmt.Sprintf("`%s` p99 ≤ %.2f× %s", c.name(), c.maxP99, rw.servers[0]), ratio(z.p99, b.p99), c.maxP99))
		}
		for _, res := range rw.results {
			if c.refused {
				non2xx += res.requests - res.non2xx + res.sockErrors // each answer should have been refused
			} else {
				non2xx += res.non2xx + res.sockErrors
			}
		}
	}
	checks = append(checks, r.comparisonChecks()...)
	qps := r.storm.perSecond()
	slowest := slices.Max(r.readies)
	return append(checks,
		check{"probe storm: at most a few PostgreSQL queries per second", fmt.Sprintf("%.2f/s", qps), qps <= 3},
		check{"idle RSS ≤ 15 MB", mb(r.zenspa.idleRSS << 10), r.zenspa.idleRSS<<10 <= 15_000_000},
		check{"start to ready ≤ 100 ms (the slowest start)", msec(slowest), slowest <= 100*time.Millisecond},
		check{"zero non-2xx (and socket errors) in every case, on every server (a case of 401s: zero others)", strconv.FormatInt(non2xx, 10), non2xx == 0},
	)
}

// comparisonChecks are the targets of comparisons, on the median of zenspa's
// runs of each case.
func (r *report) comparisonChecks() []check {
	byName := make(map[string]row, len(r.rows))
	for _, rw := range r.rows {
		byName[rw.c.name()] = rw
	}
	var checks []check
	for _, cmp := range comparisons {
		figure := func(res result) float64 { return res.rps }
		if cmp.p50 {
			figure = func(res result) float64 { return float64(res.p50) }
		}
		v := median(byName[cmp.of].zenspa, figure) / median(byName[cmp.to].zenspa, figure)
		name := cmp.target + " (zenspa, medians over the rounds)"
		if cmp.min > 0 {
			checks = append(checks, atLeast(name, v, cmp.min))
		}
		if cmp.max > 0 {
			checks = append(checks, atMost(name, v, cmp.max))
		}
	}
	return checks
}

// median is the median of figure over runs (the upper one of an even
// count), 0 for none.
func median(runs []result, figure func(result) float64) float64 {
	if len(runs) == 0 {
		return 0
	}
	v := make([]float64, len(runs))
	for i, res := range runs {
		v[i] = figure(res)
	}
	return v[medianIndex(v)]
}

// atLeast checks that the ratio v is min or more.
func atLeast(name string, v, min float64) check {
	return check{name, fmt.Sprintf("%.2f×", v), v >= min}
}

// atMost checks that the ratio v is max or less.
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

// mb formats a size in bytes as MB (10^6) with one decimal, as the targets
// are stated.
func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

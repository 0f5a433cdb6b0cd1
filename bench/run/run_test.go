package main

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// The harness's own logic: what it reads from wrk, what it writes for wrk,
// and the checks of its tables. `cd bench && go test ./...`; no server needed.

func TestParseWrk(t *testing.T) {
	const clean = `Running 1s test @ http://127.0.0.1:18458/health/db
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   180.94us  449.82us   5.74ms   94.58%
    Req/Sec    42.40k     7.82k   53.07k    63.64%
  Latency Distribution
     50%   76.00us
     75%   99.00us
     90%  251.00us
     99%    2.74ms
  46385 requests in 1.10s, 25.88MB read
Requests/sec:  42155.61
Transfer/sec:     23.52MB
`
	withErrors := strings.Replace(clean, "Requests/sec:",
		"  Socket errors: connect 1, read 2, write 0, timeout 4\n  Non-2xx or 3xx responses: 7\nRequests/sec:", 1)
	want := result{requests: 46385, seconds: 1.1, rps: 42155.61, p50: 76 * time.Microsecond, p99: 2740 * time.Microsecond}
	wantErrors := want
	wantErrors.non2xx, wantErrors.sockErrors = 7, 7

	for _, tc := range []struct {
		name, in string
		want     result
		wantErr  bool
	}{
		{"clean", clean, want, false},
		{"errors", withErrors, wantErrors, false},
		{"no latency distribution", strings.Replace(clean, "     99%    2.74ms\n", "", 1), result{}, true},
		{"not wrk", "unable to connect to 127.0.0.1:1 Connection refused\n", result{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseWrk(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parseWrk(%s) = %+v, want an error", tc.name, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseWrk(%s) = %+v, %v, want %+v", tc.name, got, err, tc.want)
			}
		})
	}
}

func TestWrkScript(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    benchCase
		want string
	}{
		{"plain GET", benchCase{route: "GET /health"}, ""},
		{"own script", benchCase{route: "GET /x/{id}", script: "wrk/x.lua"}, ""},
		{"header", benchCase{route: "GET /api", header: map[string]string{"Authorization": "Bearer t"}},
			"wrk.method = \"GET\"\nwrk.headers[\"Authorization\"] = \"Bearer t\"\n"},
		{"POST, headers sorted, body escaped", benchCase{
			route:  "POST /api",
			header: map[string]string{"X-B": "2", "Content-Type": "application/json"},
			body:   "{\"name\":\"Soin visage é\\\"\"}\n",
		}, `wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-B"] = "2"
wrk.body = "{\"name\":\"Soin visage \195\169\\\"\"}\010"
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.c.wrkScript(); got != tc.want {
				t.Errorf("wrkScript(%s) = %q, want %q", tc.name, got, tc.want)
			}
		})
	}
}

func TestCheckCases(t *testing.T) {
	t.Chdir("..") // the scripts' paths are from bench/, where bench.sh runs the harness
	if err := checkCases(cases, servers); err != nil {
		t.Fatalf("checkCases(cases, servers) = %v, want nil", err)
	}
	good := benchCase{route: "GET /health", zenspa: zenspaServer, baseline: withHeadersBaseline, minRPS: 0.85}
	for _, tc := range []struct {
		name string
		edit func(*benchCase)
		want string
	}{
		{"no method", func(c *benchCase) { c.route = "/health" }, "METHOD /path"},
		{"unknown baseline", func(c *benchCase) { c.baseline = "baseline" }, `"baseline" is not a baseline server`},
		{"zenspa as a baseline", func(c *benchCase) { c.also = []string{zenspaServer} }, "is not a baseline server"},
		{"baseline as zenspa", func(c *benchCase) { c.zenspa = bareBaseline }, "is not a zenspa server"},
		{"script and body", func(c *benchCase) { c.script, c.body = "x.lua", "{}" }, "a script sets"},
		{"{name} without a script", func(c *benchCase) { c.route = "GET /t/{id}" }, "only a script"},
		{"no target", func(c *benchCase) { c.minRPS = 0 }, "no requests/s target"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			err := checkCases([]benchCase{c}, servers)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("checkCases(%s) = %v, want an error with %q", tc.name, err, tc.want)
			}
		})
	}
	if err := checkCases([]benchCase{good, good}, servers); err == nil || !strings.Contains(err.Error(), "a second case") {
		t.Errorf("checkCases(twice the same case) = %v, want an error with %q", err, "a second case")
	}
}

func TestCheckComparisons(t *testing.T) {
	if err := checkComparisons(comparisons, cases); err != nil {
		t.Fatalf("checkComparisons(comparisons, cases) = %v, want nil", err)
	}
	if want := "{after row " + strconv.Itoa(deepRow) + "}"; !strings.HasSuffix(deepPage, want) {
		t.Errorf("deepPage = %q, want it to end in %q, the row fixture.go pages to", deepPage, want)
	}
	good := comparison{target: "t", of: firstPage, to: deepPage, max: 1.2}
	for _, tc := range []struct {
		name string
		edit func(*comparison)
		want string
	}{
		{"unknown case", func(c *comparison) { c.to = "GET /nope" }, `no case "GET /nope"`},
		{"route of a case on another zenspa", func(c *comparison) { c.of = byID + ", " + zenspaServer }, "no case"},
		{"no bound", func(c *comparison) { c.max = 0 }, "no bound"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			err := checkComparisons([]comparison{c}, cases)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("checkComparisons(%s) = %v, want an error with %q", tc.name, err, tc.want)
			}
		})
	}
}

func TestComparisonChecks(t *testing.T) {
	runs := func(rps float64, p50ms ...int) []result {
		var rs []result
		for _, ms := range p50ms {
			rs = append(rs, result{rps: rps, p50: time.Duration(ms) * time.Millisecond})
		}
		return rs
	}
	r := report{rows: []row{
		{c: benchCase{route: firstPage, zenspa: zenspaServer}, zenspa: runs(1000, 10, 2, 3)},
		{c: benchCase{route: deepPage, zenspa: zenspaServer}, zenspa: runs(1000, 4, 1, 9)}, // medians 3 and 4 ms
		{c: benchCase{route: byID, zenspa: zenspaServer}, zenspa: runs(3000, 1)},
		{c: benchCase{route: byID, zenspa: zenspaCacheOff}, zenspa: runs(1000, 1)},
		{c: benchCase{route: me, variant: "no token (401)", zenspa: zenspaServer}, zenspa: runs(2000, 1)},
		{c: benchCase{route: me, variant: "ES256 token", zenspa: zenspaServer}, zenspa: runs(1500, 1)},
	}}
	got := r.comparisonChecks()
	want := []check{
		{comparisons[0].target + " (zenspa, medians over the rounds)", "1.33×", false},
		{comparisons[1].target + " (zenspa, medians over the rounds)", "3.00×", true},
		{comparisons[2].target + " (zenspa, medians over the rounds)", "0.75×", false},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("comparisonChecks() = %+v, want %+v", got, want)
	}
}

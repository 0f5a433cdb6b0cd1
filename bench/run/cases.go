package main

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
)

// The servers the cases name.
const (
	zenspaServer        = "zenspa"
	zenspaCacheOff      = "zenspa CACHE_TTL=0"
	withHeadersBaseline = "with-headers baseline"
	baselineCacheOff    = "with-headers baseline, no cache"
	bareBaseline        = "bare baseline"
)

// A serverSpec says how to start one server: the zenspa binary under test
// with the documented settings, or bench/baseline with some flags.
type serverSpec struct {
	name   string
	zenspa bool     // the binary under test; otherwise bench/baseline
	args   []string // bench/baseline flags
	env    []string // zenspa settings beyond the documented ones, NAME=value
}

// servers are started once each, before the first case, in this order. A
// zenspa with other settings is one more line with env; every baseline is
// told where the bench database and Redis are (servers.go).
var servers = []serverSpec{
	{name: zenspaServer, zenspa: true},
	{name: zenspaCacheOff, zenspa: true, env: []string{"CACHE_TTL=0"}},
	{name: withHeadersBaseline, args: []string{"-headers", "-limits"}},
	{name: baselineCacheOff, args: []string{"-headers", "-limits", "-cache-ttl", "0"}},
	{name: bareBaseline},
}

// A benchCase is one request, measured on a zenspa and on the baseline it is
// judged against, which answers the same body with the same headers.
type benchCase struct {
	route    string            // "METHOD /path?query", the report's name; a {name} in it needs a script
	header   map[string]string // request headers beyond wrk's, such as Authorization
	body     string            // the request body, such as a POST's JSON
	script   string            // a wrk Lua script (path from bench/) for requests that vary, instead of header and body
	zenspa   string            // the zenspa server measured
	baseline string            // the server zenspa is judged against
	also     []string          // servers shown beside them, for information only
	prewarm  bool              // first read every id of the by-id cases once from zenspa, to fill its cache
	cleanup  string            // SQL run on the bench database after every run of the case
	variant  string            // tells two cases of one route apart in the report, such as "ES256 token"
	refused  bool              // every answer is a 4xx on purpose (a 401): then non-2xx must be all of them

	// Targets, as ratios of zenspa's figure to the baseline's; 0 is none.
	minRPS, maxCPU, maxP99 float64
}

// The routes of the treatment cases, which the comparisons name too. The
// {…} of a route is what its script appends: the cursor of the page after
// row deepRow (fixture.go), or an id.
const (
	firstPage = "GET /api/v1/treatments?limit=20"
	deepPage  = "GET /api/v1/treatments?limit=20&cursor={after row 9000}"
	byID      = "GET /api/v1/treatments/{id}"
	me        = "GET /api/v1/me"
)

// cases are measured in this order, and reported so. Adding a route is one
// line here and a handler in bench/baseline that does the same work plainly:
//
//	{route: "GET /api/v1/clients?limit=20", zenspa: zenspaServer, baseline: withHeadersBaseline, minRPS: 0.85},
//	{route: "POST /api/v1/clients", header: map[string]string{"Content-Type": "application/json"}, body: `{"name":"An"}`, ...},
//	{route: "GET /api/v1/clients/{id}", script: "wrk/client-by-id.lua", ...},
//
// The treatment cases run on the bench database (fixture.go). A case that
// writes comes last and cleans up after every run, so that each run, and
// any case after it, meets the seeded table.
var cases = []benchCase{
	{route: "GET /health", zenspa: zenspaServer, baseline: withHeadersBaseline, also: []string{bareBaseline}, minRPS: 0.85, maxCPU: 1.3, maxP99: 1.5},
	{route: "GET /health/db", zenspa: zenspaServer, baseline: withHeadersBaseline, minRPS: 0.85},
	{route: "GET /health/redis", zenspa: zenspaServer, baseline: withHeadersBaseline, minRPS: 0.85},
	{route: firstPage, zenspa: zenspaServer, baseline: withHeadersBaseline, minRPS: 0.85},
	{route: deepPage, script: "wrk/deep-page.lua", zenspa: zenspaServer, baseline: withHeadersBaseline, minRPS: 0.85},
	{route: byID, script: "wrk/treatment-by-id.lua", prewarm: true, zenspa: zenspaServer, baseline: withHeadersBaseline, minRPS: 0.85},
	{route: byID, script: "wrk/treatment-by-id.lua", zenspa: zenspaCacheOff, baseline: baselineCacheOff, minRPS: 0.85},
	{route: "POST /api/v1/treatments", script: "wrk/create-treatment.lua", cleanup: deletePosted, zenspa: zenspaServer, baseline: withHeadersBaseline, minRPS: 0.85},
	{route: me, variant: "no token (401)", refused: true, zenspa: zenspaServer, baseline: withHeadersBaseline, minRPS: 0.85},
	{route: me, variant: "ES256 token", script: "wrk/me-token.lua", zenspa: zenspaServer, baseline: withHeadersBaseline, minRPS: 0.85},
}

// A comparison is a target between two cases on zenspa's figures alone,
// each the median over the case's rounds.
type comparison struct {
	target   string  // as the report states it
	of, to   string  // case names: the ratio is of's figure to to's
	p50      bool    // compare the p50 latency; otherwise requests/s
	min, max float64 // bounds of the ratio; 0 is none
}

// comparisons are reported after the cases' own targets.
var comparisons = []comparison{
	{target: "deep page p50 ≤ 1.2× first page p50", of: deepPage, to: firstPage, p50: true, max: 1.2},
	{target: "warm-cache GET by id requests/s ≥ 2× cache off", of: byID, to: byID + ", " + zenspaCacheOff, min: 2},
	{target: "authenticated GET /api/v1/me requests/s ≥ 0.8× its 401", of: me + ", ES256 token", to: me + ", no token (401)", min: 0.8},
}

// method is the route's method.
func (c benchCase) method() string {
	m, _, _ := strings.Cut(c.route, " ")
	return m
}

// path is where wrk is pointed: the route's path and query, or for a route
// with a {name} in it the part before, to which the script's request
// function appends the rest (wrk.path .. id).
func (c benchCase) path() string {
	_, p, _ := strings.Cut(c.route, " ")
	p, _, _ = strings.Cut(p, "{")
	return p
}

// name is how the report names the case: its route, and its zenspa when
// that is not the one with the documented settings.
func (c benchCase) name() string {
	name := c.route
	if c.variant != "" {
		name += ", " + c.variant
	}
	if c.zenspa != zenspaServer {
		name += ", " + c.zenspa
	}
	return name
}

// servers are the servers the case runs on, in the report's order: the
// baseline, the informative ones, zenspa last.
func (c benchCase) servers() []string {
	return slices.Concat([]string{c.baseline}, c.also, []string{c.zenspa})
}

// wrkScript is the Lua that makes wrk send the case's method, headers and
// body, or "" when the request is a plain GET or the case has a script.
func (c benchCase) wrkScript() string {
	if c.script != "" || (c.method() == http.MethodGet && len(c.header) == 0 && c.body == "") {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "wrk.method = %s\n", luaString(c.method()))
	for _, name := range slices.Sorted(maps.Keys(c.header)) {
		fmt.Fprintf(&b, "wrk.headers[%s] = %s\n", luaString(name), luaString(c.header[name]))
	}
	if c.body != "" {
		fmt.Fprintf(&b, "wrk.body = %s\n", luaString(c.body))
	}
	return b.String()
}

// luaString quotes s for Lua: printable ASCII as it is, every other byte as
// a three-digit decimal escape, which every Lua reads.
func luaString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := range len(s) {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c >= ' ' && c <= '~':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "\\%03d", c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// checkCases reports every mistake in the tables: a malformed route, a
// second case of the same name, a server that is not in specs or of the
// wrong kind, a missing script or one beside headers or a body, a case
// without a requests/s target.
func checkCases(cs []benchCase, specs []serverSpec) error {
	kind := make(map[string]bool, len(specs)) // name → is zenspa
	for _, s := range specs {
		kind[s.name] = s.zenspa
	}
	var errs []error
	seen := make(map[string]bool, len(cs))
	for _, c := range cs {
		fail := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("case %q: "+format, append([]any{c.route}, args...)...))
		}
		if c.method() == "" || !strings.HasPrefix(c.path(), "/") || strings.Contains(c.path(), " ") {
			fail(`route must be "METHOD /path"`)
		}
		if seen[c.name()] {
			fail("a second case of this name")
		}
		seen[c.name()] = true
		if z, ok := kind[c.zenspa]; !ok || !z {
			fail("zenspa %q is not a zenspa server", c.zenspa)
		}
		for _, name := range append([]string{c.baseline}, c.also...) {
			if z, ok := kind[name]; !ok || z {
				fail("%q is not a baseline server", name)
			}
		}
		if c.script != "" {
			if _, err := os.Stat(c.script); err != nil {
				fail("script: %v", err)
			}
			if len(c.header) > 0 || c.body != "" {
				fail("a script sets the headers and the body itself")
			}
		}
		if c.script == "" && strings.Contains(c.route, "{") {
			fail("only a script can fill in a {name}")
		}
		if c.minRPS <= 0 {
			fail("no requests/s target")
		}
	}
	return errors.Join(errs...)
}

// checkComparisons reports every comparison that names a case not in cs or
// has no bound.
func checkComparisons(cmps []comparison, cs []benchCase) error {
	names := make(map[string]bool, len(cs))
	for _, c := range cs {
		names[c.name()] = true
	}
	var errs []error
	for _, cmp := range cmps {
		for _, name := range []string{cmp.of, cmp.to} {
			if !names[name] {
				errs = append(errs, fmt.Errorf("comparison %q: no case %q", cmp.target, name))
			}
		}
		if cmp.min <= 0 && cmp.max <= 0 {
			errs = append(errs, fmt.Errorf("comparison %q: no bound", cmp.target))
		}
	}
	return errors.Join(errs...)
}

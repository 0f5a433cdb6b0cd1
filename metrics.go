package main

import (
	"maps"
	"math"
	"net/http"
	"runtime"
	runtimemetrics "runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Prometheus metrics, written by hand in the text exposition format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/). The
// families, each with a HELP line in writeMetrics:
//
//	http_requests_total{method,route,code}, http_request_duration_seconds{method,route},
//	http_requests_in_flight; dependency_up{dependency},
//	dependency_check_duration_seconds{dependency}; db_pool_* (open, in use,
//	idle, max, waits, wait time) and redis_pool_* (active, idle);
//	process_start_time_seconds, go_goroutines, go_memstats_heap_inuse_bytes,
//	go_gc_cycles_total; zenspa_build_info{version,goversion}; with
//	authentication on, auth_verifications_total{outcome},
//	auth_verifications_cached_total, auth_jwks_fetches_total{result} and
//	auth_jwks_keys; with the rate limit on, rate_limit_requests_total{result}
//	and rate_limit_fail_open_total.
//
// route is a registered pattern or "unmatched", never a raw path, and method
// one of methodLabels: no request can add a series.

// metricsPath is where Prometheus scrapes; metricsPattern is its route.
const (
	metricsPath    = "/metrics"
	metricsPattern = "GET " + metricsPath
)

// metricsContentType announces the text exposition format 0.0.4.
const metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

// unmatchedRoute is the route label of a request that no route pattern
// matched: 404s, 405s, CORS preflights, bodies refused before routing. It is
// never the raw path, so a scanner hitting random URLs adds no series.
const unmatchedRoute = "unmatched"

// durationBuckets are the upper bounds of every duration histogram.
var durationBuckets = [...]time.Duration{
	500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
	5 * time.Second, 10 * time.Second,
}

// methodLabels are the values of the method label. Any other method is
// counted as the last one, "other", so odd methods add no series.
var methodLabels = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodPatch, http.MethodDelete, http.MethodOptions, "other",
}

// metrics holds the figures counted as the server works, under one mutex;
// pools and runtime are read at scrape time instead.
type metrics struct {
	started time.Time // process_start_time_seconds; serve sets the time it began

	mu           sync.Mutex
	routes       map[string]bool // the registered patterns: the values of the route label
	inFlight     int
	requests     map[requestKey]uint64        // answered requests
	durations    map[routeKey]*histogram      // their durations
	dependencies map[string]*dependencySeries // keys fixed by newMetrics
}

// routeKey is a method label and a route label.
type routeKey struct {
	method, route string
}

// requestKey is a routeKey and a status code.
type requestKey struct {
	routeKey
	code int
}

// dependencySeries is the check history of one dependency.
type dependencySeries struct {
	checked, up bool // dependency_up is absent until the first check: not checked yet is not down
	duration    histogram
}

// newMetrics returns empty metrics that will follow the checks of the named
// dependencies. Its creation stands for the process start until serve, which
// knows better, replaces it.
func newMetrics(dependencies ...string) *metrics {
	m := &metrics{
		started:      time.Now(),
		routes:       map[string]bool{},
		requests:     map[requestKey]uint64{},
		durations:    map[routeKey]*histogram{},
		dependencies: map[string]*dependencySeries{},
	}
	for _, d := range dependencies {
		m.dependencies[d] = &dependencySeries{}
	}
	return m
}

// addRoute makes pattern a value of the route label; the server calls it
// for each pattern it registers, so the label takes only the values of the
// route table. It does nothing when metrics are off (m is nil).
func (m *metrics) addRoute(pattern string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.routes[pattern] = true
}

// recordMetrics counts every request: in flight while it runs, then by
// method, route and status with its duration. The route is the pattern that
// ServeMux stores in the request it is given, read once the routes have run:
// this middleware must run inside requestID, which replaces the request, and
// nothing between it and the routes may replace it again. Scrapes of /metrics
// are not counted. Without METRICS_ENABLED it is not in the chain at all.
func (s *server) recordMetrics(next http.Handler) http.Handler {
	m := s.metrics
	if m == nil {
		return next
	}
	scrapedHere := s.cfg.MetricsAddr == ""
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if scrapedHere && r.URL.Path == metricsPath && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		m.addInFlight(1)
		rec := recorder(w)
		returned := false
		defer func() {
			m.addInFlight(-1)
			status := rec.status
			switch {
			case status == 0 && returned:
				status = http.StatusOK // net/http sends 200 for a handler that wrote nothing
			case status == 0:
				status = http.StatusInternalServerError // a panic on its way to recoverPanics
			}
			m.observeRequest(r.Method, r.Pattern, status, time.Since(start))
		}()
		next.ServeHTTP(rec, r)
		returned = true
	})
}

// addInFlight changes the number of requests being served.
func (m *metrics) addInFlight(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inFlight += n
}

// observeRequest counts one finished request. A pattern not registered (the
// catch-all "/", none at all, or the path ServeMux reports for a
// trailing-slash redirect) counts as unmatched, and a method not in
// methodLabels as "other".
func (m *metrics) observeRequest(method, pattern string, status int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.routes[pattern] {
		pattern = unmatchedRoute
	}
	if !slices.Contains(methodLabels[:], method) {
		method = "other"
	}
	key := routeKey{method, pattern}
	m.requests[requestKey{key, status}]++
	h := m.durations[key]
	if h == nil {
		h = &histogram{}
		m.durations[key] = h
	}
	h.observe(d)
}

// observeCheck records one finished dependency check; it is the checkers'
// report hook.
func (m *metrics) observeCheck(dependency string, res checkResult) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.dependencies[dependency]
	if !ok {
		return
	}
	d.duration.observe(res.elapsed)
	d.checked, d.up = true, res.ok()
}

// histogram counts durations into durationBuckets. Each bucket holds only its
// own range, the last one everything above the largest bound; the cumulative
// counts of the format are summed at scrape time.
type histogram struct {
	buckets [len(durationBuckets) + 1]uint64
	sum     time.Duration
}

// observe counts one duration.
func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(durationBuckets) && d > durationBuckets[i] {
		i++
	}
	h.buckets[i]++
	h.sum += d
}

// handleMetrics answers a scrape. The whole text is built before anything is
// sent, so that a failure cannot leave a truncated scrape that parses.
func (s *server) handleMetrics() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e exposition
		s.writeMetrics(&e)
		writeBody(w, http.StatusOK, metricsContentType, e.buf)
	})
}

// writeMetrics writes every metric family in a fixed order.
func (s *server) writeMetrics(e *exposition) {
	m := s.metrics

	m.mu.Lock()
	e.family("http_requests_in_flight", "gauge", "Requests being served, scrapes of /metrics excluded.")
	e.sample("http_requests_in_flight", float64(m.inFlight))
	e.family("http_requests_total", "counter",
		"Requests answered, by method, matched route pattern (unmatched when none matched) and status code.")
	for _, k := range sortedKeys(m.requests, compareRequests) {
		e.sample("http_requests_total", float64(m.requests[k]),
			"method", k.method, "route", k.route, "code", strconv.Itoa(k.code))
	}
	e.family("http_request_duration_seconds", "histogram",
		"Time to answer a request, by method and matched route pattern (unmatched when none matched).")
	for _, k := range sortedKeys(m.durations, compareRoutes) {
		e.histogram("http_request_duration_seconds", m.durations[k], "method", k.method, "route", k.route)
	}

	dependencies := slices.Sorted(maps.Keys(m.dependencies))
	e.family("dependency_up", "gauge", "Whether the last check of a dependency succeeded (1) or not (0); absent before its first check.")
	for _, name := range dependencies {
		if d := m.dependencies[name]; d.checked {
			up := 0.0
			if d.up {
				up = 1
			}
			e.sample("dependency_up", up, "dependency", name)
		}
	}
	e.family("dependency_check_duration_seconds", "histogram", "Duration of the dependency checks behind the health endpoints.")
	for _, name := range dependencies {
		if d := m.dependencies[name]; d.checked {
			e.histogram("dependency_check_duration_seconds", &d.duration, "dependency", name)
		}
	}
	m.mu.Unlock()

	db := s.db.pool.Stats()
	e.gauge("db_pool_max_open_connections", "Most PostgreSQL connections the pool opens (DB_POOL_SIZE + DB_MAX_OVERFLOW).", float64(db.MaxOpenConnections))
	e.gauge("db_pool_open_connections", "PostgreSQL connections open, in use or idle.", float64(db.OpenConnections))
	e.gauge("db_pool_in_use_connections", "PostgreSQL connections in use.", float64(db.InUse))
	e.gauge("db_pool_idle_connections", "Idle PostgreSQL connections.", float64(db.Idle))
	e.counter("db_pool_waits_total", "Times a request waited for a free PostgreSQL connection.", float64(db.WaitCount))
	e.counter("db_pool_wait_duration_seconds_total", "Total time requests waited for a free PostgreSQL connection.", db.WaitDuration.Seconds())
	e.gauge("redis_pool_active_connections", "Redis connections the pool holds, idle ones included.", float64(s.cache.pool.ActiveCount()))
	e.gauge("redis_pool_idle_connections", "Idle Redis connections.", float64(s.cache.pool.IdleCount()))

	// runtime/metrics reads these without stopping the world, unlike
	// runtime.ReadMemStats. Heap in use is live and dead objects plus the free
	// space of their spans, which is MemStats.HeapInuse.
	rt := []runtimemetrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	runtimemetrics.Read(rt)
	e.gauge("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds.", float64(m.started.UnixMicro())/1e6)
	e.gauge("go_goroutines", "Goroutines that currently exist.", float64(runtime.NumGoroutine()))
	e.gauge("go_memstats_heap_inuse_bytes", "Bytes of the heap in use: objects and the free space of their spans.", float64(sampleUint64(rt[0])+sampleUint64(rt[1])))
	e.counter("go_gc_cycles_total", "Completed garbage collection cycles.", float64(sampleUint64(rt[2])))

	if s.auth != nil {
		a := s.auth.stats()
		e.family("auth_verifications_total", "counter", "Access tokens checked, by outcome: ok (cached included), invalid and expired (both 401), unavailable (503: no signing keys).")
		for _, o := range []struct {
			label string
			n     uint64
		}{{"ok", a.OK}, {"invalid", a.Invalid}, {"expired", a.Expired}, {"unavailable", a.Unavailable}} {
			e.sample("auth_verifications_total", float64(o.n), "outcome", o.label)
		}
		e.counter("auth_verifications_cached_total", "Access tokens answered from the cache of verified tokens.", float64(a.CacheHits))
		e.family("auth_jwks_fetches_total", "counter", "Fetches of the JWKS, by result: ok, error, not_modified.")
		for _, o := range []struct {
			label string
			n     uint64
		}{{"ok", a.FetchOK}, {"error", a.FetchError}, {"not_modified", a.FetchNotModified}} {
			e.sample("auth_jwks_fetches_total", float64(o.n), "result", o.label)
		}
		e.gauge("auth_jwks_keys", "Usable public keys in the cached JWKS.", float64(a.Keys))
	}

	if s.limiter != nil {
		l := s.limiter.stats()
		e.family("rate_limit_requests_total", "counter",
			"Requests the shared rate limit decided, by result: allowed, or limited (answered 429). Exempt routes and requests let through unchecked are not counted.")
		e.sample("rate_limit_requests_total", float64(l.Allowed), "result", "allowed")
		e.sample("rate_limit_requests_total", float64(l.Limited), "result", "limited")
		e.counter("rate_limit_fail_open_total", "Requests let through without a rate limit check because Redis failed or did not answer within 50 ms.", float64(l.FailedOpen))
	}

	e.family("zenspa_build_info", "gauge", "Always 1; the labels name the running APP_VERSION and the Go version that built the binary.")
	e.sample("zenspa_build_info", 1, "version", s.cfg.AppVersion, "goversion", runtime.Version())
}

// sortedKeys returns the keys of m in the order cmp gives.
func sortedKeys[K comparable, V any](m map[K]V, cmp func(a, b K) int) []K {
	return slices.SortedFunc(maps.Keys(m), cmp)
}

// compareRoutes orders series by route label, then method in the order of
// methodLabels.
func compareRoutes(a, b routeKey) int {
	if c := strings.Compare(a.route, b.route); c != 0 {
		return c
	}
	return slices.Index(methodLabels[:], a.method) - slices.Index(methodLabels[:], b.method)
}

// compareRequests orders request counts like compareRoutes, then by code.
func compareRequests(a, b requestKey) int {
	if c := compareRoutes(a.routeKey, b.routeKey); c != 0 {
		return c
	}
	return a.code - b.code
}

// sampleUint64 is the value of a runtime metric, 0 if this Go lacks it.
func sampleUint64(s runtimemetrics.Sample) uint64 {
	if s.Value.Kind() != runtimemetrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}

// exposition builds a scrape in the text format. The HELP and TYPE lines of a
// family go out with its first sample, so a family without samples (no
// request yet) leaves no trace.
type exposition struct {
	buf    []byte
	header string // HELP and TYPE of the current family, until its first sample
}

// family starts a metric family.
func (e *exposition) family(name, typ, help string) {
	help = strings.ReplaceAll(strings.ReplaceAll(help, `\`, `\\`), "\n", `\n`)
	e.header = "# HELP " + name + " " + help + "\n# TYPE " + name + " " + typ + "\n"
}

// sample writes one sample; labels are name, value pairs.
func (e *exposition) sample(name string, value float64, labels ...string) {
	e.buf = append(e.buf, e.header...)
	e.header = ""
	e.buf = append(e.buf, name...)
	for i := 0; i+1 < len(labels); i += 2 {
		if i == 0 {
			e.buf = append(e.buf, '{')
		} else {
			e.buf = append(e.buf, ',')
		}
		e.buf = append(e.buf, labels[i]...)
		e.buf = append(e.buf, '=', '"')
		e.buf = appendLabelValue(e.buf, labels[i+1])
		e.buf = append(e.buf, '"')
	}
	if len(labels) > 1 {
		e.buf = append(e.buf, '}')
	}
	e.buf = append(e.buf, ' ')
	e.buf = appendValue(e.buf, value)
	e.buf = append(e.buf, '\n')
}

// gauge writes a family of one unlabeled gauge.
func (e *exposition) gauge(name, help string, value float64) {
	e.family(name, "gauge", help)
	e.sample(name, value)
}

// counter writes a family of one unlabeled counter.
func (e *exposition) counter(name, help string, value float64) {
	e.family(name, "counter", help)
	e.sample(name, value)
}

// histogram writes h as the _bucket, _sum and _count series of name. The
// count is the +Inf bucket, so the two agree even while requests are counted.
func (e *exposition) histogram(name string, h *histogram, labels ...string) {
	withLE := append(slices.Clip(labels), "le", "")
	var cumulative uint64
	for i := range h.buckets {
		cumulative += h.buckets[i]
		le := "+Inf"
		if i < len(durationBuckets) {
			le = strconv.FormatFloat(durationBuckets[i].Seconds(), 'g', -1, 64)
		}
		withLE[len(withLE)-1] = le
		e.sample(name+"_bucket", float64(cumulative), withLE...)
	}
	e.sample(name+"_sum", h.sum.Seconds(), labels...)
	e.sample(name+"_count", float64(cumulative), labels...)
}

// appendLabelValue appends v escaped as the format wants: backslash, double
// quote and line feed. Invalid UTF-8, which Prometheus refuses, becomes
// U+FFFD.
func appendLabelValue(b []byte, v string) []byte {
	v = strings.ToValidUTF8(v, "\uFFFD")
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendValue appends a sample value in the shortest form that reads back
// exactly, without an exponent (12, 0.25, 1795322811.738) unless the value is
// beyond 2^53; +Inf, -Inf and NaN come out as the format spells them.
func appendValue(b []byte, v float64) []byte {
	if math.IsInf(v, 0) || math.IsNaN(v) || math.Abs(v) >= 1<<53 {
		return strconv.AppendFloat(b, v, 'g', -1, 64)
	}
	return strconv.AppendFloat(b, v, 'f', -1, 64)
}

package main

import (
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	runtimemetrics "runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Prometheus metrics, written by hand in the text exposition format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/): requests,
// dependency checks, the two pools, a few runtime figures and the build.

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

// commonStatusCodes get a preallocated counter in every series; a rarer code
// gets one on its first use.
var commonStatusCodes = [...]int{
	200, 201, 202, 204, 301, 302, 304, 307, 308,
	400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 431,
	500, 502, 503, 504,
}

// metrics holds the figures counted as the server works; pools and runtime
// are read at scrape time instead. Counting a request takes no lock: the
// route table is an immutable map, replaced whole when routes are registered
// (only while a handler is built), and every figure is an atomic counter.
type metrics struct {
	started  time.Time // process_start_time_seconds; serve sets the time it began
	inFlight atomic.Int64

	routesMu  sync.Mutex // serializes addRoute; requests never take it
	routes    atomic.Pointer[map[string]*routeSeries]
	unmatched routeSeries

	dependencies map[string]*dependencySeries // fixed by newMetrics
}

// routeSeries is one route's figures, one slot per method label.
type routeSeries struct {
	methods [len(methodLabels)]requestSeries
}

// requestSeries counts the requests of one route and method by status code
// and by duration.
type requestSeries struct {
	codes    statusCounts
	duration histogram
}

// dependencySeries is the check history of one dependency.
type dependencySeries struct {
	state    atomic.Int32 // dependencyUnchecked, dependencyDown or dependencyUp
	duration histogram
}

// The states of a dependency. dependency_up is absent until the first check:
// not checked yet is not down.
const (
	dependencyUnchecked int32 = iota
	dependencyDown
	dependencyUp
)

// newMetrics returns empty metrics that will follow the checks of the named
// dependencies. Its creation stands for the process start until serve, which
// knows better, replaces it.
func newMetrics(dependencies ...string) *metrics {
	m := &metrics{started: time.Now(), dependencies: make(map[string]*dependencySeries, len(dependencies))}
	for _, d := range dependencies {
		m.dependencies[d] = &dependencySeries{}
	}
	m.routes.Store(&map[string]*routeSeries{})
	return m
}

// addRoute gives a route pattern series of its own; routes calls it for each
// pattern it registers, so the route label can only take the values of the
// route table. Adding a pattern again changes nothing: handler may be built
// any number of times. It does nothing when metrics are off (m is nil).
func (m *metrics) addRoute(pattern string) {
	if m == nil {
		return
	}
	m.routesMu.Lock()
	defer m.routesMu.Unlock()
	old := *m.routes.Load()
	if _, ok := old[pattern]; ok {
		return
	}
	table := make(map[string]*routeSeries, len(old)+1)
	maps.Copy(table, old)
	table[pattern] = &routeSeries{}
	m.routes.Store(&table)
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
		m.inFlight.Add(1)
		rec := recorder(w)
		returned := false
		defer func() {
			m.inFlight.Add(-1)
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

// observeRequest counts one finished request.
func (m *metrics) observeRequest(method, pattern string, status int, d time.Duration) {
	series := &m.route(pattern).methods[methodIndex(method)]
	series.codes.add(status)
	series.duration.observe(d)
}

// route returns the series of a registered pattern, and the unmatched series
// for anything else: the catch-all "/", no pattern at all, or the path that
// ServeMux reports for a trailing-slash redirect.
func (m *metrics) route(pattern string) *routeSeries {
	if rs, ok := (*m.routes.Load())[pattern]; ok {
		return rs
	}
	return &m.unmatched
}

// methodIndex is the index of method in methodLabels, "other" for a method
// not listed there.
func methodIndex(method string) int {
	last := len(methodLabels) - 1
	for i, l := range methodLabels[:last] {
		if method == l {
			return i
		}
	}
	return last
}

// observeCheck records one finished dependency check; it is the checkers'
// report hook.
func (m *metrics) observeCheck(dependency string, res checkResult) {
	d, ok := m.dependencies[dependency]
	if !ok {
		return
	}
	d.duration.observe(res.elapsed)
	if res.ok() {
		d.state.Store(dependencyUp)
	} else {
		d.state.Store(dependencyDown)
	}
}

// statusCounts counts responses by status code: the common codes in a fixed
// array, any other in a map entry made on its first use.
type statusCounts struct {
	common [len(commonStatusCodes)]atomic.Uint64
	rare   sync.Map // int → *atomic.Uint64
}

// add counts one response with status code.
func (c *statusCounts) add(code int) {
	for i, common := range commonStatusCodes {
		if code == common {
			c.common[i].Add(1)
			return
		}
	}
	v, ok := c.rare.Load(code)
	if !ok {
		v, _ = c.rare.LoadOrStore(code, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

// codeCount is how many responses had one status code.
type codeCount struct {
	code int
	n    uint64
}

// counted returns the codes counted at least once, in ascending order.
func (c *statusCounts) counted() []codeCount {
	var out []codeCount
	for i := range c.common {
		if n := c.common[i].Load(); n > 0 {
			out = append(out, codeCount{commonStatusCodes[i], n})
		}
	}
	c.rare.Range(func(k, v any) bool {
		out = append(out, codeCount{k.(int), v.(*atomic.Uint64).Load()})
		return true
	})
	slices.SortFunc(out, func(a, b codeCount) int { return a.code - b.code })
	return out
}

// histogram counts durations into durationBuckets. Each bucket holds only its
// own range, the last one everything above the largest bound; the cumulative
// counts of the format are summed at scrape time, so an observation is two
// atomic adds.
type histogram struct {
	buckets [len(durationBuckets) + 1]atomic.Uint64
	sum     atomic.Int64 // nanoseconds
}

// observe counts one duration.
func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(durationBuckets) && d > durationBuckets[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sum.Add(int64(d))
}

// count is the number of observations.
func (h *histogram) count() uint64 {
	var n uint64
	for i := range h.buckets {
		n += h.buckets[i].Load()
	}
	return n
}

// handleMetrics answers a scrape. The whole text is built before anything is
// sent, so that a failure cannot leave a truncated scrape that parses.
func (s *server) handleMetrics() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e exposition
		s.writeMetrics(&e)
		w.Header().Set("Content-Type", metricsContentType)
		w.Header().Set("Content-Length", strconv.Itoa(len(e.buf)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(e.buf)
	})
}

// writeMetrics writes every metric family in a fixed order.
func (s *server) writeMetrics(e *exposition) {
	m := s.metrics

	e.family("http_requests_in_flight", "gauge", "Requests being served, scrapes of /metrics excluded.")
	e.sample("http_requests_in_flight", float64(m.inFlight.Load()))
	routes := m.sortedRoutes()
	e.family("http_requests_total", "counter",
		"Requests answered, by method, matched route pattern (unmatched when none matched) and status code.")
	for _, rt := range routes {
		for i := range rt.series.methods {
			for _, c := range rt.series.methods[i].codes.counted() {
				e.sample("http_requests_total", float64(c.n),
					"method", methodLabels[i], "route", rt.label, "code", strconv.Itoa(c.code))
			}
		}
	}
	e.family("http_request_duration_seconds", "histogram",
		"Time to answer a request, by method and matched route pattern (unmatched when none matched).")
	for _, rt := range routes {
		for i := range rt.series.methods {
			if h := &rt.series.methods[i].duration; h.count() > 0 {
				e.histogram("http_request_duration_seconds", h, "method", methodLabels[i], "route", rt.label)
			}
		}
	}

	dependencies := slices.Sorted(maps.Keys(m.dependencies))
	e.family("dependency_up", "gauge", "Whether the last check of a dependency succeeded (1) or not (0); absent before its first check.")
	for _, name := range dependencies {
		switch m.dependencies[name].state.Load() {
		case dependencyUp:
			e.sample("dependency_up", 1, "dependency", name)
		case dependencyDown:
			e.sample("dependency_up", 0, "dependency", name)
		}
	}
	e.family("dependency_check_duration_seconds", "histogram", "Duration of the dependency checks behind the health endpoints.")
	for _, name := range dependencies {
		if h := &m.dependencies[name].duration; h.count() > 0 {
			e.histogram("dependency_check_duration_seconds", h, "dependency", name)
		}
	}

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

	e.family("zenspa_build_info", "gauge", "Always 1; the labels name the running APP_VERSION and the Go version that built the binary.")
	e.sample("zenspa_build_info", 1, "version", s.cfg.AppVersion, "goversion", runtime.Version())
}

// labeledRoute is a route series and its route label.
type labeledRoute struct {
	label  string
	series *routeSeries
}

// sortedRoutes returns every route series, unmatched included, by label.
func (m *metrics) sortedRoutes() []labeledRoute {
	table := *m.routes.Load()
	out := make([]labeledRoute, 0, len(table)+1)
	for pattern, rs := range table {
		out = append(out, labeledRoute{pattern, rs})
	}
	out = append(out, labeledRoute{unmatchedRoute, &m.unmatched})
	slices.SortFunc(out, func(a, b labeledRoute) int { return strings.Compare(a.label, b.label) })
	return out
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
		cumulative += h.buckets[i].Load()
		le := "+Inf"
		if i < len(durationBuckets) {
			le = strconv.FormatFloat(durationBuckets[i].Seconds(), 'g', -1, 64)
		}
		withLE[len(withLE)-1] = le
		e.sample(name+"_bucket", float64(cumulative), withLE...)
	}
	e.sample(name+"_sum", time.Duration(h.sum.Load()).Seconds(), labels...)
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

// metricsServer is the private listener of METRICS_ADDR: /metrics and Go's
// profiler, which the main listener never serves. Its chain is the main
// one's without CORS, the body limit and the request metrics: no browser
// calls it, and it counts none of its own requests.
func (s *server) metricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle(metricsPattern, s.handleMetrics())
	// net/http/pprof's exported handlers, on this mux only: the package also
	// registers them on http.DefaultServeMux, which zenspa never serves.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index) // and every named profile below it
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.Handle("/", s.handleUnmatched(mux))

	return &http.Server{
		Handler:           s.recoverPanics(requestID(securityHeaders(s.accessLog(mux)))),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		// pprof refuses a profile or trace longer than this; two minutes
		// leaves room for the usual ?seconds=30 or 60.
		WriteTimeout:   2 * time.Minute,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// listenAddress reads a host:port to listen on, such as METRICS_ADDR; empty
// stays empty. An empty host means every interface.
func (p *parser) listenAddress(key string) string {
	v := p.get(key)
	if v == "" {
		return ""
	}
	_, port, err := net.SplitHostPort(v)
	n, perr := strconv.Atoi(port)
	if err != nil || perr != nil || n < 1 || n > 65535 {
		p.fail(key, "must be host:port with a port from 1 to 65535, such as 127.0.0.1:9100, got %q", v)
		return ""
	}
	return v
}

package main

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync/atomic"
	"time"
)

// server holds what handlers need. There is no global state: tests build as
// many servers as they like.
type server struct {
	cfg          config
	log          *slog.Logger
	db           *database
	cache        *cache
	dbCheck      *checker
	redisCheck   *checker
	metrics      *metrics     // nil when METRICS_ENABLED is false
	cursors      cursors      // signs the page cursors of every list
	auth         *verifier    // checks access tokens; nil when SUPABASE_URL is not set
	limiter      *rateLimiter // the shared rate limit; nil when RATE_LIMIT is 0
	shuttingDown atomic.Bool
}

// newServer wires the dependency checks to the pools and, unless
// METRICS_ENABLED is false, to the metrics.
func newServer(cfg config, log *slog.Logger, db *database, cache *cache) *server {
	s := &server{
		cfg:        cfg,
		log:        log,
		db:         db,
		cache:      cache,
		dbCheck:    newChecker("postgresql", cfg.HealthCheckTimeout, cfg.HealthCacheTTL, log, db.ping),
		redisCheck: newChecker("redis", cfg.HealthCheckTimeout, cfg.HealthCacheTTL, log, cache.ping),
		cursors:    newCursors(cfg),
		limiter:    newRateLimiter(cfg, cache, log),
	}
	if cfg.SupabaseURL != "" {
		s.auth = newVerifier(authSettings{
			Issuer: cfg.AuthIssuer, Audience: cfg.AuthAudience, Secret: []byte(cfg.SupabaseJWTSecret),
			JWKSURL: cfg.AuthJWKSURL, JWKSTTL: cfg.AuthJWKSTTL, Leeway: cfg.AuthLeeway,
		}, log, nil, time.Now)
	}
	if cfg.MetricsEnabled {
		s.metrics = newMetrics(s.dbCheck.name, s.redisCheck.name)
		s.dbCheck.report = s.metrics.observeCheck
		s.redisCheck.report = s.metrics.observeCheck
	}
	return s
}

// route is one Go 1.22 pattern, its handler and the listener serving it.
type route struct {
	pattern string
	handler http.Handler
	private bool // served only on METRICS_ADDR's listener
}

// routeTable lists every route of both listeners. GET patterns answer HEAD
// too. Domain routes mount under /api/v1. routes and privateRoutes register
// exactly this table, and the OpenAPI drift test reads it, so no route goes
// undocumented.
func (s *server) routeTable() []route {
	health, ready := s.handleHealth(), s.handleReady()
	healthDB, healthRedis := s.handleHealthDB(), s.handleHealthRedis()

	table := []route{
		{pattern: "GET /{$}", handler: s.handleIndex()},
		{pattern: "GET /health", handler: health},
		{pattern: "GET /health/live", handler: health},
		{pattern: "GET /health/ready", handler: ready},
		{pattern: "GET /health/db", handler: healthDB},
		{pattern: "GET /health/redis", handler: healthRedis},
		{pattern: "GET /api/v1/health", handler: health},
		{pattern: "GET /api/v1/health/live", handler: health},
		{pattern: "GET /api/v1/health/ready", handler: ready},
		{pattern: "GET /api/v1/health/db", handler: healthDB},
		{pattern: "GET /api/v1/health/redis", handler: healthRedis},

		// Who is calling: auth.go.
		{pattern: "GET /api/v1/me", handler: s.api(s.require(signedIn, s.handleMe))},

		// The treatment menu, which anyone may read and managers change: treatments.go.
		{pattern: "GET /api/v1/treatments", handler: s.api(s.handleListTreatments)},
		{pattern: "POST /api/v1/treatments", handler: s.api(s.require(managers, s.handleCreateTreatment))},
		{pattern: "GET /api/v1/treatments/{id}", handler: s.api(s.handleGetTreatment)},
		{pattern: "PATCH /api/v1/treatments/{id}", handler: s.api(s.require(managers, s.handleUpdateTreatment))},
		{pattern: "DELETE /api/v1/treatments/{id}", handler: s.api(s.require(managers, s.handleDeleteTreatment))},
	}
	if s.cfg.DocsEnabled { // otherwise they answer 404 like any unknown path
		table = append(table,
			route{pattern: "GET /openapi.json", handler: s.handleOpenAPI()},
			route{pattern: "GET /docs", handler: s.handleDocsPage(swaggerUIPage)},
			route{pattern: "GET /docs/init.js", handler: handleScript(swaggerInitScript)},
			route{pattern: "GET /redoc", handler: s.handleDocsPage(redocPage)},
			route{pattern: "GET /redoc/init.js", handler: handleScript(redocInitScript)},
		)
	}
	if s.metrics == nil {
		return table
	}
	if s.cfg.MetricsAddr == "" {
		return append(table, route{pattern: metricsPattern, handler: s.handleMetrics()})
	}
	// With METRICS_ADDR, /metrics and Go's profiler are on the private
	// listener only. net/http/pprof also registers itself on
	// http.DefaultServeMux, which zenspa never serves.
	return append(table,
		route{pattern: metricsPattern, handler: s.handleMetrics(), private: true},
		route{pattern: "GET /debug/pprof/", handler: http.HandlerFunc(pprof.Index), private: true}, // and every named profile
		route{pattern: "GET /debug/pprof/cmdline", handler: http.HandlerFunc(pprof.Cmdline), private: true},
		route{pattern: "GET /debug/pprof/profile", handler: http.HandlerFunc(pprof.Profile), private: true},
		route{pattern: "GET /debug/pprof/symbol", handler: http.HandlerFunc(pprof.Symbol), private: true},
		route{pattern: "POST /debug/pprof/symbol", handler: http.HandlerFunc(pprof.Symbol), private: true},
		route{pattern: "GET /debug/pprof/trace", handler: http.HandlerFunc(pprof.Trace), private: true},
	)
}

// apiHandler is a domain route: it writes its answer, or returns the error
// that writeError answers with instead.
type apiHandler func(w http.ResponseWriter, r *http.Request) error

// api serves an apiHandler: REQUEST_TIMEOUT bounds its database and cache
// work, and an error it returns becomes the error envelope.
func (s *server) api(h apiHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}

// handler is the main listener's whole stack: the middleware around the
// public routes.
func (s *server) handler() http.Handler { return s.chain(s.routes()) }

// chain wraps h in the main listener's middleware, outermost first.
// Recover is outermost so that a panic anywhere still gets an envelope; the
// request ID comes next so that everything after it can log and answer with
// it. Metrics read the route pattern ServeMux stores in the request, so no
// middleware after them may replace the request. The rate limit comes after
// CORS, so that a 429 is logged, counted, readable by the page that caused
// it and never given to a preflight, and before the body limit, so that a
// client over its budget gets its 429 without its body being read.
func (s *server) chain(h http.Handler) http.Handler {
	return wrap(h,
		s.recoverPanics,
		requestID,
		s.recordMetrics,
		securityHeaders,
		s.accessLog,
		s.cors,
		s.rateLimit,
		s.limitBody,
	)
}

// privateHandler is the stack of METRICS_ADDR's listener: the main chain
// without metrics, CORS and the body limit, since no browser calls it and it
// counts none of its own requests.
func (s *server) privateHandler() http.Handler {
	return wrap(s.mux(true), s.recoverPanics, requestID, securityHeaders, s.accessLog)
}

// wrap applies middleware to h so that the first one listed is outermost.
func wrap(h http.Handler, middleware ...func(http.Handler) http.Handler) http.Handler {
	for i := len(middleware) - 1; i >= 0; i-- {
		h = middleware[i](h)
	}
	return h
}

// httpServer is the http.Server of either listener: the limits every client
// meets, and writeTimeout for the longest answer the listener gives.
func (s *server) httpServer(h http.Handler, writeTimeout time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// mainWriteTimeout is long enough for a request that waits DB_POOL_TIMEOUT
// and then queries. privateWriteTimeout lets pprof take the usual 30 or 60 s
// profile; it refuses one longer than the write timeout.
func (s *server) mainWriteTimeout() time.Duration {
	return max(time.Minute, s.cfg.DBPoolTimeout+30*time.Second)
}

const privateWriteTimeout = 2 * time.Minute

// routes serves the public routes of routeTable; what matches none of them
// gets handleUnmatched.
func (s *server) routes() http.Handler {
	mux := s.mux(false)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A request-target that is not a path ("GET *", "CONNECT host:443",
		// an opaque URI) names nothing here. ServeMux would answer it itself,
		// outside the envelope: a bare 400, a text/plain 405 or a redirect
		// with an HTML body.
		if !strings.HasPrefix(r.URL.Path, "/") {
			s.writeError(w, r, newError(codeNotFound, "The requested resource was not found"))
			return
		}
		// ServeMux answers an unclean path ("//health") with a redirect, and
		// http.Redirect leaves out its HTML body when a Content-Type is set.
		if p := r.URL.Path; strings.Contains(p, "//") || strings.Contains(p, "/.") {
			w.Header().Set("Content-Type", "application/json")
		}
		mux.ServeHTTP(w, r)
	})
}

// mux registers the routes of one listener, and handleUnmatched for the rest.
func (s *server) mux(private bool) *http.ServeMux {
	mux := http.NewServeMux()
	for _, rt := range s.routeTable() {
		if rt.private == private {
			mux.Handle(rt.pattern, rt.handler)
			s.metrics.addRoute(rt.pattern)
		}
	}
	mux.Handle("/", s.handleUnmatched(mux))
	return mux
}

// indexBody is the answer of GET /.
type indexBody struct {
	Service string `json:"service"`
	Version string `json:"version"`
	Status  string `json:"status"`
	Docs    string `json:"docs"`
}

// handleIndex names the service.
func (s *server) handleIndex() http.Handler {
	body := indexBody{Service: s.cfg.AppName, Version: s.cfg.AppVersion, Status: "running", Docs: "/docs"}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, body)
	})
}

// handleUnmatched answers what no route matched, in the error envelope: 405
// with an Allow header when the path exists for other methods, 404 otherwise.
func (s *server) handleUnmatched(mux *http.ServeMux) http.Handler {
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range methods {
			probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
			if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" {
				allow = append(allow, m)
				if m == http.MethodGet {
					allow = append(allow, http.MethodHead)
				}
			}
		}
		if len(allow) == 0 {
			s.writeError(w, r, newError(codeNotFound, "The requested resource was not found"))
			return
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		s.writeError(w, r, newError(codeMethodNotAllowed, "Method "+r.Method+" is not allowed here"))
	})
}

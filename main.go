// Command zenspa is the ZenSpa backend: a JSON HTTP API with health checks
// for itself, PostgreSQL and Redis.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// The version, commit and build date built into the binary. `make build`
// stamps them with -ldflags "-X main.buildVersion=…"; a plain go build keeps
// the version and falls back to the module's build info for the rest.
var (
	buildVersion = "0.1.0"
	buildCommit  = ""
	buildDate    = ""
)

// usage is printed for a bad command line.
const usage = `usage: zenspa [command]

commands:
  serve        load the configuration, connect and serve HTTP (the default)
  healthcheck  [--url URL] [--timeout 3s] exit 0 when the local instance is ready
  version      print the version, commit and build date
  migrate      change the database schema; subcommands:
    up             apply every pending migration, in order
    down [N]       roll back the last N applied migrations (default 1)
    status         list migrations: applied when, or pending; ! marks trouble
    force VERSION  settle a dirty database after repairing it by hand
    new NAME       create the next-numbered up/down pair in schema/ (source checkout)
    up and down take --allow-drift to go past applied migrations whose files
    changed or are gone.

Configuration comes from the environment and .env (see README.md).
`

func main() {
	err := run(context.Background(), os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	if err != nil {
		var status exitStatus
		if !errors.As(err, &status) {
			fmt.Fprintf(os.Stderr, "zenspa: %v\n", err)
		}
		os.Exit(exitCode(err))
	}
}

// exitStatus ends the program with a status and no further message: the
// command has already said what happened.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// usageError is a bad command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// exitCode is 2 for usage and configuration errors, 1 for everything else.
func exitCode(err error) int {
	var ue *usageError
	var ce *configError
	var status exitStatus
	switch {
	case errors.As(err, &status):
		return int(status)
	case errors.As(err, &ue) || errors.As(err, &ce):
		return 2
	}
	return 1
}

// run is the whole program. It reads nothing global: the arguments, the
// environment and the output streams are passed in, so tests can run it.
func run(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		if len(args) > 0 {
			fmt.Fprint(stderr, usage)
			return &usageError{fmt.Sprintf("serve takes no arguments, got %q", args[0])}
		}
		return serve(ctx, lookupEnv, stdout)
	case "version":
		version, commit, date := versionInfo()
		fmt.Fprintf(stdout, "zenspa %s (commit %s, built %s, %s)\n", version, commit, date, runtime.Version())
		return nil
	case "healthcheck":
		return healthcheck(ctx, args, lookupEnv, stdout, stderr)
	case "migrate":
		return runMigrate(ctx, args, lookupEnv, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return &usageError{fmt.Sprintf("unknown command %q", cmd)}
}

// serve loads the configuration, connects, and serves until ctx ends or
// SIGINT/SIGTERM arrives, then shuts down in order: readiness off, drain
// delay, listener closed and in-flight requests finished, pools closed.
func serve(ctx context.Context, lookupEnv func(string) (string, bool), stdout io.Writer) error {
	started := time.Now()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg, err := loadConfig(lookupEnv)
	if err != nil {
		return err
	}
	logOut := stdout
	if cfg.LogFile != "" {
		f, err := openLogFile(cfg.LogFile)
		if err != nil {
			return &configError{problems: []string{err.Error()}}
		}
		defer f.Close()
		logOut = f
	}
	log := newLogger(logOut, cfg.Environment, cfg.LogLevel)
	log.Debug("configuration loaded", "config", cfg)

	// SIGHUP reopens LOG_FILE after logrotate moved it; without LOG_FILE it
	// is ignored rather than ending the process, its default.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			if f, ok := logOut.(*logFile); ok {
				if err := f.reopen(); err != nil {
					log.Error("cannot reopen LOG_FILE, still writing to the old file", "error", err)
					continue
				}
				log.Info("log file reopened", "path", cfg.LogFile)
			}
		}
	}()

	db, err := openDatabase(cfg, log)
	if err != nil {
		return err
	}
	defer db.close()
	if err := db.connectWithRetry(ctx, cfg.DBConnectAttempts, cfg.DBConnectBackoff, cfg.DBConnectTimeout); err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before startup finished")
			return nil
		}
		return err
	}
	if cfg.MigrateOnStart {
		if err := migrateOnStart(ctx, cfg, log); err != nil {
			if ctx.Err() != nil {
				log.Info("stopped before startup finished")
				return nil
			}
			return err
		}
	}

	cache := newCache(cfg, log)
	defer cache.close()
	pctx, cancel := context.WithTimeout(ctx, cfg.HealthCheckTimeout)
	if err := cache.ping(pctx); err != nil {
		log.Warn("redis not reachable, serving without cache until it is", "redis", cfg.redisAddr(), "error", err)
	}
	cancel()

	s := newServer(cfg, log, db, cache)
	if s.metrics != nil {
		s.metrics.started = started // before the database retries, not after
	}
	ln, err := net.Listen("tcp", cfg.listenAddr())
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.listenAddr(), err)
	}
	var privateLn net.Listener // METRICS_ADDR: /metrics and pprof on a listener of their own
	if s.metrics != nil && cfg.MetricsAddr != "" {
		if privateLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			ln.Close()
			return fmt.Errorf("listen on METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
		}
	}
	srv := &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		// Long enough for a request that waits DB_POOL_TIMEOUT and then queries.
		WriteTimeout:   max(time.Minute, cfg.DBPoolTimeout+30*time.Second),
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(ln) }()
	var private *http.Server
	if privateLn != nil {
		private = s.metricsServer()
		go func() { serveErr <- private.Serve(privateLn) }()
	}
	version, commit, _ := versionInfo()
	attrs := []any{"name", cfg.AppName, "version", cfg.AppVersion, "environment", cfg.Environment,
		"addr", ln.Addr().String(), "database", db.target.String(),
		"startup_ms", time.Since(started).Milliseconds()}
	if cfg.AppVersion != version {
		attrs = append(attrs, "build_version", version, "build_commit", commit)
	}
	if privateLn != nil {
		attrs = append(attrs, "metrics_addr", privateLn.Addr().String())
	}
	log.Info("zenspa started", attrs...)
	if err := notifySystemd(lookupEnv, "READY=1"); err != nil {
		log.Warn("cannot notify systemd", "error", err)
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	stop() // a second signal ends the process at once
	if err := notifySystemd(lookupEnv, "STOPPING=1"); err != nil {
		log.Warn("cannot notify systemd", "error", err)
	}

	log.Info("shutting down", "drain_delay", cfg.ShutdownDrainDelay.String(), "timeout", cfg.ShutdownTimeout.String())
	s.shuttingDown.Store(true)
	time.Sleep(cfg.ShutdownDrainDelay)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	// The private listener closes last, so scrapes go on while requests drain.
	shutdownErr := srv.Shutdown(sctx)
	if private != nil && private.Shutdown(sctx) != nil {
		_ = private.Close() // a profile still running at the deadline is cut
	}
	if err := shutdownErr; err != nil {
		_ = srv.Close()
		return fmt.Errorf("requests still running after SHUTDOWN_TIMEOUT (%s) were cut: %w", cfg.ShutdownTimeout, err)
	}
	log.Info("stopped")
	return nil
}

// versionInfo returns the stamped version, commit and build date, filling
// what a plain go build left empty from the module's build info.
func versionInfo() (version, commit, date string) {
	version, commit, date = buildVersion, buildCommit, buildDate
	if info, ok := debug.ReadBuildInfo(); ok {
		modified := false
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				if commit == "" {
					commit = s.Value[:min(12, len(s.Value))]
				}
			case "vcs.time":
				if date == "" {
					date = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && buildCommit == "" && commit != "" {
			commit += "-dirty"
		}
	}
	if commit == "" {
		commit = "unknown"
	}
	if date == "" {
		date = "unknown"
	}
	return version, commit, date
}

// notifySystemd sends state ("READY=1", "STOPPING=1") to systemd over the
// datagram socket in NOTIFY_SOCKET (the sd_notify protocol). Without the
// variable it does nothing: zenspa is not running under Type=notify.
func notifySystemd(lookupEnv func(string) (string, bool), state string) error {
	socket, _ := lookupEnv("NOTIFY_SOCKET")
	switch {
	case socket == "":
		return nil
	case socket[0] == '@': // an abstract socket
		socket = "\x00" + socket[1:]
	case socket[0] != '/':
		return fmt.Errorf("NOTIFY_SOCKET %q is neither a path nor an abstract socket", socket)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

// server holds what handlers need. There is no global state: tests build as
// many servers as they like.
type server struct {
	cfg          config
	log          *slog.Logger
	db           *database
	cache        *cache
	dbCheck      *checker
	redisCheck   *checker
	metrics      *metrics // nil when METRICS_ENABLED is false
	clock        clock    // the response timestamps
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
	}
	if cfg.MetricsEnabled {
		s.metrics = newMetrics(s.dbCheck.name, s.redisCheck.name)
		s.dbCheck.report = s.metrics.observeCheck
		s.redisCheck.report = s.metrics.observeCheck
	}
	return s
}

// route is one Go 1.22 pattern and its handler.
type route struct {
	pattern string
	handler http.Handler
}

// routeTable lists every route. GET patterns answer HEAD too. Later domain
// routers mount under /api/v1. routes registers exactly this table and the
// OpenAPI drift test reads it, so no route goes undocumented.
func (s *server) routeTable() []route {
	health, live, ready := s.handleHealth(), s.handleHealth(), s.handleReady()
	healthDB, healthRedis := s.handleHealthDB(), s.handleHealthRedis()

	table := []route{
		{"GET /{$}", s.handleIndex()},
		{"GET /health", health},
		{"GET /health/live", live},
		{"GET /health/ready", ready},
		{"GET /health/db", healthDB},
		{"GET /health/redis", healthRedis},
		{"GET /api/v1/health", health},
		{"GET /api/v1/health/live", live},
		{"GET /api/v1/health/ready", ready},
		{"GET /api/v1/health/db", healthDB},
		{"GET /api/v1/health/redis", healthRedis},
	}
	if s.cfg.DocsEnabled { // otherwise they answer 404 like any unknown path
		table = append(table,
			route{"GET /openapi.json", s.handleOpenAPI()},
			route{"GET /docs", s.handleSwaggerUI()},
			route{"GET /docs/init.js", handleScript(swaggerInitScript)},
			route{"GET /redoc", s.handleRedoc()},
			route{"GET /redoc/init.js", handleScript(redocInitScript)},
		)
	}
	if s.metrics != nil && s.cfg.MetricsAddr == "" { // with METRICS_ADDR, only the private listener has it
		table = append(table, route{metricsPattern, s.handleMetrics()})
	}
	return table
}

// routes serves routeTable; what matches none of it gets handleUnmatched.
func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.routeTable() {
		mux.Handle(rt.pattern, rt.handler)
		s.metrics.addRoute(rt.pattern)
	}
	mux.Handle("/", s.handleUnmatched(mux))

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

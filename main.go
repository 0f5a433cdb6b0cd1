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
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// buildVersion is the version built into the binary; a release build stamps
// another with -ldflags "-X main.buildVersion=…".
var buildVersion = "0.1.0"

// usage is printed for a bad command line.
const usage = `usage: zenspa [command]

commands:
  serve     load the configuration, connect and serve HTTP (the default)
  version   print the version and exit

Configuration comes from the environment and .env (see README.md).
`

func main() {
	err := run(context.Background(), os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "zenspa: %v\n", err)
		os.Exit(exitCode(err))
	}
}

// usageError is a bad command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// exitCode is 2 for usage and configuration errors, 1 for everything else.
func exitCode(err error) int {
	var ue *usageError
	var ce *configError
	if errors.As(err, &ue) || errors.As(err, &ce) {
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
		fmt.Fprintln(stdout, buildVersion)
		return nil
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
	log := newLogger(stdout, cfg.Environment, cfg.LogLevel)
	log.Debug("configuration loaded", "config", cfg)

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

	cache := newCache(cfg, log)
	defer cache.close()
	pctx, cancel := context.WithTimeout(ctx, cfg.HealthCheckTimeout)
	if err := cache.ping(pctx); err != nil {
		log.Warn("redis not reachable, serving without cache until it is", "redis", cfg.redisAddr(), "error", err)
	}
	cancel()

	s := newServer(cfg, log, db, cache)
	ln, err := net.Listen("tcp", cfg.listenAddr())
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.listenAddr(), err)
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
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("zenspa started",
		"name", cfg.AppName, "version", cfg.AppVersion, "environment", cfg.Environment,
		"addr", ln.Addr().String(), "database", db.target.String(),
		"startup_ms", time.Since(started).Milliseconds())

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	stop() // a second signal ends the process at once

	log.Info("shutting down", "drain_delay", cfg.ShutdownDrainDelay.String(), "timeout", cfg.ShutdownTimeout.String())
	s.shuttingDown.Store(true)
	time.Sleep(cfg.ShutdownDrainDelay)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("requests still running after SHUTDOWN_TIMEOUT (%s) were cut: %w", cfg.ShutdownTimeout, err)
	}
	log.Info("stopped")
	return nil
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
	shuttingDown atomic.Bool
}

// newServer wires the dependency checks to the pools.
func newServer(cfg config, log *slog.Logger, db *database, cache *cache) *server {
	return &server{
		cfg:        cfg,
		log:        log,
		db:         db,
		cache:      cache,
		dbCheck:    newChecker("postgresql", cfg.HealthCheckTimeout, cfg.HealthCacheTTL, log, db.ping),
		redisCheck: newChecker("redis", cfg.HealthCheckTimeout, cfg.HealthCacheTTL, log, cache.ping),
	}
}

// routes lists every route. GET patterns answer HEAD too. Later domain
// routers mount under /api/v1.
func (s *server) routes() http.Handler {
	health, live, ready := s.handleHealth(), s.handleHealth(), s.handleReady()
	healthDB, healthRedis := s.handleHealthDB(), s.handleHealthRedis()

	mux := http.NewServeMux()
	mux.Handle("GET /{$}", s.handleIndex())
	mux.Handle("GET /health", health)
	mux.Handle("GET /health/live", live)
	mux.Handle("GET /health/ready", ready)
	mux.Handle("GET /health/db", healthDB)
	mux.Handle("GET /health/redis", healthRedis)
	mux.Handle("GET /api/v1/health", health)
	mux.Handle("GET /api/v1/health/live", live)
	mux.Handle("GET /api/v1/health/ready", ready)
	mux.Handle("GET /api/v1/health/db", healthDB)
	mux.Handle("GET /api/v1/health/redis", healthRedis)
	mux.Handle("/", s.handleUnmatched(mux))

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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

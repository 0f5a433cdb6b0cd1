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
// delay, listeners closed and in-flight requests finished, pools closed.
func serve(ctx context.Context, lookupEnv func(string) (string, bool), stdout io.Writer) error {
	started := time.Now()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg, err := loadConfig(lookupEnv)
	if err != nil {
		return err
	}
	log, closeLog, err := openLog(cfg, stdout)
	if err != nil {
		return err
	}
	defer closeLog()
	log.Debug("configuration loaded", "config", cfg)

	s, err := connect(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before startup finished")
			return nil
		}
		return err
	}
	defer s.close()
	if s.metrics != nil {
		s.metrics.started = started // before the database retries, not after
	}

	l, err := s.listen()
	if err != nil {
		return err
	}
	serveErr := l.start()
	s.logStarted(l, started)
	if err := notifySystemd(cfg.NotifySocket, "READY=1"); err != nil {
		log.Warn("cannot notify systemd", "error", err)
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	stop() // a second signal ends the process at once
	if err := notifySystemd(cfg.NotifySocket, "STOPPING=1"); err != nil {
		log.Warn("cannot notify systemd", "error", err)
	}
	return s.shutdown(l)
}

// connect opens the pools, waits for PostgreSQL as DB_CONNECT_ATTEMPTS
// allows, applies migrations when MIGRATE_ON_START asks, and builds the
// server. Redis is optional: it is only checked, with a warning when down.
func connect(ctx context.Context, cfg config, log *slog.Logger) (*server, error) {
	db, err := openDatabase(cfg, log)
	if err != nil {
		return nil, err
	}
	if err := db.connectWithRetry(ctx, cfg.DBConnectAttempts, cfg.DBConnectBackoff, cfg.DBConnectTimeout); err != nil {
		db.close()
		return nil, err
	}
	if cfg.MigrateOnStart {
		if err := migrateOnStart(ctx, cfg, log); err != nil {
			db.close()
			return nil, err
		}
	}
	cache := newCache(cfg, log)
	pctx, cancel := context.WithTimeout(ctx, cfg.HealthCheckTimeout)
	defer cancel()
	if err := cache.ping(pctx); err != nil {
		log.Warn("redis not reachable, serving without cache until it is", "redis", cfg.redisAddr(), "error", err)
	}
	s := newServer(cfg, log, db, cache)
	if s.auth != nil {
		s.auth.start(ctx) // a failure is logged: tokens then wait for a later fetch
	}
	return s, nil
}

// close closes the pools.
func (s *server) close() {
	s.cache.close()
	s.db.close()
}

// listeners are the main listener and, with METRICS_ADDR, the private one,
// with their HTTP servers.
type listeners struct {
	main, private    net.Listener // private is nil without METRICS_ADDR
	mainSrv, privSrv *http.Server
}

// listen opens the listeners; nothing is served yet.
func (s *server) listen() (*listeners, error) {
	ln, err := net.Listen("tcp", s.cfg.listenAddr())
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", s.cfg.listenAddr(), err)
	}
	l := &listeners{main: ln, mainSrv: s.httpServer(s.handler(), s.mainWriteTimeout())}
	if s.metrics != nil && s.cfg.MetricsAddr != "" {
		if l.private, err = net.Listen("tcp", s.cfg.MetricsAddr); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen on METRICS_ADDR %s: %w", s.cfg.MetricsAddr, err)
		}
		l.privSrv = s.httpServer(s.privateHandler(), privateWriteTimeout)
	}
	return l, nil
}

// start serves both listeners; the channel receives the error of one that
// stopped by itself.
func (l *listeners) start() <-chan error {
	serveErr := make(chan error, 2)
	go func() { serveErr <- l.mainSrv.Serve(l.main) }()
	if l.private != nil {
		go func() { serveErr <- l.privSrv.Serve(l.private) }()
	}
	return serveErr
}

// logStarted logs the one line that says the service is up, and where.
func (s *server) logStarted(l *listeners, started time.Time) {
	version, commit, _ := versionInfo()
	attrs := []any{"name", s.cfg.AppName, "version", s.cfg.AppVersion, "environment", s.cfg.Environment,
		"addr", l.main.Addr().String(), "database", s.db.target.String(),
		"startup_ms", time.Since(started).Milliseconds()}
	if s.cfg.AppVersion != version {
		attrs = append(attrs, "build_version", version, "build_commit", commit)
	}
	if l.private != nil {
		attrs = append(attrs, "metrics_addr", l.private.Addr().String())
	}
	s.log.Info("zenspa started", attrs...)
}

// shutdown turns readiness off, waits SHUTDOWN_DRAIN_DELAY so that load
// balancers notice, then stops accepting and lets in-flight requests finish
// within SHUTDOWN_TIMEOUT. The private listener closes last, so scrapes go on
// while requests drain.
func (s *server) shutdown(l *listeners) error {
	s.log.Info("shutting down", "drain_delay", s.cfg.ShutdownDrainDelay.String(), "timeout", s.cfg.ShutdownTimeout.String())
	s.shuttingDown.Store(true)
	time.Sleep(s.cfg.ShutdownDrainDelay)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := l.mainSrv.Shutdown(ctx)
	if l.privSrv != nil && l.privSrv.Shutdown(ctx) != nil {
		_ = l.privSrv.Close() // a profile still running at the deadline is cut
	}
	if err != nil {
		_ = l.mainSrv.Close()
		return fmt.Errorf("requests still running after SHUTDOWN_TIMEOUT (%s) were cut: %w", s.cfg.ShutdownTimeout, err)
	}
	s.log.Info("stopped")
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
// datagram socket NOTIFY_SOCKET names (the sd_notify protocol). Without one
// it does nothing: zenspa is not running under Type=notify.
func notifySystemd(socket, state string) error {
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

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"
)

// checker runs one dependency check on behalf of every probe: concurrent
// callers share the check in flight, and a finished result is reused for ttl.
// A check ends at timeout whatever the driver does, and a new one does not
// start while an abandoned one is still running, so a silent dependency cannot
// make checks pile up. A flood of probes therefore costs the dependency about
// one query per ttl.
type checker struct {
	name    string
	timeout time.Duration
	ttl     time.Duration
	probe   func(context.Context) error
	log     *slog.Logger
	warn    every
	// report, when set before the first check, is told every finished
	// check: it feeds the dependency metrics.
	report func(dependency string, res checkResult)

	mu       sync.Mutex
	last     checkResult
	inflight *checkCall
	probing  bool // a probe goroutine is running, possibly abandoned
}

// checkResult is the outcome of one check.
type checkResult struct {
	err     error
	elapsed time.Duration
	at      time.Time
}

func (r checkResult) ok() bool { return r.err == nil && !r.at.IsZero() }

// responseTimeMS is the check's duration in milliseconds, two decimals.
func (r checkResult) responseTimeMS() float64 {
	return math.Round(float64(r.elapsed.Microseconds())/10) / 100
}

// checkCall is a check in flight; done closes when res is set.
type checkCall struct {
	done chan struct{}
	res  checkResult
}

var (
	errCheckTimeout   = errors.New("check timed out")
	errStillRunning   = errors.New("previous check still running")
	errCheckAbandoned = errors.New("probe gave up waiting")
)

// newChecker returns a checker for probe.
func newChecker(name string, timeout, ttl time.Duration, log *slog.Logger, probe func(context.Context) error) *checker {
	return &checker{name: name, timeout: timeout, ttl: ttl, probe: probe, log: log, warn: every{interval: 5 * time.Second}}
}

// check returns a fresh enough result, joining the check in flight or
// starting one. It returns early, as a failure, if ctx ends first.
func (c *checker) check(ctx context.Context) checkResult {
	c.mu.Lock()
	if c.ttl > 0 && !c.last.at.IsZero() && time.Since(c.last.at) < c.ttl {
		res := c.last
		c.mu.Unlock()
		return res
	}
	call := c.inflight
	if call == nil {
		call = &checkCall{done: make(chan struct{})}
		c.inflight = call
		// The check is shared by every waiting probe, so it must not end
		// with the request that happened to start it.
		go c.run(call)
	}
	c.mu.Unlock()

	select {
	case <-call.done:
		return call.res
	case <-ctx.Done():
		return checkResult{err: errCheckAbandoned, at: time.Now()}
	}
}

// latest is the last finished check's result, without checking again.
func (c *checker) latest() checkResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// run performs one check, bounded by timeout, and publishes its result.
func (c *checker) run(call *checkCall) {
	start := time.Now()
	err := c.bounded()
	res := checkResult{err: err, elapsed: time.Since(start), at: time.Now()}

	c.mu.Lock()
	wasOK := c.last.ok() || c.last.at.IsZero()
	c.last = res
	c.inflight = nil
	c.mu.Unlock()
	// Reported before the waiters go on, so that what they do next (a
	// scrape) sees this check.
	if c.report != nil {
		c.report(c.name, res)
	}
	call.res = res
	close(call.done)

	switch {
	case err != nil && c.warn.allow():
		c.log.Warn("dependency check failed", "dependency", c.name, "error", err)
	case err == nil && !wasOK:
		c.log.Info("dependency recovered", "dependency", c.name)
	}
}

// bounded runs the probe in its own goroutine and stops waiting at timeout.
func (c *checker) bounded() error {
	c.mu.Lock()
	if c.probing {
		c.mu.Unlock()
		return errStillRunning
	}
	c.probing = true
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		err := c.probe(ctx)
		c.mu.Lock()
		c.probing = false
		c.mu.Unlock()
		errc <- err
	}()
	select {
	case err := <-errc:
		if err != nil && ctx.Err() != nil {
			return errCheckTimeout
		}
		return err
	case <-ctx.Done():
		return errCheckTimeout
	}
}

// healthBody is what every health endpoint answers with.
type healthBody struct {
	Status    string `json:"status"`
	Timestamp string `json:"timestamp"`
	Service   string `json:"service"`
	Version   string `json:"version"`
}

// dbHealthBody is the answer of /health/db.
type dbHealthBody struct {
	healthBody
	Database       string  `json:"database"`
	Connected      bool    `json:"connected"`
	ResponseTimeMS float64 `json:"response_time_ms"`
}

// redisHealthBody is the answer of /health/redis.
type redisHealthBody struct {
	healthBody
	Redis          string  `json:"redis"`
	Connected      bool    `json:"connected"`
	ResponseTimeMS float64 `json:"response_time_ms"`
}

// readyBody is the answer of /health/ready.
type readyBody struct {
	healthBody
	Checks map[string]checkBody `json:"checks"`
}

// checkBody is one dependency's line in /health/ready.
type checkBody struct {
	Status         string  `json:"status"`
	ResponseTimeMS float64 `json:"response_time_ms"`
}

// health returns the common body with the given status.
func (s *server) health(healthy bool) healthBody {
	return healthBody{Status: statusWord(healthy), Timestamp: now(), Service: s.cfg.AppName, Version: s.cfg.AppVersion}
}

// statusWord is "healthy" or "unhealthy".
func statusWord(healthy bool) string {
	if healthy {
		return "healthy"
	}
	return "unhealthy"
}

// statusCode is 200 for healthy and 503 otherwise.
func statusCode(healthy bool) int {
	if healthy {
		return http.StatusOK
	}
	return http.StatusServiceUnavailable
}

// handleHealth answers liveness: the process serves. It touches no
// dependency.
func (s *server) handleHealth() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.health(true))
	})
}

// handleHealthDB reports whether PostgreSQL answers.
func (s *server) handleHealthDB() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res := s.dbCheck.check(r.Context())
		writeJSON(w, statusCode(res.ok()), dbHealthBody{
			healthBody:     s.health(res.ok()),
			Database:       "postgresql",
			Connected:      res.ok(),
			ResponseTimeMS: res.responseTimeMS(),
		})
	})
}

// handleHealthRedis reports whether Redis answers.
func (s *server) handleHealthRedis() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res := s.redisCheck.check(r.Context())
		writeJSON(w, statusCode(res.ok()), redisHealthBody{
			healthBody:     s.health(res.ok()),
			Redis:          s.cfg.redisAddr(),
			Connected:      res.ok(),
			ResponseTimeMS: res.responseTimeMS(),
		})
	})
}

// handleReady reports readiness: PostgreSQL answers and the server is not
// shutting down. Redis is reported but optional, so it never makes the
// service unready.
func (s *server) handleReady() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Shutting down, the answer is 503 at once, with the checks as they
		// last stood: a load balancer must not wait for a slow dependency.
		shuttingDown := s.shuttingDown.Load()
		db, redis := s.dbCheck.latest(), s.redisCheck.latest()
		if !shuttingDown {
			// Both checks run at once so that readiness takes the longer of
			// the two, not their sum.
			done := make(chan struct{})
			go func() {
				defer close(done)
				redis = s.redisCheck.check(r.Context())
			}()
			db = s.dbCheck.check(r.Context())
			<-done
		}

		ready := db.ok() && !shuttingDown
		writeJSON(w, statusCode(ready), readyBody{
			healthBody: s.health(ready),
			Checks: map[string]checkBody{
				"database": {Status: statusWord(db.ok()), ResponseTimeMS: db.responseTimeMS()},
				"redis":    {Status: statusWord(redis.ok()), ResponseTimeMS: redis.responseTimeMS()},
			},
		})
	})
}

// healthcheck is `zenspa healthcheck [--url URL] [--timeout 3s]`: it asks
// /health/ready of the local instance (http://$HOST:$PORT, 127.0.0.1 when
// HOST listens everywhere, unless --url names another), prints one line and
// exits 0 when ready, 1 otherwise. It needs no DATABASE_URL, so it suits
// Docker HEALTHCHECK and watchdog scripts on machines without curl.
func healthcheck(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("url", "", "base URL of the instance (default http://127.0.0.1:$PORT)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return &usageError{"healthcheck: " + err.Error()}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("healthcheck: unexpected argument %q", fs.Arg(0))}
	}
	if *base == "" {
		addr, err := loadProbeAddr(lookupEnv)
		if err != nil {
			return err
		}
		*base = "http://" + addr
	}
	target := strings.TrimSuffix(*base, "/")
	if !strings.HasSuffix(target, "/health/ready") {
		target += "/health/ready"
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return &usageError{fmt.Sprintf("healthcheck: bad --url: %v", err)}
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}} // no proxy for a local probe
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stdout, "not ready: %s: %v\n", target, err)
		return exitStatus(1)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stdout, "not ready: %s answered %d\n", target, resp.StatusCode)
		return exitStatus(1)
	}
	fmt.Fprintf(stdout, "ready: %s answered 200\n", target)
	return nil
}

// Command baseline is the yardstick of `make bench` (BENCHMARKS.md): for
// every zenspa route a case measures, the plainest net/http handler that
// answers the same body, behind the standard ServeMux and nothing else (no
// middleware, no logging, no metrics). zenspa's figures are read as ratios
// to it, so each ratio says what zenspa's own code costs on that route.
//
// With -headers it also sends the response headers zenspa must send (the
// contract's six security headers, a fresh X-Request-ID and Vary: Origin),
// and with -limits it runs under zenspa's server limits (read, write and idle
// timeouts, the header size cap). With both it is the with-headers baseline
// the targets are judged against; without either, the bare baseline, shown
// for information.
//
// The treatment routes run zenspa's SQL on -database-url with zenspa's pool
// sizes, and read zenspa's cache entries in Redis at -redis-addr unless
// -cache-ttl is 0 (treatments.go). Neither is reached before a request
// needs it.
//
//	baseline -addr 127.0.0.1:8099 [-headers] [-limits] [-redis-addr HOST:PORT]
//	         [-database-url URL] [-cache-ttl 60s]
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"
	_ "github.com/lib/pq"
)

// zenspa's pool sizes with the default configuration: DB_POOL_SIZE idle
// connections and DB_MAX_OVERFLOW more open, REDIS_POOL_SIZE to Redis.
const (
	dbPoolSize    = 10
	dbMaxOverflow = 10
	redisPoolSize = 10
)

// options are the command-line settings.
type options struct {
	addr        string
	headers     bool
	limits      bool
	redisAddr   string // the address /health/redis names and the cache uses
	databaseURL string
	cacheTTL    time.Duration // 0: GET /api/v1/treatments/{id} reads PostgreSQL only
	jwksURL     string        // the key set GET /api/v1/me verifies tokens with
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:8099", "address to listen on")
	flag.BoolVar(&o.headers, "headers", false, "also send the response headers zenspa must send")
	flag.BoolVar(&o.limits, "limits", false, "apply zenspa's server limits")
	flag.StringVar(&o.redisAddr, "redis-addr", "127.0.0.1:6379", "the Redis of zenspa's cache, which its /health/redis reports")
	flag.StringVar(&o.databaseURL, "database-url", "postgres://zenspa:zenspa@127.0.0.1:5432/zenspa_bench?sslmode=disable", "zenspa's DATABASE_URL")
	flag.DurationVar(&o.cacheTTL, "cache-ttl", time.Minute, "zenspa's CACHE_TTL: how long an entry stored on a miss lives; 0: no cache")
	flag.StringVar(&o.jwksURL, "jwks-url", "", "the JWKS of the tokens GET /api/v1/me verifies (bench/run's project)")
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "baseline: %v\n", err)
		os.Exit(1)
	}
}

// run serves until ctx ends, then shuts down.
func run(ctx context.Context, o options) error {
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	db, err := openDB(o.databaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	pool := &redis.Pool{
		MaxIdle:   redisPoolSize,
		MaxActive: redisPoolSize,
		Wait:      true,
		Dial:      func() (redis.Conn, error) { return redis.Dial("tcp", o.redisAddr) },
	}
	defer pool.Close()

	h := routes(o, db, pool)
	if o.headers {
		h = withHeaders(h)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	if o.limits { // as zenspa's run sets them with the default configuration
		srv.ReadTimeout = 30 * time.Second
		srv.WriteTimeout = time.Minute
		srv.IdleTimeout = 2 * time.Minute
		srv.MaxHeaderBytes = 64 << 10
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// openDB opens a lib/pq pool sized as zenspa's, which sends each query with
// its parameters in one round trip (binary_parameters=yes) as zenspa does.
func openDB(databaseURL string) (*sql.DB, error) {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("-database-url: %w", err)
	}
	q := u.Query()
	q.Set("binary_parameters", "yes")
	u.RawQuery = q.Encode()
	db, err := sql.Open("postgres", u.String())
	if err != nil {
		return nil, err
	}
	db.SetMaxIdleConns(dbPoolSize)
	db.SetMaxOpenConns(dbPoolSize + dbMaxOverflow)
	return db, nil
}

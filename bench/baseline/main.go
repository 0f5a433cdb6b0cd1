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
//	baseline -addr 127.0.0.1:8099 [-headers] [-limits] [-redis-addr HOST:PORT]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// options are the command-line settings.
type options struct {
	addr      string
	headers   bool
	limits    bool
	redisAddr string // the address /health/redis names, as zenspa's does
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:8099", "address to listen on")
	flag.BoolVar(&o.headers, "headers", false, "also send the response headers zenspa must send")
	flag.BoolVar(&o.limits, "limits", false, "apply zenspa's server limits")
	flag.StringVar(&o.redisAddr, "redis-addr", "127.0.0.1:6379", "the Redis address zenspa's /health/redis reports")
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
	h := routes(o)
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

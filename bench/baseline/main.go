// Command baseline is the yardstick of the benchmarks in BENCHMARKS.md: bare
// net/http with one handler that answers every request with the same small
// JSON as zenspa's /health, and nothing else (no middleware, no router, no
// dependencies). What it reaches on a machine is the most any Go HTTP
// service can reach there; zenspa's figures are read as a ratio to it.
//
// With -headers it also sends the response headers zenspa's /health sends
// (the six security headers, Vary and an X-Request-ID, with fixed values),
// and with -limits it applies zenspa's server limits (read, write and idle
// timeouts, the header size cap): with both, it is the most a server that
// must do what zenspa's README promises at the HTTP level can reach, which
// separates what those promises cost net/http from what zenspa's middleware
// costs.
//
//	go run ./bench/baseline -addr 127.0.0.1:8099 [-headers] [-limits]
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

func main() {
	addr := flag.String("addr", "127.0.0.1:8099", "address to listen on")
	headers := flag.Bool("headers", false, "also send the response headers of zenspa's /health")
	limits := flag.Bool("limits", false, "apply zenspa's server limits")
	flag.Parse()
	if err := run(*addr, *headers, *limits); err != nil {
		fmt.Fprintf(os.Stderr, "baseline: %v\n", err)
		os.Exit(1)
	}
}

// run serves until SIGINT or SIGTERM.
func run(addr string, headers, limits bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	h := http.Handler(http.HandlerFunc(health))
	if headers {
		h = withHeaders(h)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	if limits { // as zenspa's serve sets them with the default configuration
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

// health answers {"status":"healthy","timestamp":…,"service":…,"version":…}
// with the current time in RFC 3339 UTC, as zenspa's /health does with its
// default APP_NAME and APP_VERSION.
func health(w http.ResponseWriter, _ *http.Request) {
	b := make([]byte, 0, 128)
	b = append(b, `{"status":"healthy","timestamp":"`...)
	b = time.Now().UTC().AppendFormat(b, time.RFC3339)
	b = append(b, `","service":"ZenSpa Backend","version":"0.1.0"}`+"\n"...)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// withHeaders sets the headers zenspa's /health answers with, but for
// Content-Type, Content-Length and Date, which health and net/http set. The
// values are shared read-only slices, as zenspa's are.
func withHeaders(next http.Handler) http.Handler {
	headers := []struct {
		name  string
		value []string
	}{
		{"X-Request-Id", []string{"b684f544-73fa-4818-95bd-8252b27be49c"}},
		{"X-Content-Type-Options", []string{"nosniff"}},
		{"X-Frame-Options", []string{"DENY"}},
		{"X-Xss-Protection", []string{"1; mode=block"}},
		{"Strict-Transport-Security", []string{"max-age=31536000; includeSubDomains"}},
		{"X-Permitted-Cross-Domain-Policies", []string{"none"}},
		{"Referrer-Policy", []string{"strict-origin-when-cross-origin"}},
		{"Vary", []string{"Origin"}},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		for _, hv := range headers {
			h[hv.name] = hv.value
		}
		next.ServeHTTP(w, r)
	})
}

package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"
)

// maxBodyBytes is the largest request body any route accepts.
const maxBodyBytes = 1 << 20

// headerRequestID carries the request ID in both directions.
const headerRequestID = "X-Request-ID"

// responseRecorder remembers the status and size of a response, and who
// asked, for the access log, and tells recoverPanics whether headers
// already went out. It is
// created once per request by recoverPanics and shared down the chain.
type responseRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	user   string      // the caller's sub, once its token has verified
	token  *tokenCheck // the verifier's answer about the bearer token (verifyToken)
}

func (rw *responseRecorder) WriteHeader(status int) {
	if rw.status == 0 {
		rw.status = status
	}
	rw.ResponseWriter.WriteHeader(status)
}

func (rw *responseRecorder) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	n, err := rw.ResponseWriter.Write(p)
	rw.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the real writer.
func (rw *responseRecorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// recorder returns the request's responseRecorder, or wraps w in a new one
// when a middleware runs outside the usual chain.
func recorder(w http.ResponseWriter) *responseRecorder {
	if rec, ok := w.(*responseRecorder); ok {
		return rec
	}
	return &responseRecorder{ResponseWriter: w}
}

// recoverPanics turns a panic in any handler into a 500 INTERNAL_ERROR with a
// generic message and logs the stack with the request ID; the server goes on.
func (s *server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := recorder(w)
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler { //nolint:errorlint // a sentinel passed to panic
				panic(v)
			}
			id := rec.Header().Get(headerRequestID)
			s.log.Error("panic in handler", "request_id", id, "method", r.Method, "path", r.URL.Path,
				"panic", v, "stack", string(debug.Stack()))
			if rec.status != 0 {
				// The status line is gone already: cutting the connection is
				// the only honest way left to say the response is broken.
				panic(http.ErrAbortHandler)
			}
			s.writeError(rec, r, newError(codeInternal, genericInternalMessage))
		}()
		next.ServeHTTP(rec, r)
	})
}

// requestIDKey is the context key of the request ID.
type requestIDKey struct{}

// requestIDFrom returns the request ID stored by the requestID middleware.
func requestIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// requestID keeps a well-formed incoming X-Request-ID or makes a new UUID v4,
// echoes it in the response and puts it in the request's context.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(headerRequestID)
		if !validRequestID(id) {
			id = newUUID()
		}
		w.Header().Set(headerRequestID, id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id)))
	})
}

// validRequestID accepts 1 to 128 characters from [A-Za-z0-9._:-].
func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') ||
			c == '.' || c == '_' || c == ':' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}

// hardeningHeaders are the browser-hardening headers of every response.
var hardeningHeaders = [...][2]string{
	{"X-Content-Type-Options", "nosniff"},
	{"X-Frame-Options", "DENY"},
	{"X-XSS-Protection", "1; mode=block"},
	{"Strict-Transport-Security", "max-age=31536000; includeSubDomains"},
	{"X-Permitted-Cross-Domain-Policies", "none"},
	{"Referrer-Policy", "strict-origin-when-cross-origin"},
}

// securityHeaders sets the browser-hardening headers on every response,
// errors and preflights included.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, h := range hardeningHeaders {
			w.Header().Set(h[0], h[1])
		}
		next.ServeHTTP(w, r)
	})
}

// accessLog writes one line per request: INFO, ERROR for a 5xx, and DEBUG for
// health probes whatever their status, so that probes do not flood the log.
// client is the address clientAddr decided, the one the rate limit counts.
func (s *server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A health probe logs at DEBUG whatever its answer: with DEBUG off
		// there is nothing to time or to write.
		if !s.log.Enabled(r.Context(), slog.LevelDebug) && isProbe(r) {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		rec := recorder(w)
		defer func() {
			status := rec.status
			if status == 0 {
				status = http.StatusInternalServerError // a panic on its way to recoverPanics
			}
			level := slog.LevelInfo
			switch {
			case isProbe(r):
				level = slog.LevelDebug
			case status >= 500:
				level = slog.LevelError
			}
			ctx := r.Context()
			if !s.log.Enabled(ctx, level) {
				return
			}
			attrs := []slog.Attr{
				slog.String("method", r.Method),
				slog.String("path", r.URL.Path),
				slog.String("client", s.clientAddr(r).String()),
				slog.Int("status", status),
				slog.Int64("bytes", rec.bytes),
				slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
			}
			if rec.user != "" {
				attrs = append(attrs, slog.String("user", rec.user))
			}
			s.log.LogAttrs(ctx, level, "request", attrs...)
		}()
		next.ServeHTTP(rec, r)
	})
}

// isProbe reports whether r is a health probe, a GET or HEAD of a health
// route, or a scrape that /metrics answered, which log at DEBUG. Anything
// else on those paths (POST /health, /healthz, /metrics where it answers
// 404) is a client's mistake worth seeing at INFO.
func isProbe(r *http.Request) bool {
	if r.Pattern == metricsPattern { // set by ServeMux once the routes have run
		return true
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	switch strings.TrimPrefix(r.URL.Path, "/api/v1") {
	case "/health", "/health/live", "/health/ready", "/health/db", "/health/redis":
		return true
	}
	return false
}

// Values sent to an allowed origin's preflight.
const (
	corsAllowMethods  = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
	corsAllowHeaders  = "Accept, Authorization, Content-Type, If-Match, If-None-Match, X-Request-ID"
	corsExposeHeaders = "ETag, Location, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, WWW-Authenticate, X-Request-ID"
	corsMaxAge        = "600"
)

// cors answers exact origins from CORS_ORIGINS with credentials allowed. A
// preflight from any other origin gets 403; other requests from such an origin
// are served without CORS headers, and the browser keeps the answer from the
// page.
func (s *server) cors(next http.Handler) http.Handler {
	allowed := make(map[string]bool, len(s.cfg.CORSOrigins))
	for _, o := range s.cfg.CORSOrigins {
		allowed[o] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Every answer depends on Origin, also one to a request without it:
		// a shared cache must not hand it to a cross-origin request.
		h := w.Header()
		h.Add("Vary", "Origin")
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		ok := allowed[origin]
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		if ok {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
			h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		}
		switch {
		case preflight && ok:
			h.Set("Access-Control-Allow-Methods", corsAllowMethods)
			h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
			h.Set("Access-Control-Max-Age", corsMaxAge)
			w.WriteHeader(http.StatusNoContent)
		case preflight:
			s.writeError(w, r, newError(codeForbidden, "Origin not allowed"))
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// limitBody refuses bodies over maxBodyBytes with 413 before any route runs:
// a declared Content-Length at once, without reading; a body of unknown
// length is read up to the limit first.
func (s *server) limitBody(next http.Handler) http.Handler {
	tooLarge := newError(codePayloadTooLarge, "Request body must not exceed 1 MiB")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.ContentLength > maxBodyBytes:
			w.Header().Set("Connection", "close")
			s.writeError(w, r, tooLarge)
			return
		case r.ContentLength < 0:
			body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
			if len(body) > maxBodyBytes {
				w.Header().Set("Connection", "close")
				s.writeError(w, r, tooLarge)
				return
			}
			if err != nil {
				s.writeError(w, r, newError(codeValidation, "Request body could not be read"))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		case r.ContentLength > 0:
			r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		}
		next.ServeHTTP(w, r)
	})
}

package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// routes lists every path the baseline answers, one per zenspa route that a
// case of bench/run measures. A new case adds its handler here; one that
// needs PostgreSQL or Redis gets a *sql.DB (lib/pq) or a *redis.Pool
// (redigo) that run opens from a flag, and runs the same query or command
// zenspa runs, plainly.
func routes(o options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", health)
	mux.HandleFunc("GET /health/db", healthDB)
	mux.Handle("GET /health/redis", healthRedis(o.redisAddr))
	return mux
}

// zenspa's defaults for APP_NAME and APP_VERSION, which its health bodies
// carry.
const (
	serviceName    = "ZenSpa Backend"
	serviceVersion = "0.1.0"
)

// checkMS is the response_time_ms the dependency routes report. zenspa
// answers them from a check it reuses for HEALTH_CACHE_TTL, so under load
// they do no I/O; the baseline does none either and reports a typical figure.
const checkMS = 0.42

// healthBody is the body of /health, and the start of the other two.
type healthBody struct {
	Status    string `json:"status"`
	Timestamp string `json:"timestamp"`
	Service   string `json:"service"`
	Version   string `json:"version"`
}

// newHealthBody is a healthy body stamped with the current time.
func newHealthBody() healthBody {
	return healthBody{
		Status:    "healthy",
		Timestamp: time.Now().UTC().Format(time.RFC3339),
		Service:   serviceName,
		Version:   serviceVersion,
	}
}

// health answers zenspa's GET /health.
func health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, newHealthBody())
}

// healthDB answers zenspa's GET /health/db when PostgreSQL is up.
func healthDB(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, struct {
		healthBody
		Database       string  `json:"database"`
		Connected      bool    `json:"connected"`
		ResponseTimeMS float64 `json:"response_time_ms"`
	}{newHealthBody(), "postgresql", true, checkMS})
}

// healthRedis answers zenspa's GET /health/redis when Redis at addr is up.
func healthRedis(addr string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, struct {
			healthBody
			Redis          string  `json:"redis"`
			Connected      bool    `json:"connected"`
			ResponseTimeMS float64 `json:"response_time_ms"`
		}{newHealthBody(), addr, true, checkMS})
	}
}

// writeJSON answers 200 with v as JSON and a newline, as zenspa's writeJSON
// does. net/http adds Content-Length, the body being small.
func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "cannot encode the body", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, '\n'))
}

// withHeaders sets the headers zenspa sends on every answer, but for
// Content-Type, Content-Length and Date, which the handlers and net/http set.
func withHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Request-ID", newRequestID())
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-XSS-Protection", "1; mode=block")
		h.Set("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
		h.Set("X-Permitted-Cross-Domain-Policies", "none")
		h.Set("Referrer-Policy", "strict-origin-when-cross-origin")
		h.Set("Vary", "Origin")
		next.ServeHTTP(w, r)
	})
}

// newRequestID returns a random UUID version 4, as zenspa sends when the
// request brings no ID of its own.
func newRequestID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])  // since Go 1.24 it never returns an error
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:])
}

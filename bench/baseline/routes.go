package main

import (
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/gomodule/redigo/redis"
)

// routes lists every path the baseline answers, one per zenspa route that a
// case of bench/run measures. A new case adds its handler here; one that
// needs PostgreSQL or Redis uses db (lib/pq) or pool (redigo), which run
// opens from the flags, and runs the same query or command zenspa runs,
// plainly.
func routes(o options, db *sql.DB, pool *redis.Pool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", health)
	mux.HandleFunc("GET /health/db", healthDB)
	mux.Handle("GET /health/redis", healthRedis(o.redisAddr))
	mux.Handle("GET /api/v1/treatments", listTreatments(db))
	mux.Handle("GET /api/v1/treatments/{id}", getTreatment(db, pool, o.cacheTTL))
	mux.Handle("POST /api/v1/treatments", createTreatment(db))
	mux.Handle("GET /api/v1/me", me(o.jwksURL))
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
	writeJSON(w, http.StatusOK, newHealthBody())
}

// healthDB answers zenspa's GET /health/db when PostgreSQL is up.
func healthDB(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		healthBody
		Database       string  `json:"database"`
		Connected      bool    `json:"connected"`
		ResponseTimeMS float64 `json:"response_time_ms"`
	}{newHealthBody(), "postgresql", true, checkMS})
}

// healthRedis answers zenspa's GET /health/redis when Redis at addr is up.
func healthRedis(addr string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, struct {
			healthBody
			Redis          string  `json:"redis"`
			Connected      bool    `json:"connected"`
			ResponseTimeMS float64 `json:"response_time_ms"`
		}{newHealthBody(), addr, true, checkMS})
	}
}

// writeJSON answers status with v as JSON and a newline, with its length,
// as zenspa's writeJSON does: net/http would send a body over 2 KB (a page
// of the menu) chunked instead.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "cannot encode the body", http.StatusInternalServerError)
		return
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// withHeaders sets the headers zenspa sends on every answer, but for
// Content-Type, Content-Length and Date, which the handlers and net/http set.
func withHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Request-ID", newUUID())
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

// newUUID returns a random UUID version 4: the X-Request-ID zenspa sends when
// the request brings none, and the id of a new treatment.
func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])  // since Go 1.24 it never returns an error
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:])
}

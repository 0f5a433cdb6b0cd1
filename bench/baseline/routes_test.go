package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"
)

// TestRoutes checks that every route answers 200 with the fields of zenspa's
// body, and with -headers the headers zenspa sends.
func TestRoutes(t *testing.T) {
	h := withHeaders(routes(options{redisAddr: "127.0.0.1:6379"}, nil, nil)) // these routes reach neither
	uuid4 := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	ids := map[string]bool{}
	for _, tc := range []struct {
		path  string
		field string // one field beyond healthBody's
		want  any
	}{
		{"/health", "status", "healthy"},
		{"/health/db", "database", "postgresql"},
		{"/health/redis", "redis", "127.0.0.1:6379"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, tc.path, nil))
			if w.Code != http.StatusOK {
				t.Fatalf("GET %s = %d, want 200", tc.path, w.Code)
			}
			var body map[string]any
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("GET %s: body %q: %v", tc.path, w.Body, err)
			}
			for _, f := range []string{"status", "timestamp", "service", "version"} {
				if _, ok := body[f]; !ok {
					t.Errorf("GET %s: body %q has no %q", tc.path, w.Body, f)
				}
			}
			if body[tc.field] != tc.want {
				t.Errorf("GET %s: %s = %v, want %v", tc.path, tc.field, body[tc.field], tc.want)
			}
			if got := len(w.Header()); got != 10 { // the eight of withHeaders, Content-Type and Content-Length
				t.Errorf("GET %s: %d headers (%v), want 10", tc.path, got, w.Header())
			}
			id := w.Header().Get("X-Request-ID")
			if !uuid4.MatchString(id) || ids[id] {
				t.Errorf("GET %s: X-Request-ID = %q, want a fresh UUID v4", tc.path, id)
			}
			ids[id] = true
		})
	}
}

package main

import (
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// The treatment routes against the real PostgreSQL and Redis that `make
// bench` uses: each test run in a database of its own with zenspa's schema,
// dropped at the end.

// adminURL reaches the server the benchmark uses, as the role it uses.
const adminURL = "postgres://zenspa:zenspa@127.0.0.1:5432/postgres?sslmode=disable"

// TestSameSQL checks that the baseline's statements are zenspa's: every
// piece of each, whitespace aside, is in ../../treatments.go.
func TestSameSQL(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "..", "treatments.go"))
	if err != nil {
		t.Fatal(err)
	}
	zenspa := oneSpace(string(src))
	for name, stmt := range map[string]string{"treatmentColumns": treatmentColumns, "listSQL": listSQL, "getSQL": getSQL, "insertSQL": insertSQL} {
		for _, piece := range strings.Split(stmt, treatmentColumns) {
			if p := oneSpace(piece); p != "" && !strings.Contains(zenspa, p) {
				t.Errorf("%s: %q is not in zenspa's treatments.go", name, p)
			}
		}
	}
	if !strings.Contains(zenspa, "`"+treatmentColumns+"`") {
		t.Errorf("treatmentColumns = %q, not zenspa's", treatmentColumns)
	}
}

// oneSpace collapses every run of white space into one space.
func oneSpace(s string) string { return strings.Join(strings.Fields(s), " ") }

func TestTreatments(t *testing.T) {
	db := testDB(t)
	pool := &redis.Pool{Dial: func() (redis.Conn, error) { return redis.Dial("tcp", "127.0.0.1:6379") }}
	t.Cleanup(func() { pool.Close() })
	cached := withHeaders(routes(options{cacheTTL: time.Minute}, db, pool))
	uncached := withHeaders(routes(options{}, db, pool))

	// POST: 201 with the row, its place and its tag.
	var ids []string
	for _, name := range []string{"Gội đầu dưỡng sinh", "massage Thái"} {
		w := serve(t, uncached, http.MethodPost, "/api/v1/treatments", `{"name":"`+name+`","duration_minutes":60,"price":350000}`)
		var got struct{ Data treatment }
		decode(t, w, http.StatusCreated, &got)
		if got.Data.Name != name || got.Data.Currency != "VND" || !got.Data.Active || got.Data.CreatedAt.Location() != time.UTC {
			t.Errorf("POST %s: data = %+v, want the row with zenspa's defaults, in UTC", name, got.Data)
		}
		if loc := w.Header().Get("Location"); loc != "/api/v1/treatments/"+got.Data.ID {
			t.Errorf("POST %s: Location = %q, want the new row's path", name, loc)
		}
		if !regexp.MustCompile(`^"[A-Za-z0-9_-]{16}"$`).MatchString(w.Header().Get("ETag")) {
			t.Errorf("POST %s: ETag = %q, want zenspa's form", name, w.Header().Get("ETag"))
		}
		ids = append(ids, got.Data.ID)
	}

	// The list, a page at a time: first page, then after a zenspa cursor
	// (whose signature the baseline does not check) and after its own.
	var first struct {
		Data       []treatment
		Pagination pagination
	}
	decode(t, serve(t, uncached, http.MethodGet, "/api/v1/treatments?limit=1", ""), http.StatusOK, &first)
	if len(first.Data) != 1 || first.Data[0].Name != "Gội đầu dưỡng sinh" || first.Pagination.NextCursor == nil {
		t.Fatalf("GET ?limit=1 = %+v, want the first row by lower(name) and a next cursor", first)
	}
	payload, _ := json.Marshal([]string{"treatments active=", strings.ToLower(first.Data[0].Name), first.Data[0].ID})
	for _, cursor := range []string{base64.RawURLEncoding.EncodeToString(payload) + ".c2lnbmF0dXJl", *first.Pagination.NextCursor} {
		var next struct {
			Data       []treatment
			Pagination pagination
		}
		decode(t, serve(t, uncached, http.MethodGet, "/api/v1/treatments?limit=1&cursor="+cursor, ""), http.StatusOK, &next)
		if len(next.Data) != 1 || next.Data[0].Name != "massage Thái" || next.Pagination.NextCursor != nil {
			t.Errorf("GET ?limit=1&cursor=%s = %+v, want the second and last row", cursor, next)
		}
	}

	// By id, with the cache off: PostgreSQL's row.
	var got struct{ Data treatment }
	decode(t, serve(t, uncached, http.MethodGet, "/api/v1/treatments/"+ids[0], ""), http.StatusOK, &got)
	if got.Data.ID != ids[0] || got.Data.Name != "Gội đầu dưỡng sinh" {
		t.Errorf("GET %s, no cache: data = %+v, want the row", ids[0], got.Data)
	}

	// By id through the cache: zenspa's entry answers; a miss then reads the
	// row and stores an entry of the shape it read.
	conn := pool.Get()
	defer conn.Close()
	keys := []string{"zenspa:treatment:" + ids[0], "zenspa:treatment:" + ids[1]}
	t.Cleanup(func() { _, _ = conn.Do("DEL", keys[0], keys[1]) })
	entry, _ := json.Marshal(cacheEntry{Shape: "0123456789abcdef", Value: treatment{ID: ids[0], Name: "from the cache"}})
	if _, err := conn.Do("SET", keys[0], entry, "PX", 60000); err != nil {
		t.Fatalf("SET %s: %v", keys[0], err)
	}
	decode(t, serve(t, cached, http.MethodGet, "/api/v1/treatments/"+ids[0], ""), http.StatusOK, &got)
	if got.Data.Name != "from the cache" {
		t.Errorf("GET %s, cached: name = %q, want the cache entry's", ids[0], got.Data.Name)
	}
	decode(t, serve(t, cached, http.MethodGet, "/api/v1/treatments/"+ids[1], ""), http.StatusOK, &got)
	b, err := redis.Bytes(conn.Do("GET", keys[1]))
	var stored cacheEntry
	if err != nil || json.Unmarshal(b, &stored) != nil || stored.Shape != "0123456789abcdef" || stored.Value.ID != ids[1] {
		t.Errorf("GET %s after a miss: Redis holds %q, %v, want the row in an entry of the shape read before", keys[1], b, err)
	}
	if ttl, _ := redis.Int(conn.Do("PTTL", keys[1])); ttl <= 0 || ttl > 60000 {
		t.Errorf("PTTL %s = %d, want at most the cache TTL", keys[1], ttl)
	}
}

// testDB creates a database with zenspa's schema (its up migrations, in
// order) and drops it when the test ends.
func testDB(t *testing.T) *sql.DB {
	t.Helper()
	admin, err := sql.Open("postgres", adminURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	name := "zenspa_bench_test_" + hex.EncodeToString(suffix[:])
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("CREATE DATABASE %s: %v (is PostgreSQL up? `bash scripts/services.sh --bench` starts it)", name, err)
	}
	db, err := openDB(strings.Replace(adminURL, "/postgres?", "/"+name+"?", 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Close()
		if _, err := admin.Exec("DROP DATABASE " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("DROP DATABASE %s: %v", name, err)
		}
	})
	files, err := filepath.Glob(filepath.Join("..", "..", "schema", "*.up.sql"))
	if err != nil || len(files) == 0 {
		t.Fatalf("zenspa's migrations: %v, %v", files, err)
	}
	slices.Sort(files)
	for _, f := range files {
		sqlText, err := os.ReadFile(f)
		if err == nil {
			_, err = db.Exec(string(sqlText))
		}
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	return db
}

// serve sends one request through h.
func serve(t *testing.T, h http.Handler, method, target, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// decode checks the status, the headers every answer has and the length,
// and reads the body into v.
func decode(t *testing.T, w *httptest.ResponseRecorder, status int, v any) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status = %d, want %d; body %q", w.Code, status, w.Body)
	}
	if w.Header().Get("X-Request-ID") == "" || w.Header().Get("Content-Length") == "" {
		t.Errorf("headers %v, want withHeaders' and a Content-Length", w.Header())
	}
	if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
		t.Fatalf("body %q: %v", w.Body, err)
	}
}

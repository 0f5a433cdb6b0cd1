package main

import (
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"
)

// The treatment menu as the baseline serves it: zenspa's statements of
// treatments.go, word for word (TestSameSQL checks), through database/sql
// and lib/pq, and zenspa's cache entries through redigo. What zenspa adds
// around them (validation, signed cursors, bounded waits, retries, error
// translation) is what the cases measure, so none of it is here: a request
// that is not well formed fails however the driver fails.

// treatment is one row, with zenspa's JSON names.
type treatment struct {
	ID              string    `json:"id"`
	Name            string    `json:"name"`
	Description     string    `json:"description"`
	DurationMinutes int64     `json:"duration_minutes"`
	Price           int64     `json:"price"`
	Currency        string    `json:"currency"`
	Active          bool      `json:"active"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
}

// dest is where a row of treatmentColumns scans into.
func (t *treatment) dest() []any {
	return []any{&t.ID, &t.Name, &t.Description, &t.DurationMinutes, &t.Price, &t.Currency, &t.Active, &t.CreatedAt, &t.UpdatedAt}
}

// zenspa's statements.
const (
	treatmentColumns = `id, name, description, duration_minutes, price, currency, active, created_at, updated_at`
	listSQL          = `SELECT ` + treatmentColumns + `, lower(name) FROM treatments
		WHERE ($1::boolean IS NULL OR active = $1)
		  AND ($2::text IS NULL OR (lower(name), id) > ($2, $3::uuid))
		ORDER BY lower(name), id LIMIT $4`
	getSQL    = `SELECT ` + treatmentColumns + ` FROM treatments WHERE id = $1`
	insertSQL = `INSERT INTO treatments (id, name, description, duration_minutes, price, currency, active)
			VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ` + treatmentColumns
)

// envelope is zenspa's success body; a list's adds pagination.
type envelope struct {
	Status     string      `json:"status"`
	Data       any         `json:"data"`
	Pagination *pagination `json:"pagination,omitempty"`
}

// pagination is a list's page size and where the next page starts.
type pagination struct {
	Limit      int     `json:"limit"`
	NextCursor *string `json:"next_cursor"`
}

// listTreatments answers GET /api/v1/treatments?limit=&cursor=. It reads
// the sort key out of a zenspa cursor (base64url JSON ["list", name, id],
// then a dot and the signature, which it does not check) and answers a
// next_cursor of that JSON alone, unsigned.
func listTreatments(db *sql.DB) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		limit := 20
		if v := q.Get("limit"); v != "" {
			limit, _ = strconv.Atoi(v)
		}
		var afterName, afterID *string
		if c := q.Get("cursor"); c != "" {
			payload, _, _ := strings.Cut(c, ".")
			b, _ := base64.RawURLEncoding.DecodeString(payload)
			var key []string
			if json.Unmarshal(b, &key) != nil || len(key) != 3 {
				http.Error(w, "bad cursor", http.StatusBadRequest)
				return
			}
			afterName, afterID = &key[1], &key[2]
		}
		rows, err := db.QueryContext(r.Context(), listSQL, nil, afterName, afterID, limit+1)
		if err != nil {
			serverError(w, err)
			return
		}
		defer rows.Close()
		page := []treatment{}
		var last []string
		var next *string
		for rows.Next() {
			var t treatment
			var sortName string
			if err := rows.Scan(append(t.dest(), &sortName)...); err != nil {
				serverError(w, err)
				return
			}
			if len(page) == limit {
				b, _ := json.Marshal(append([]string{"treatments active="}, last...))
				c := base64.RawURLEncoding.EncodeToString(b)
				next = &c
				break
			}
			page = append(page, inUTC(t))
			last = []string{sortName, t.ID}
		}
		if err := rows.Err(); err != nil {
			serverError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, envelope{Status: "success", Data: page, Pagination: &pagination{Limit: limit, NextCursor: next}})
	}
}

// getTreatment answers GET /api/v1/treatments/{id}: with ttl 0 from
// PostgreSQL, otherwise from zenspa's cache entry (one GET), and on a miss
// from PostgreSQL, storing the entry as zenspa does (SET NX PX ttl).
func getTreatment(db *sql.DB, pool *redis.Pool, ttl time.Duration) http.HandlerFunc {
	var shape shapeSeen
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		key := "zenspa:treatment:" + id
		if ttl > 0 {
			if t, ok := shape.get(pool, key); ok {
				writeTreatment(w, http.StatusOK, t)
				return
			}
		}
		var t treatment
		err := db.QueryRowContext(r.Context(), getSQL, id).Scan(t.dest()...)
		if errors.Is(err, sql.ErrNoRows) {
			http.NotFound(w, r)
			return
		}
		if err != nil {
			serverError(w, err)
			return
		}
		t = inUTC(t)
		if ttl > 0 {
			shape.fill(pool, key, t, ttl)
		}
		writeTreatment(w, http.StatusOK, t)
	}
}

// cacheEntry is zenspa's cache entry: the value with a fingerprint of its
// Go type, which zenspa compares with its own.
type cacheEntry struct {
	Shape string    `json:"shape"`
	Value treatment `json:"value"`
}

// shapeSeen remembers the fingerprint of the entries zenspa wrote, so that
// an entry the baseline stores on a miss (CACHE_TTL is shorter than a case)
// is one zenspa reads as a hit, and not one it can neither use nor replace.
// Until it has read an entry, the baseline stores none.
type shapeSeen struct {
	mu    sync.Mutex
	shape string
}

// get reads key, a hit when it holds an entry.
func (s *shapeSeen) get(pool *redis.Pool, key string) (treatment, bool) {
	conn := pool.Get()
	defer conn.Close()
	b, err := redis.Bytes(conn.Do("GET", key))
	var e cacheEntry
	if err != nil || json.Unmarshal(b, &e) != nil {
		return treatment{}, false
	}
	s.mu.Lock()
	s.shape = e.Shape
	s.mu.Unlock()
	return e.Value, true
}

// fill stores t under key for ttl unless the key holds anything.
func (s *shapeSeen) fill(pool *redis.Pool, key string, t treatment, ttl time.Duration) {
	s.mu.Lock()
	shape := s.shape
	s.mu.Unlock()
	if shape == "" {
		return
	}
	b, _ := json.Marshal(cacheEntry{Shape: shape, Value: t})
	conn := pool.Get()
	defer conn.Close()
	_, _ = conn.Do("SET", key, b, "NX", "PX", ttl.Milliseconds())
}

// treatmentInput is a POST's body; description, currency and active have
// zenspa's defaults.
type treatmentInput struct {
	Name            string  `json:"name"`
	Description     string  `json:"description"`
	DurationMinutes int64   `json:"duration_minutes"`
	Price           int64   `json:"price"`
	Currency        *string `json:"currency"`
	Active          *bool   `json:"active"`
}

// createTreatment answers POST /api/v1/treatments: BEGIN, the INSERT, COMMIT.
func createTreatment(db *sql.DB) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in treatmentInput
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		currency, active := "VND", true
		if in.Currency != nil {
			currency = *in.Currency
		}
		if in.Active != nil {
			active = *in.Active
		}
		tx, err := db.BeginTx(r.Context(), nil)
		if err != nil {
			serverError(w, err)
			return
		}
		defer tx.Rollback() // after Commit, a no-op
		var t treatment
		err = tx.QueryRowContext(r.Context(), insertSQL,
			newUUID(), in.Name, in.Description, in.DurationMinutes, in.Price, currency, active).Scan(t.dest()...)
		if err == nil {
			err = tx.Commit()
		}
		if err != nil {
			serverError(w, err)
			return
		}
		t = inUTC(t)
		w.Header().Set("Location", "/api/v1/treatments/"+t.ID)
		writeTreatment(w, http.StatusCreated, t)
	}
}

// inUTC returns t with its times in UTC, as zenspa answers them.
func inUTC(t treatment) treatment {
	t.CreatedAt, t.UpdatedAt = t.CreatedAt.UTC(), t.UpdatedAt.UTC()
	return t
}

// writeTreatment answers one treatment with zenspa's ETag: the first 12
// bytes of the SHA-256 of its JSON, base64url.
func writeTreatment(w http.ResponseWriter, status int, t treatment) {
	b, _ := json.Marshal(t)
	sum := sha256.Sum256(b)
	w.Header().Set("ETag", `"`+base64.RawURLEncoding.EncodeToString(sum[:12])+`"`)
	writeJSON(w, status, envelope{Status: "success", Data: t})
}

// serverError answers 500; the cases count it as a non-2xx.
func serverError(w http.ResponseWriter, err error) {
	http.Error(w, err.Error(), http.StatusInternalServerError)
}

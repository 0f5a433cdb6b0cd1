package main

import (
	"context"
	"database/sql"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// The treatment menu: the treatments a spa sells, which appointments book.
// This file is the pattern a module follows, top to bottom: the type and its
// JSON, reading and checking input, the queries, the handlers. Its table is
// schema/0002_treatments.up.sql, its routes are in routeTable (routes.go),
// its contract is in openapi.json, and treatments_test.go tests it.

// treatment is one treatment on the menu, as the API shows it.
type treatment struct {
	ID              string    `json:"id"`
	Name            string    `json:"name"`
	Description     string    `json:"description"`
	DurationMinutes int64     `json:"duration_minutes"`
	Price           int64     `json:"price"` // in the minor unit of Currency
	Currency        string    `json:"currency"`
	Active          bool      `json:"active"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
}

// treatmentColumns are the columns a treatment is read from, in the order
// of dest.
const treatmentColumns = `id, name, description, duration_minutes, price, currency, active, created_at, updated_at`

// dest is where a row of treatmentColumns scans into.
func (t *treatment) dest() []any {
	return []any{&t.ID, &t.Name, &t.Description, &t.DurationMinutes, &t.Price, &t.Currency, &t.Active, &t.CreatedAt, &t.UpdatedAt}
}

// inUTC returns t with its times in UTC, as every answer gives them.
func (t treatment) inUTC() treatment {
	t.CreatedAt, t.UpdatedAt = t.CreatedAt.UTC(), t.UpdatedAt.UTC()
	return t
}

// treatmentKey is where a treatment is cached.
func treatmentKey(id string) string { return "zenspa:treatment:" + id }

// treatmentInput is what a client may set: all of it on POST (description,
// currency and active have defaults), any of it on PATCH. A nil field was
// not sent.
type treatmentInput struct {
	Name            *string
	Description     *string
	DurationMinutes *int64
	Price           *int64
	Currency        *string
	Active          *bool
}

// readTreatmentInput reads and checks the body of a POST, or of a PATCH
// (partial), reporting every problem at once.
func readTreatmentInput(r *http.Request, partial bool) (treatmentInput, error) {
	body, err := readJSON(r)
	if err != nil {
		return treatmentInput{}, err
	}
	in := treatmentInput{
		Name:            body.text("name", !partial),
		Description:     body.text("description", false),
		DurationMinutes: body.integer("duration_minutes", !partial),
		Price:           body.integer("price", !partial),
		Currency:        body.text("currency", false),
		Active:          body.boolean("active", false),
	}
	if in.Name != nil {
		*in.Name = strings.TrimSpace(*in.Name)
		n := utf8.RuneCountInString(*in.Name)
		body.check("name", n >= 1 && n <= 120, "must be 1 to 120 characters, not counting spaces around them")
		body.check("name", !strings.ContainsFunc(*in.Name, invisible), "must not contain control or invisible formatting characters")
	}
	if in.Description != nil {
		body.check("description", utf8.RuneCountInString(*in.Description) <= 2000, "must be at most 2000 characters")
	}
	if d := in.DurationMinutes; d != nil {
		body.check("duration_minutes", *d >= 5 && *d <= 480 && *d%5 == 0, "must be from 5 to 480 minutes, in steps of 5")
	}
	if p := in.Price; p != nil {
		body.check("price", *p >= 0, "must be 0 or more, in the minor unit of the currency")
	}
	if c := in.Currency; c != nil {
		body.check("currency", isCurrencyCode(*c), "must be an ISO 4217 code of three capital letters, such as VND")
	}
	if partial && len(body.members) == 0 {
		body.add("", "sets no field: send at least one to change")
	}
	return in, body.err()
}

// invisible reports whether r is a control or formatting character (a line
// break, a zero-width space, a byte-order mark): a name holding one would
// look like another name and slip past the uniqueness rule.
func invisible(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Cf, r)
}

// isCurrencyCode reports whether s has the form of an ISO 4217 code.
func isCurrencyCode(s string) bool {
	return len(s) == 3 && strings.Trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == ""
}

// apply sets the fields of in that were sent.
func (in treatmentInput) apply(t *treatment) {
	set(&t.Name, in.Name)
	set(&t.Description, in.Description)
	set(&t.DurationMinutes, in.DurationMinutes)
	set(&t.Price, in.Price)
	set(&t.Currency, in.Currency)
	set(&t.Active, in.Active)
}

// set assigns *v to *dst when v is not nil.
func set[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// treatmentPage is one page of the menu and where the next one starts.
type treatmentPage struct {
	Treatments []treatment
	Next       []string // the sort key of the last row; nil on the last page
}

// listTreatments reads up to limit treatments after the sort key after (nil:
// from the start), ordered by name whatever its case, then id. It reads one
// row more than it returns, to know whether another page follows. A NULL
// parameter switches its condition off; the plan is made for the values at
// hand, so the index on lower(name) still serves: page 500 costs page 1.
func listTreatments(ctx context.Context, db *database, active *bool, after []string, limit int) (treatmentPage, error) {
	var afterName, afterID *string
	if after != nil {
		afterName, afterID = &after[0], &after[1]
	}
	page := treatmentPage{Treatments: []treatment{}} // an empty menu is [], not null
	var last []string
	err := db.query(ctx, `SELECT `+treatmentColumns+`, lower(name) FROM treatments
		WHERE ($1::boolean IS NULL OR active = $1)
		  AND ($2::text IS NULL OR (lower(name), id) > ($2, $3::uuid))
		ORDER BY lower(name), id LIMIT $4`, []any{active, afterName, afterID, limit + 1},
		func(rows *sql.Rows) error {
			var t treatment
			var sortName string
			if err := rows.Scan(append(t.dest(), &sortName)...); err != nil {
				return err
			}
			if len(page.Treatments) == limit {
				page.Next = last
				return nil
			}
			page.Treatments = append(page.Treatments, t.inUTC())
			last = []string{sortName, t.ID}
			return nil
		})
	if err != nil { // work abandoned at the deadline may still be filling page (see withConn)
		return treatmentPage{}, err
	}
	return page, nil
}

// getTreatment reads one treatment; NOT_FOUND when there is none.
func getTreatment(ctx context.Context, db *database, id string) (treatment, error) {
	var t treatment
	err := db.queryRow(ctx, `SELECT `+treatmentColumns+` FROM treatments WHERE id = $1`, []any{id}, t.dest()...)
	if err != nil {
		return treatment{}, err
	}
	return t.inUTC(), nil
}

// createTreatment stores a new treatment with a fresh id.
func createTreatment(ctx context.Context, db *database, in treatmentInput) (treatment, error) {
	t := treatment{ID: newUUID(), Currency: "VND", Active: true}
	in.apply(&t)
	err := db.withTx(ctx, func(tx statements) error {
		return tx.queryRow(ctx, `INSERT INTO treatments (id, name, description, duration_minutes, price, currency, active)
			VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING `+treatmentColumns,
			[]any{t.ID, t.Name, t.Description, t.DurationMinutes, t.Price, t.Currency, t.Active}, t.dest()...)
	})
	if err != nil {
		return treatment{}, err
	}
	return t.inUTC(), nil
}

// updateTreatment changes the fields of in, provided the treatment is still
// the version whose ETag the client names in If-Match (see lockTreatment).
func updateTreatment(ctx context.Context, db *database, id string, in treatmentInput, check func(etag string) error) (treatment, error) {
	var t treatment
	err := db.withTx(ctx, func(tx statements) error {
		var err error
		if t, err = lockTreatment(ctx, tx, id, check); err != nil {
			return err
		}
		in.apply(&t)
		return tx.queryRow(ctx, `UPDATE treatments SET name = $2, description = $3, duration_minutes = $4,
			price = $5, currency = $6, active = $7 WHERE id = $1 RETURNING `+treatmentColumns,
			[]any{id, t.Name, t.Description, t.DurationMinutes, t.Price, t.Currency, t.Active}, t.dest()...)
	})
	if err != nil {
		return treatment{}, err
	}
	return t.inUTC(), nil
}

// deleteTreatment removes a treatment, under the same If-Match rule.
func deleteTreatment(ctx context.Context, db *database, id string, check func(etag string) error) error {
	return db.withTx(ctx, func(tx statements) error {
		if _, err := lockTreatment(ctx, tx, id, check); err != nil {
			return err
		}
		_, err := tx.exec(ctx, `DELETE FROM treatments WHERE id = $1`, id)
		return err
	})
}

// lockTreatment reads a treatment for a write and locks its row until the
// transaction ends, then asks check (If-Match) whether the client's version
// is still current: two receptionists cannot both change the version they
// read.
func lockTreatment(ctx context.Context, tx statements, id string, check func(etag string) error) (treatment, error) {
	var t treatment
	err := tx.queryRow(ctx, `SELECT `+treatmentColumns+` FROM treatments WHERE id = $1 FOR UPDATE`, []any{id}, t.dest()...)
	if err != nil {
		return t, err
	}
	return t, check(etag(t.inUTC()))
}

// handleListTreatments answers GET /api/v1/treatments?limit=&cursor=&active=.
func (s *server) handleListTreatments(w http.ResponseWriter, r *http.Request) error {
	q := query(r)
	limit := q.integer("limit", 20, 1, 100)
	active := q.boolean("active")
	list := "treatments active=" + q.get("active") // a cursor serves only the list it came from
	var after []string
	if c := q.get("cursor"); c != "" {
		var ok bool
		after, ok = s.cursors.decode(list, c, 2)
		q.check("cursor", ok, "is not a cursor this list gave out")
	}
	if err := q.err(); err != nil {
		return err
	}
	page, err := listTreatments(r.Context(), s.db, active, after, limit)
	if err != nil {
		return err
	}
	var next *string
	if page.Next != nil {
		c := s.cursors.encode(list, page.Next)
		next = &c
	}
	writeJSON(w, http.StatusOK, successEnvelope{Status: "success", Data: page.Treatments,
		Pagination: &pagination{Limit: limit, NextCursor: next}})
	return nil
}

// handleGetTreatment answers GET /api/v1/treatments/{id}, through the cache.
func (s *server) handleGetTreatment(w http.ResponseWriter, r *http.Request) error {
	id, err := pathUUID(r, "id")
	if err != nil {
		return err
	}
	t, err := readThrough(r.Context(), s.cache, treatmentKey(id), func(ctx context.Context) (treatment, error) {
		return getTreatment(ctx, s.db, id)
	})
	if err != nil {
		return err
	}
	tag := etag(t)
	w.Header().Set("ETag", tag)
	if notModified(r, tag) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	writeSuccess(w, http.StatusOK, t, "")
	return nil
}

// handleCreateTreatment answers POST /api/v1/treatments.
func (s *server) handleCreateTreatment(w http.ResponseWriter, r *http.Request) error {
	in, err := readTreatmentInput(r, false)
	if err != nil {
		return err
	}
	t, err := createTreatment(r.Context(), s.db, in)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/api/v1/treatments/"+t.ID)
	w.Header().Set("ETag", etag(t))
	writeSuccess(w, http.StatusCreated, t, "")
	return nil
}

// handleUpdateTreatment answers PATCH /api/v1/treatments/{id}.
func (s *server) handleUpdateTreatment(w http.ResponseWriter, r *http.Request) error {
	id, err := pathUUID(r, "id")
	if err != nil {
		return err
	}
	in, err := readTreatmentInput(r, true)
	if err != nil {
		return err
	}
	t, err := updateTreatment(r.Context(), s.db, id, in, func(tag string) error { return checkIfMatch(r, tag) })
	if err != nil {
		return err
	}
	s.cache.invalidate(r.Context(), treatmentKey(id))
	w.Header().Set("ETag", etag(t))
	writeSuccess(w, http.StatusOK, t, "")
	return nil
}

// handleDeleteTreatment answers DELETE /api/v1/treatments/{id}.
func (s *server) handleDeleteTreatment(w http.ResponseWriter, r *http.Request) error {
	id, err := pathUUID(r, "id")
	if err != nil {
		return err
	}
	if err := deleteTreatment(r.Context(), s.db, id, func(tag string) error { return checkIfMatch(r, tag) }); err != nil {
		return err
	}
	s.cache.invalidate(r.Context(), treatmentKey(id))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The treatment menu through HTTP, against a migrated database of its own
// and the shared Redis; and the kit it stands on, where HTTP cannot reach.

// menu is a server of the treatment menu under test.
type menu struct {
	s       *server
	url     string // the routes' base, .../api/v1/treatments
	logs    *syncBuffer
	manager string // an access token that may change the menu
}

// newMenu serves the menu from a freshly migrated database, with a Supabase
// project of its own; kv goes to testConfig. DB_ECHO is on, so that tests
// can count the statements.
func newMenu(t testing.TB, kv ...string) *menu {
	t.Helper()
	return newMenuOn(t, newMigratedDatabase(t), newProject(t), kv...)
}

// newMenuOn serves the menu from an already migrated database.
func newMenuOn(t testing.TB, dbURL string, p *project, kv ...string) *menu {
	t.Helper()
	s, logs := newTestServer(t, testConfig(t, dbURL, slices.Concat([]string{"DB_ECHO=true"}, p.env(), kv)...))
	ts := startTestServer(t, s)
	return &menu{s: s, url: ts.URL + "/api/v1/treatments", logs: logs, manager: p.token(t, algES256, p.manager())}
}

// hdr is the header of a write: JSON, the manager's token, and kv as pairs.
func (m *menu) hdr(kv ...string) http.Header {
	h := jsonHeader(kv...)
	h.Set("Authorization", "Bearer "+m.manager)
	return h
}

// statements counts the SQL statements the server has logged so far.
func (m *menu) statements() int { return strings.Count(m.logs.String(), "msg=sql ") }

// jsonHeader is the Content-Type of a JSON request, plus kv as header pairs.
func jsonHeader(kv ...string) http.Header {
	h := http.Header{"Content-Type": {"application/json"}}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// create POSTs body and returns the created treatment, failing the test
// unless it answers 201.
func (m *menu) create(t testing.TB, body string) treatment {
	t.Helper()
	status, h, b := do(t, http.MethodPost, m.url, m.hdr(), strings.NewReader(body))
	if status != http.StatusCreated {
		t.Fatalf("POST %s = %d %s, want 201", body, status, b)
	}
	tr := dataOf[treatment](t, "POST", b)
	if h.Get("Location") != "/api/v1/treatments/"+tr.ID || h.Get("ETag") != etag(tr) {
		t.Errorf("POST headers Location %q ETag %q, want /api/v1/treatments/%s and %s", h.Get("Location"), h.Get("ETag"), tr.ID, etag(tr))
	}
	return tr
}

// dataOf decodes the data of a success envelope.
func dataOf[T any](t testing.TB, what string, body []byte) T {
	t.Helper()
	var env struct {
		Status string `json:"status"`
		Data   T      `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.Status != "success" {
		t.Fatalf("%s body = %s, want a success envelope (%v)", what, body, err)
	}
	return env.Data
}

// wantProblems checks a 422 (or 409) and the fields its details name.
func wantProblems(t testing.TB, what string, status int, h http.Header, body []byte, wantStatus int, code errorCode, fields ...string) {
	t.Helper()
	if status != wantStatus {
		t.Fatalf("%s = %d %s, want %d", what, status, body, wantStatus)
	}
	m := wantErrorEnvelope(t, what, h, body, code)
	details, _ := m["error"].(map[string]any)["details"].([]any)
	var got []string
	for _, d := range details {
		p, _ := d.(map[string]any)
		if msg, _ := p["message"].(string); msg == "" {
			t.Errorf("%s: a problem without a message: %s", what, body)
		}
		got = append(got, fmt.Sprint(p["field"]))
	}
	for _, f := range fields {
		if !slices.Contains(got, f) {
			t.Errorf("%s problems name the fields %q, want %q among them: %s", what, got, f, body)
		}
	}
}

func TestTreatmentsCRUD(t *testing.T) {
	t.Parallel()
	m := newMenu(t)
	const name = "Massage đá nóng 90 phút"

	created := m.create(t, `{"name":"  `+name+` ","duration_minutes":90,"price":650000,"description":"Đá bazan ấm"}`)
	if created.Name != name || created.Currency != "VND" || !created.Active || created.Description != "Đá bazan ấm" ||
		created.DurationMinutes != 90 || created.Price != 650000 || created.CreatedAt.IsZero() || !created.CreatedAt.Equal(created.UpdatedAt) {
		t.Errorf("created = %+v, want the name trimmed, the defaults VND and active, the times set", created)
	}
	if _, ok := parseUUID(created.ID); !ok {
		t.Errorf("created id = %q, want a UUID", created.ID)
	}

	// GET: the same treatment, byte for byte the Unicode that was sent, an ETag.
	status, h, body := get(t, m.url, "/"+created.ID)
	if status != http.StatusOK || !bytes.Contains(body, []byte(`"name":"`+name+`"`)) {
		t.Fatalf("GET = %d %s, want 200 with the name as sent", status, body)
	}
	if got := dataOf[treatment](t, "GET", body); got != created {
		t.Errorf("GET = %+v, want %+v", got, created)
	}
	tag := h.Get("ETag")
	if tag != etag(created) || !strings.HasPrefix(tag, `"`) {
		t.Errorf("GET ETag = %q, want the strong tag %s", tag, etag(created))
	}
	for _, inm := range []string{tag, "W/" + tag, `"other", ` + tag, "*"} {
		status, h, body := do(t, http.MethodGet, m.url+"/"+created.ID, http.Header{"If-None-Match": {inm}}, nil)
		if status != http.StatusNotModified || len(body) != 0 || h.Get("ETag") != tag {
			t.Errorf("GET with If-None-Match %s = %d %q ETag %q, want 304, no body, the ETag", inm, status, body, h.Get("ETag"))
		}
	}
	if status, _, _ := do(t, http.MethodGet, m.url+"/"+created.ID, http.Header{"If-None-Match": {`"stale"`}}, nil); status != http.StatusOK {
		t.Errorf("GET with a stale If-None-Match = %d, want 200", status)
	}

	// PATCH: only what is sent changes; a stale If-Match changes nothing.
	status, h, body = do(t, http.MethodPatch, m.url+"/"+created.ID, m.hdr("If-Match", tag), strings.NewReader(`{"price":700000,"active":false}`))
	if status != http.StatusOK {
		t.Fatalf("PATCH = %d %s, want 200", status, body)
	}
	patched := dataOf[treatment](t, "PATCH", body)
	if patched.Price != 700000 || patched.Active || patched.Name != name || patched.DurationMinutes != 90 || !patched.UpdatedAt.After(created.UpdatedAt) {
		t.Errorf("patched = %+v, want price 700000 and inactive, the rest kept, updated_at later", patched)
	}
	if h.Get("ETag") != etag(patched) || h.Get("ETag") == tag {
		t.Errorf("PATCH ETag = %q, want the new version's %s", h.Get("ETag"), etag(patched))
	}
	status, h, body = do(t, http.MethodPatch, m.url+"/"+created.ID, m.hdr("If-Match", tag), strings.NewReader(`{"price":1}`))
	if status != http.StatusPreconditionFailed {
		t.Fatalf("PATCH with the stale ETag = %d %s, want 412", status, body)
	}
	wantErrorEnvelope(t, "PATCH with the stale ETag", h, body, codePreconditionFailed)
	if _, _, body := get(t, m.url, "/"+created.ID); dataOf[treatment](t, "GET", body) != patched {
		t.Errorf("after the refused PATCH, GET = %s, want %+v", body, patched)
	}

	// DELETE: a stale If-Match is refused, a current one or none deletes.
	if status, _, body := do(t, http.MethodDelete, m.url+"/"+created.ID, m.hdr("If-Match", tag), nil); status != http.StatusPreconditionFailed {
		t.Errorf("DELETE with the stale ETag = %d %s, want 412", status, body)
	}
	if status, _, body := do(t, http.MethodDelete, m.url+"/"+created.ID, m.hdr("If-Match", etag(patched)), nil); status != http.StatusNoContent || len(body) != 0 {
		t.Errorf("DELETE = %d %q, want 204 and no body", status, body)
	}
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		status, h, body := do(t, method, m.url+"/"+created.ID, m.hdr(), nil)
		if status != http.StatusNotFound {
			t.Fatalf("%s after DELETE = %d %s, want 404", method, status, body)
		}
		wantErrorEnvelope(t, method+" after DELETE", h, body, codeNotFound)
	}
	status, h, body = do(t, http.MethodPatch, m.url+"/"+created.ID, m.hdr(), strings.NewReader(`{"price":1}`))
	if status != http.StatusNotFound {
		t.Errorf("PATCH after DELETE = %d %s, want 404", status, body)
	}
	wantErrorEnvelope(t, "PATCH after DELETE", h, body, codeNotFound)
	second := m.create(t, `{"name":"Gội đầu dưỡng sinh","duration_minutes":45,"price":200000,"currency":"USD","active":false}`)
	if second.Currency != "USD" || second.Active {
		t.Errorf("created = %+v, want currency USD and inactive as sent", second)
	}
	if status, _, body := do(t, http.MethodDelete, m.url+"/"+second.ID, m.hdr(), nil); status != http.StatusNoContent {
		t.Errorf("DELETE without If-Match = %d %s, want 204", status, body)
	}
}

func TestTreatmentsConflict(t *testing.T) {
	t.Parallel()
	m := newMenu(t)
	first := m.create(t, `{"name":"Xông hơi","duration_minutes":30,"price":100000}`)
	other := m.create(t, `{"name":"Tắm khoáng","duration_minutes":30,"price":100000}`)
	for _, tc := range []struct{ method, target, body string }{
		{http.MethodPost, m.url, `{"name":"XÔNG HƠI","duration_minutes":30,"price":1}`},
		{http.MethodPatch, m.url + "/" + other.ID, `{"name":"xông hơi"}`},
	} {
		status, h, body := do(t, tc.method, tc.target, m.hdr(), strings.NewReader(tc.body))
		wantProblems(t, tc.method+" a name that exists in another case", status, h, body, http.StatusConflict, codeConflict, "name")
		if bytes.Contains(body, []byte("treatments_name_key")) || bytes.Contains(body, []byte("lower(")) {
			t.Errorf("%s answer names the constraint: %s", tc.method, body)
		}
	}
	_ = first

	// Two POSTs at once, the names differing only in case: one of each.
	var wg sync.WaitGroup
	start := make(chan struct{})
	statuses := make([]int, 2)
	for i, name := range []string{"Hot Stone", "hot stone"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, m.url, strings.NewReader(`{"name":"`+name+`","duration_minutes":60,"price":1}`))
			req.Header = m.hdr()
			<-start
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("POST %s: %v", name, err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses[i] = resp.StatusCode
		}()
	}
	close(start)
	wg.Wait()
	if !(statuses[0] == 201 && statuses[1] == 409 || statuses[0] == 409 && statuses[1] == 201) {
		t.Errorf("two concurrent POSTs differing in case = %v, want one 201 and one 409", statuses)
	}
}

func TestTreatmentsBadInput(t *testing.T) {
	t.Parallel()
	m := newMenu(t)
	existing := m.create(t, `{"name":"Chăm sóc da","duration_minutes":60,"price":300000}`)
	const valid = `"name":"Spa","duration_minutes":60,"price":1`
	tests := []struct {
		name, method, body, contentType string
		status                          int
		code                            errorCode
		fields                          []string
	}{
		{"wrong content type", "POST", `{` + valid + `}`, "text/plain", 415, codeUnsupportedMedia, nil},
		{"no content type", "POST", `{` + valid + `}`, "", 415, codeUnsupportedMedia, nil},
		{"json with a charset", "POST", `{"name":"Spa charset","duration_minutes":60,"price":1}`, "application/json; charset=utf-8", 201, "", nil},
		{"empty body", "POST", ``, "", 422, codeValidation, []string{""}},
		{"not JSON", "POST", `{name: 1}`, "", 422, codeValidation, []string{""}},
		{"trailing garbage", "POST", `{` + valid + `} x`, "", 422, codeValidation, []string{""}},
		{"two values", "POST", `{` + valid + `}{}`, "", 422, codeValidation, []string{""}},
		{"an array", "POST", `[{` + valid + `}]`, "", 422, codeValidation, []string{""}},
		{"unknown field", "POST", `{` + valid + `,"colour":"red"}`, "", 422, codeValidation, []string{""}},
		{"a field twice", "POST", `{` + valid + `,"price":2}`, "", 422, codeValidation, []string{""}},
		{"missing fields", "POST", `{}`, "", 422, codeValidation, []string{"name", "duration_minutes", "price"}},
		{"null", "POST", `{"name":null,"duration_minutes":60,"price":1,"active":null}`, "", 422, codeValidation, []string{"name", "active"}},
		{"wrong types", "POST", `{"name":1,"duration_minutes":"60","price":true,"active":"yes","currency":7}`, "", 422, codeValidation,
			[]string{"name", "duration_minutes", "price", "active", "currency"}},
		{"a fraction of a minute", "POST", `{"name":"Spa","duration_minutes":1.5,"price":1}`, "", 422, codeValidation, []string{"duration_minutes"}},
		{"an exponent", "POST", `{"name":"Spa","duration_minutes":6e1,"price":1}`, "", 422, codeValidation, []string{"duration_minutes"}},
		{"a number beyond 64 bits", "POST", `{"name":"Spa","duration_minutes":60,"price":99999999999999999999999}`, "", 422, codeValidation, []string{"price"}},
		{"a long number", "POST", `{"name":"Spa","duration_minutes":60,"price":` + strings.Repeat("9", 500<<10) + `}`, "", 422, codeValidation, []string{"price"}},
		{"a 10 MB number", "POST", `{"name":"Spa","duration_minutes":60,"price":` + strings.Repeat("9", 10<<20) + `}`, "", 413, codePayloadTooLarge, nil},
		{"NUL in a string", "POST", `{"name":"Spa\u0000x","duration_minutes":60,"price":1}`, "", 422, codeValidation, []string{"name"}},
		{"NUL in the description", "POST", `{"name":"Spa","description":"a\u0000","duration_minutes":60,"price":1}`, "", 422, codeValidation, []string{"description"}},
		{"a line break in the name", "POST", `{"name":"Spa\nSpa","duration_minutes":60,"price":1}`, "", 422, codeValidation, []string{"name"}},
		{"a zero-width space in the name", "POST", `{"name":"Spa\u200b","duration_minutes":60,"price":1}`, "", 422, codeValidation, []string{"name"}},
		{"a byte-order mark in the name", "POST", `{"name":"\ufeffSpa","duration_minutes":60,"price":1}`, "", 422, codeValidation, []string{"name"}},
		{"a lone surrogate", "POST", `{"name":"Spa \ud800","duration_minutes":60,"price":1}`, "", 422, codeValidation, []string{"name"}},
		{"a real U+FFFD", "POST", `{"name":"Spa \ufffd �","duration_minutes":60,"price":1}`, "", 201, "", nil},
		{"not UTF-8", "POST", "{\"name\":\"Spa \xff\",\"duration_minutes\":60,\"price\":1}", "", 422, codeValidation, []string{""}},
		{"rules", "POST", `{"name":"   ","description":"` + strings.Repeat("d", 2001) + `","duration_minutes":7,"price":-1,"currency":"vnd"}`, "", 422, codeValidation,
			[]string{"name", "description", "duration_minutes", "price", "currency"}},
		{"name too long", "POST", `{"name":"` + strings.Repeat("ắ", 121) + `","duration_minutes":480,"price":0}`, "", 422, codeValidation, []string{"name"}},
		{"name at the limit", "POST", `{"name":"` + strings.Repeat("ắ", 120) + `","duration_minutes":480,"price":0}`, "", 201, "", nil},
		{"duration too long", "POST", `{"name":"Long","duration_minutes":485,"price":0}`, "", 422, codeValidation, []string{"duration_minutes"}},
		{"patch nothing", "PATCH", `{}`, "", 422, codeValidation, []string{""}},
		{"patch null", "PATCH", `{"description":null}`, "", 422, codeValidation, []string{"description"}},
		{"patch a bad field", "PATCH", `{"duration_minutes":0}`, "", 422, codeValidation, []string{"duration_minutes"}},
		{"patch a text body", "PATCH", `{"price":2}`, "text/plain", 415, codeUnsupportedMedia, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			target := m.url
			if tc.method == "PATCH" {
				target += "/" + existing.ID
			}
			h := m.hdr()
			switch {
			case tc.contentType != "":
				h.Set("Content-Type", tc.contentType)
			case strings.HasPrefix(tc.name, "no content type"):
				h.Del("Content-Type")
			}
			status, rh, body := do(t, tc.method, target, h, strings.NewReader(tc.body))
			if status >= 500 {
				t.Fatalf("%s = %d %s, never a 5xx", tc.name, status, body)
			}
			if tc.code == "" {
				if status != tc.status {
					t.Errorf("%s = %d %s, want %d", tc.name, status, body, tc.status)
				}
				return
			}
			wantProblems(t, tc.name, status, rh, body, tc.status, tc.code, tc.fields...)
			// Nothing of the input comes back, and no Go type or decoder words.
			for _, leak := range []string{"colour", "99999", "ddddd", "int64", "float64", "unmarshal", "json:", "struct", "Go value", `\u0000`} {
				if bytes.Contains(body, []byte(leak)) {
					t.Errorf("%s answer holds %q: %s", tc.name, leak, body)
				}
			}
		})
	}
	if _, _, body := get(t, m.url, "/"+existing.ID); dataOf[treatment](t, "GET", body) != existing {
		t.Errorf("after the refused writes, GET = %s, want %+v unchanged", body, existing)
	}
}

func TestTreatmentsBadParameters(t *testing.T) {
	t.Parallel()
	m := newMenu(t)
	for i := range 3 {
		m.create(t, fmt.Sprintf(`{"name":"Liệu trình %d","duration_minutes":60,"price":1,"active":%v}`, i, i != 1))
	}
	_, _, body := get(t, m.url, "?limit=1")
	var page struct {
		Pagination pagination `json:"pagination"`
	}
	mustf(t, json.Unmarshal(body, &page), "decode a page")
	cursor := *page.Pagination.NextCursor
	tampered := []byte(cursor)
	tampered[3] ^= 1
	for _, tc := range []struct {
		query string
		field string
	}{
		{"?limit=0", "limit"}, {"?limit=101", "limit"}, {"?limit=ten", "limit"}, {"?limit=1&limit=2", "limit"},
		{"?active=maybe", "active"}, {"?active=TRUE", "active"},
		{"?cursor=nonsense", "cursor"}, {"?cursor=" + string(tampered), "cursor"},
		{"?cursor=" + cursor[:len(cursor)-2], "cursor"},
		{"?cursor=" + cursor + "&active=true", "cursor"}, // a cursor of another filter
		{"?limit=0&active=maybe", "active"},
	} {
		status, h, body := get(t, m.url, tc.query)
		wantProblems(t, "GET "+tc.query, status, h, body, http.StatusUnprocessableEntity, codeValidation, tc.field)
	}
	for _, path := range []string{"/not-a-uuid", "/123", "/" + strings.Repeat("a", 36), "/00000000-0000-0000-0000-00000000000g"} {
		for _, method := range []string{http.MethodGet, http.MethodPatch, http.MethodDelete} {
			status, h, body := do(t, method, m.url+path, m.hdr(), strings.NewReader(`{"price":1}`))
			wantProblems(t, method+" "+path, status, h, body, http.StatusUnprocessableEntity, codeValidation, "id")
		}
	}
	upper := strings.ToUpper(newUUID())
	if status, _, body := get(t, m.url, "/"+upper); status != http.StatusNotFound {
		t.Errorf("GET an upper-case UUID that does not exist = %d %s, want 404", status, body)
	}
}

// TestTreatmentsPagination walks 1,000 treatments in pages of 37 while
// other rows come and go: every row there for the whole walk comes exactly
// once, in the menu's order.
func TestTreatmentsPagination(t *testing.T) {
	t.Parallel()
	m := newMenu(t, "DB_ECHO=false")
	ctx := context.Background()
	_, err := m.s.db.exec(ctx, `INSERT INTO treatments (id, name, duration_minutes, price)
		SELECT gen_random_uuid(), CASE WHEN g % 3 = 0 THEN 'SPA ' ELSE 'spa ' END || to_char(g, 'FM0000') || ' ' || md5(g::text), 60, g
		FROM generate_series(1, 1000) g`)
	mustf(t, err, "insert 1,000 treatments")
	var order []string
	mustf(t, m.s.db.query(ctx, `SELECT id FROM treatments ORDER BY lower(name), id`, nil, func(rows *sql.Rows) error {
		var id string
		err := rows.Scan(&id)
		order = append(order, id)
		return err
	}), "read the order")
	before := map[string]bool{}
	for _, id := range order {
		before[id] = true
	}

	// Churn: rows of its own inserted and deleted all through the walk.
	stop := make(chan struct{})
	churned := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				churned <- n
				return
			default:
			}
			name := fmt.Sprintf("spa %04d churn %d", n%1000, n)
			var id string
			if err := m.s.db.queryRow(ctx, `INSERT INTO treatments (id, name, duration_minutes, price) VALUES (gen_random_uuid(), $1, 60, 1) RETURNING id`,
				[]any{name}, &id); err != nil {
				t.Errorf("churn insert: %v", err)
			}
			if n%2 == 1 {
				if _, err := m.s.db.exec(ctx, `DELETE FROM treatments WHERE id = $1`, id); err != nil {
					t.Errorf("churn delete: %v", err)
				}
			}
			n++
		}
	}()

	var walked []string
	cursor, pages := "", 0
	for {
		q := "?limit=37"
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		status, _, body := get(t, m.url, q)
		if status != http.StatusOK {
			t.Fatalf("GET %s = %d %s", q, status, body)
		}
		var page struct {
			Data       []treatment `json:"data"`
			Pagination pagination  `json:"pagination"`
		}
		mustf(t, json.Unmarshal(body, &page), "decode page %d", pages)
		if page.Pagination.Limit != 37 || len(page.Data) > 37 {
			t.Fatalf("page %d: limit %d, %d rows; want 37 at most", pages, page.Pagination.Limit, len(page.Data))
		}
		pages++
		for _, tr := range page.Data {
			walked = append(walked, tr.ID)
		}
		if page.Pagination.NextCursor == nil {
			break
		}
		cursor = *page.Pagination.NextCursor
		if pages > 200 {
			t.Fatalf("more than 200 pages: the walk does not end")
		}
	}
	close(stop)
	n := <-churned

	seen := map[string]int{}
	var kept []string
	for _, id := range walked {
		seen[id]++
		if before[id] {
			kept = append(kept, id)
		}
	}
	for id := range before {
		if seen[id] != 1 {
			t.Errorf("row %s came %d times, want once", id, seen[id])
		}
	}
	if strings.Join(kept, ",") != strings.Join(order, ",") {
		t.Errorf("the walk's rows are not in the menu's order (lower(name), id)")
	}
	t.Logf("%d pages, %d rows walked, %d rows churned meanwhile", pages, len(walked), n)
}

// TestTreatmentsCache: a cache hit costs no database statement, a write on
// one instance is seen at once on another sharing Redis, and an entry of
// another shape is a miss.
func TestTreatmentsCache(t *testing.T) {
	t.Parallel()
	dbURL, p := newMigratedDatabase(t), newProject(t)
	a, b := newMenuOn(t, dbURL, p), newMenuOn(t, dbURL, p)
	tr := a.create(t, `{"name":"Ngâm chân thảo dược","duration_minutes":30,"price":120000}`)

	get(t, b.url, "/"+tr.ID) // fills the cache
	before := b.statements()
	for range 5 {
		if status, _, body := get(t, b.url, "/"+tr.ID); status != http.StatusOK || dataOf[treatment](t, "GET", body) != tr {
			t.Fatalf("cached GET = %d %s, want 200 %+v", status, body, tr)
		}
	}
	if got := b.statements() - before; got != 0 {
		t.Errorf("5 cached GETs ran %d SQL statements, want 0", got)
	}

	// A write on a, a read on b: the new data, at once.
	status, _, body := do(t, http.MethodPatch, a.url+"/"+tr.ID, a.hdr(), strings.NewReader(`{"price":150000}`))
	if status != http.StatusOK {
		t.Fatalf("PATCH = %d %s", status, body)
	}
	if _, _, body := get(t, b.url, "/"+tr.ID); dataOf[treatment](t, "GET", body).Price != 150000 {
		t.Errorf("GET on the other instance after PATCH = %s, want price 150000", body)
	}
	if status, _, _ := do(t, http.MethodDelete, a.url+"/"+tr.ID, a.hdr(), nil); status != http.StatusNoContent {
		t.Fatalf("DELETE = %d", status)
	}
	if status, _, body := get(t, b.url, "/"+tr.ID); status != http.StatusNotFound {
		t.Errorf("GET on the other instance after DELETE = %d %s, want 404", status, body)
	}

	// An entry written by a build with another shape is not served.
	ctx := context.Background()
	other := a.create(t, `{"name":"Tẩy tế bào chết","duration_minutes":45,"price":90000}`)
	entry, _ := json.Marshal(map[string]any{"shape": "an-older-build", "value": map[string]any{"id": other.ID, "name": "stale"}})
	if _, err := a.s.cache.do(ctx, "SET", treatmentKey(other.ID), entry, "PX", 60000); err != nil {
		t.Fatalf("SET an old entry: %v", err)
	}
	if _, _, body := get(t, b.url, "/"+other.ID); dataOf[treatment](t, "GET", body) != other {
		t.Errorf("GET with an entry of another shape = %s, want the row %+v", body, other)
	}
}

// TestReadThroughTombstone: a reader that loaded the old row before a write
// does not store it after the write's invalidation.
func TestReadThroughTombstone(t *testing.T) {
	t.Parallel()
	requireRedis(t)
	c, _ := newTestCache(t, "CACHE_TTL=60s", "REQUEST_TIMEOUT=2s")
	ctx := context.Background()
	key := testKeyPrefix(t) + "tombstone"
	loaded, release := make(chan struct{}), make(chan struct{})
	done := make(chan string)
	go func() {
		v, err := readThrough(ctx, c, key, func(context.Context) (string, error) {
			close(loaded)
			<-release // the write commits and invalidates meanwhile
			return "old", nil
		})
		if err != nil {
			t.Errorf("readThrough: %v", err)
		}
		done <- v
	}()
	<-loaded
	c.invalidate(ctx, key)
	close(release)
	if v := <-done; v != "old" {
		t.Errorf("the slow reader got %q, want what it loaded", v)
	}
	v, err := readThrough(ctx, c, key, func(context.Context) (string, error) { return "new", nil })
	if err != nil || v != "new" {
		t.Errorf("readThrough after the write = %q, %v; want new from the database, not the old value", v, err)
	}
	var calls atomic.Int32
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = readThrough(ctx, c, key+":shared", func(context.Context) (string, error) {
				calls.Add(1)
				time.Sleep(100 * time.Millisecond)
				return "v", nil
			})
		}()
	}
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("10 concurrent misses of one key ran %d loads, want 1", n)
	}
}

// TestTransactions: withTx rolls back on a panic (which goes on), retries a
// serialization failure and a real deadlock, and commits each once.
func TestTransactions(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, newTestDatabase(t)))
	ctx := context.Background()
	_, err := s.db.exec(ctx, "CREATE TABLE tx_check (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
	mustf(t, err, "create table")
	_, err = s.db.exec(ctx, "INSERT INTO tx_check (id) VALUES (1), (2)")
	mustf(t, err, "insert rows")

	// A panic inside: rolled back, 500 through the server, pool healthy after.
	mux := http.NewServeMux()
	mux.Handle("POST /panic", s.api(func(w http.ResponseWriter, r *http.Request) error {
		return s.db.withTx(r.Context(), func(tx statements) error {
			if _, err := tx.exec(r.Context(), "INSERT INTO tx_check (id) VALUES (99)"); err != nil {
				return err
			}
			panic("boom inside a transaction")
		})
	}))
	ts := httptest.NewServer(s.chain(mux))
	t.Cleanup(ts.Close)
	status, h, body := do(t, http.MethodPost, ts.URL+"/panic", nil, nil)
	if status != http.StatusInternalServerError {
		t.Errorf("POST /panic = %d %s, want 500", status, body)
	}
	wantErrorEnvelope(t, "POST /panic", h, body, codeInternal)
	var n int
	mustf(t, s.db.queryRow(ctx, "SELECT count(*) FROM tx_check WHERE id = 99", nil, &n), "count")
	if n != 0 {
		t.Errorf("the panicking transaction's row is there: it was not rolled back")
	}
	if !waitFor(2*time.Second, func() bool { return s.db.pool.Stats().InUse == 0 }) {
		t.Errorf("pool in use = %d after the panic, want 0", s.db.pool.Stats().InUse)
	}

	// A serialization failure on the first run: the whole function again.
	runs := 0
	err = s.db.withTx(ctx, func(tx statements) error {
		runs++
		if _, err := tx.exec(ctx, "UPDATE tx_check SET n = n + 1 WHERE id = 1"); err != nil {
			return err
		}
		if runs == 1 {
			_, err := tx.exec(ctx, "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = 'serialization_failure'; END $$")
			return err
		}
		return nil
	})
	mustf(t, err, "withTx with a forced serialization failure")
	mustf(t, s.db.queryRow(ctx, "SELECT n FROM tx_check WHERE id = 1", nil, &n), "read n")
	if runs != 2 || n != 1 {
		t.Errorf("after a serialization failure: %d runs, n = %d; want 2 runs and the update committed once", runs, n)
	}

	// A deadlock: two transactions lock the rows in opposite orders.
	var wg sync.WaitGroup
	var attempts atomic.Int32
	locked := make(chan struct{}, 2)
	for i, order := range [][2]int{{1, 2}, {2, 1}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first := true
			err := s.db.withTx(ctx, func(tx statements) error {
				attempts.Add(1)
				if _, err := tx.exec(ctx, "UPDATE tx_check SET n = n + 10 WHERE id = $1", order[0]); err != nil {
					return err
				}
				if first { // both hold their first row before either asks for its second
					first = false
					locked <- struct{}{}
					for len(locked) < 2 && !t.Failed() {
						time.Sleep(5 * time.Millisecond)
					}
				}
				_, err := tx.exec(ctx, "UPDATE tx_check SET n = n + 10 WHERE id = $1", order[1])
				return err
			})
			if err != nil {
				t.Errorf("transaction %d: %v, want it committed after the deadlock", i, err)
			}
		}()
	}
	wg.Wait()
	var sum int
	mustf(t, s.db.queryRow(ctx, "SELECT sum(n) FROM tx_check", nil, &sum), "sum")
	if sum != 1+40 || attempts.Load() < 3 {
		t.Errorf("after the deadlock: sum %d over %d attempts, want 41 (both committed once) and a retry", sum, attempts.Load())
	}
}

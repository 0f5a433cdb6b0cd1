package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// The treatment routes in TestOpenAPILiveResponsesMatchDocument. A body-less
// request to each, as the generic loop sends, reaches few of their answers,
// so each server also gets a flow of real requests: treatmentsFlow where the
// database is up, treatmentsWithoutDatabase where it is not. Every answer is
// checked against the document like any other, and against what the flow
// expects of it. Only a manager may write: the flows send a manager's token
// on every write, and meet the refusals of docs_auth_test.go on the way.
// The next module adds its own flow beside these.

// liveCaller sends requests to one server of the live test and checks each
// answer against the document's operation for it.
type liveCaller struct {
	t       *testing.T
	c       schemaChecker
	doc     map[string]any
	base    string
	server  string
	seen    map[string]bool // "GET /api/v1/treatments/{id} 304", shared by all servers
	p       *project        // the server's Supabase project; nil when it has no SUPABASE_URL
	manager string          // an access token of p's that may change the menu
	// unavailable is the code the flow's 503s carry: DATABASE_ERROR unless
	// the flow says that its server cannot check tokens.
	unavailable errorCode
}

// answer is one checked response; body is its JSON object, nil when none.
type answer struct {
	status int
	header http.Header
	body   map[string]any
}

// data is the answer's data member, as an object.
func (a answer) data() map[string]any { return asMap(a.body["data"]) }

// items is the answer's data member, as a list of objects.
func (a answer) items() []map[string]any {
	var out []map[string]any
	for _, v := range asSlice(a.body["data"]) {
		out = append(out, asMap(v))
	}
	return out
}

// problemFields lists the field of each problem in the error's details.
func (a answer) problemFields() []string {
	fields := []string{}
	for _, d := range asSlice(asMap(a.body["error"])["details"]) {
		f, _ := asMap(d)["field"].(string)
		fields = append(fields, f)
	}
	return fields
}

// errorCodeOf is the code each error status of the flows' routes carries;
// a 503's is the liveCaller's unavailable.
var errorCodeOf = map[int]errorCode{
	http.StatusUnauthorized:         codeUnauthorized,
	http.StatusForbidden:            codeForbidden,
	http.StatusNotFound:             codeNotFound,
	http.StatusConflict:             codeConflict,
	http.StatusPreconditionFailed:   codePreconditionFailed,
	http.StatusUnsupportedMediaType: codeUnsupportedMedia,
	http.StatusUnprocessableEntity:  codeValidation,
}

// call sends operation opID to path (with its query), body as
// application/json unless header names another type, and checks the answer
// against the document, that its status is one of want, and an error's
// envelope and code. A failed request stops the flow: what follows depends
// on it.
func (lc *liveCaller) call(opID, path string, header http.Header, body string, want ...int) answer {
	t := lc.t
	t.Helper()
	o := lc.operation(opID)
	what := fmt.Sprintf("%s: %s %s", lc.server, o.method, path)
	for _, k := range slices.Sorted(maps.Keys(header)) {
		v := strings.Join(header[k], ", ")
		if len(v) > 40 {
			v = v[:37] + "..." // a token's start tells which it is
		}
		what += fmt.Sprintf(" (%s: %s)", k, v)
	}
	if body != "" {
		what += " " + body
		if header.Get("Content-Type") == "" {
			header = header.Clone()
			if header == nil {
				header = http.Header{}
			}
			header.Set("Content-Type", "application/json")
		}
	}
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	status, h, raw := do(t, o.method, lc.base+path, header, r)
	lc.c.checkResponse(t, o, what, status, h, raw)
	lc.seen[fmt.Sprintf("%s %s %d", o.method, o.path, status)] = true
	if !slices.Contains(want, status) {
		t.Fatalf("%s = %d %s, want %v", what, status, raw, want)
	}
	a := answer{status: status, header: h}
	if len(raw) > 0 {
		a.body = objectOf(t, what, raw)
	}
	code, ok := errorCodeOf[status]
	if status == http.StatusServiceUnavailable {
		code, ok = cmp.Or(lc.unavailable, codeDatabase), true
	}
	if ok {
		wantErrorEnvelope(t, what, h, raw, code)
	}
	return a
}

// asManager is h with the manager's token added, for a write.
func (lc *liveCaller) asManager(h http.Header) http.Header {
	h = h.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set("Authorization", "Bearer "+lc.manager)
	return h
}

// operation finds the documented operation opID.
func (lc *liveCaller) operation(opID string) operation {
	lc.t.Helper()
	for _, o := range operations(lc.t, lc.doc) {
		if o.op["operationId"] == opID {
			return o
		}
	}
	lc.t.Fatalf("openapi.json has no operation %s", opID)
	return operation{}
}

// requestExamples are the named examples of a documented request body.
func (lc *liveCaller) requestExamples(body string) map[string]map[string]any {
	rb := asMap(asMap(asMap(lc.doc["components"])["requestBodies"])[body])
	media := asMap(asMap(rb["content"])["application/json"])
	out := map[string]map[string]any{}
	for name, ex := range asMap(media["examples"]) {
		out[name] = asMap(asMap(lc.c.resolve(ex))["value"])
	}
	if len(out) == 0 {
		lc.t.Fatalf("openapi.json: request body %s has no examples", body)
	}
	return out
}

// header is one request header.
func header(name, value string) http.Header { return http.Header{name: {value}} }

// jsonOf is v as JSON text.
func jsonOf(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wantMembers fails unless obj has every member of want, equal.
func wantMembers(t testing.TB, what string, obj, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if !reflect.DeepEqual(obj[k], v) {
			t.Errorf("%s: %s = %#v, want %#v", what, k, obj[k], v)
		}
	}
}

// wantFields fails unless the answer's problems name exactly fields, in order.
func wantFields(t testing.TB, what string, a answer, fields ...string) {
	t.Helper()
	if got := a.problemFields(); !slices.Equal(got, fields) {
		t.Errorf("%s: details name fields %q, want %q", what, got, fields)
	}
}

// stored is a treatment the flow created, as the API last showed it.
type stored struct {
	data map[string]any
	etag string
}

func (s stored) id() string   { return s.data["id"].(string) }
func (s stored) name() string { return s.data["name"].(string) }
func (s stored) path() string { return "/api/v1/treatments/" + s.id() }

// treatmentsFlow walks the treatment routes of a server whose database is
// up: it creates, lists, reads, changes and removes treatments, meeting each
// error answer on the way. It sends the document's request examples as they
// are written, so they must work.
func treatmentsFlow(lc *liveCaller) {
	t := lc.t
	const list = "/api/v1/treatments"

	// Each create example is accepted and answered with its fields, the
	// defaults of the rest, its Location and its ETag.
	examples := lc.requestExamples("TreatmentCreate")
	var created []stored
	for _, name := range slices.Sorted(maps.Keys(examples)) {
		a := lc.call("createTreatment", list, lc.asManager(nil), jsonOf(t, examples[name]), http.StatusCreated)
		want := map[string]any{"description": "", "currency": "VND", "active": true}
		maps.Copy(want, examples[name])
		wantMembers(t, "POST example "+name, a.data(), want)
		s := stored{data: a.data(), etag: a.header.Get("ETag")}
		if got := a.header.Get("Location"); got != s.path() {
			t.Errorf("POST example %s: Location = %q, want %q", name, got, s.path())
		}
		created = append(created, s)
	}
	if len(created) < 2 {
		t.Fatalf("openapi.json has %d create examples; the flow needs two", len(created))
	}
	// The menu's order: by name whatever its case. The examples' names
	// begin with different ASCII letters, so every collation agrees.
	slices.SortFunc(created, func(a, b stored) int {
		return strings.Compare(strings.ToLower(a.name()), strings.ToLower(b.name()))
	})
	first, second := created[0], created[1]

	// What POST refuses.
	a := lc.call("createTreatment", list, lc.asManager(nil),
		jsonOf(t, map[string]any{"name": strings.ToUpper(first.name()), "duration_minutes": 60, "price": 1}), http.StatusConflict)
	wantFields(t, "POST a name taken in another case", a, "name")
	a = lc.call("createTreatment", list, lc.asManager(nil),
		`{"name":" ","duration_minutes":7,"price":-1,"currency":"vnd","colour":"red"}`, http.StatusUnprocessableEntity)
	wantFields(t, "POST a body with five problems", a, "name", "duration_minutes", "price", "currency", "")
	a = lc.call("createTreatment", list, lc.asManager(nil), `[]`, http.StatusUnprocessableEntity)
	wantFields(t, "POST an array", a, "")
	lc.call("createTreatment", list, lc.asManager(header("Content-Type", "text/plain")), jsonOf(t, examples["defaults"]), http.StatusUnsupportedMediaType)

	// Who may not write changes nothing.
	refuseWrites(lc, first.path(), jsonOf(t, examples["defaults"]))
	if a = lc.call("getTreatment", first.path(), nil, "", http.StatusOK); a.header.Get("ETag") != first.etag {
		t.Errorf("%s: GET %s after refused writes has ETag %s, want %s as created", lc.server, first.path(), a.header.Get("ETag"), first.etag)
	}

	// Pages of one walk the menu in order, each cursor leading to the next.
	var walked []string
	var cursor string
	next := list + "?limit=1"
	for range len(created) + 1 {
		a = lc.call("listTreatments", next, nil, "", http.StatusOK)
		for _, item := range a.items() {
			walked = append(walked, item["id"].(string))
		}
		c, ok := asMap(a.body["pagination"])["next_cursor"].(string)
		if !ok {
			break
		}
		cursor, next = c, list+"?limit=1&cursor="+c
	}
	if want := []string{first.id(), second.id()}; !slices.Equal(walked, want) {
		t.Errorf("%s: pages of one list %q, want %q", lc.server, walked, want)
	}
	a = lc.call("listTreatments", list+"?active=false", nil, "", http.StatusOK)
	for _, item := range a.items() {
		if item["active"] != false {
			t.Errorf("%s: GET ?active=false lists %v", lc.server, item)
		}
	}
	a = lc.call("listTreatments", list+"?active=true&cursor="+cursor, nil, "", http.StatusUnprocessableEntity)
	wantFields(t, "GET with the cursor of another filter", a, "cursor")
	a = lc.call("listTreatments", list+"?limit=0&active=maybe", nil, "", http.StatusUnprocessableEntity)
	wantFields(t, "GET with a bad limit and filter", a, "limit", "active")

	// A read answers what the create did, from the database and then from
	// the cache, for the id in either case; If-None-Match makes it a 304.
	for _, s := range created {
		for _, path := range []string{s.path(), s.path(), list + "/" + strings.ToUpper(s.id())} {
			a = lc.call("getTreatment", path, nil, "", http.StatusOK)
			if got := a.header.Get("ETag"); got != s.etag {
				t.Errorf("%s: GET %s ETag = %s, want %s as created", lc.server, path, got, s.etag)
			}
			wantMembers(t, "GET "+path, a.data(), s.data)
		}
		for _, tag := range []string{s.etag, "W/" + s.etag, `"other", ` + s.etag, "*"} {
			a = lc.call("getTreatment", s.path(), header("If-None-Match", tag), "", http.StatusNotModified)
			if got := a.header.Get("ETag"); got != s.etag {
				t.Errorf("%s: GET %s (If-None-Match: %s) = 304 with ETag %s, want %s", lc.server, s.path(), tag, got, s.etag)
			}
		}
		lc.call("getTreatment", s.path(), header("If-None-Match", `"other"`), "", http.StatusOK)
	}
	a = lc.call("getTreatment", list+"/not-a-uuid", nil, "", http.StatusUnprocessableEntity)
	wantFields(t, "GET a bad id", a, "id")
	lc.call("getTreatment", list+"/"+newUUID(), nil, "", http.StatusNotFound)

	// Each update example changes what it names, under If-Match; the tag it
	// replaced is stale at once, and a read sees the change.
	updates := lc.requestExamples("TreatmentUpdate")
	s := second
	for _, name := range slices.Sorted(maps.Keys(updates)) {
		a = lc.call("updateTreatment", s.path(), lc.asManager(header("If-Match", s.etag)), jsonOf(t, updates[name]), http.StatusOK)
		wantMembers(t, "PATCH example "+name, a.data(), updates[name])
		stale := s.etag
		s = stored{data: a.data(), etag: a.header.Get("ETag")}
		if s.etag == stale {
			t.Errorf("%s: PATCH example %s kept the ETag %s", lc.server, name, stale)
		}
		lc.call("updateTreatment", s.path(), lc.asManager(header("If-Match", stale)), jsonOf(t, updates[name]), http.StatusPreconditionFailed)
		a = lc.call("getTreatment", s.path(), nil, "", http.StatusOK)
		if a.header.Get("ETag") != s.etag || !reflect.DeepEqual(a.data(), s.data) {
			t.Errorf("%s: GET after PATCH = %s %v, want %s %v", lc.server, a.header.Get("ETag"), a.data(), s.etag, s.data)
		}
	}
	stale := second.etag

	// What PATCH refuses.
	a = lc.call("updateTreatment", s.path(), lc.asManager(nil), jsonOf(t, map[string]any{"name": first.name()}), http.StatusConflict)
	wantFields(t, "PATCH to a name taken", a, "name")
	a = lc.call("updateTreatment", s.path(), lc.asManager(nil), `{}`, http.StatusUnprocessableEntity)
	wantFields(t, "PATCH nothing", a, "")
	lc.call("updateTreatment", s.path(), lc.asManager(header("Content-Type", "text/plain")), `{"price":1}`, http.StatusUnsupportedMediaType)
	lc.call("updateTreatment", list+"/"+newUUID(), lc.asManager(nil), `{"price":1}`, http.StatusNotFound)
	a = lc.call("updateTreatment", list+"/not-a-uuid", lc.asManager(nil), `{"price":1}`, http.StatusUnprocessableEntity)
	wantFields(t, "PATCH a bad id", a, "id")

	// DELETE under If-Match, then without; then the menu is empty, not null.
	lc.call("deleteTreatment", s.path(), lc.asManager(header("If-Match", stale)), "", http.StatusPreconditionFailed)
	lc.call("deleteTreatment", s.path(), lc.asManager(header("If-Match", s.etag)), "", http.StatusNoContent)
	lc.call("getTreatment", s.path(), nil, "", http.StatusNotFound)
	lc.call("deleteTreatment", s.path(), lc.asManager(nil), "", http.StatusNotFound)
	a = lc.call("deleteTreatment", list+"/not-a-uuid", lc.asManager(nil), "", http.StatusUnprocessableEntity)
	wantFields(t, "DELETE a bad id", a, "id")
	lc.call("deleteTreatment", first.path(), lc.asManager(nil), "", http.StatusNoContent)
	a = lc.call("listTreatments", list, nil, "", http.StatusOK)
	if items, ok := a.body["data"].([]any); !ok || len(items) != 0 {
		t.Errorf("%s: GET %s after deleting all = %v, want data []", lc.server, list, a.body["data"])
	}
}

// treatmentsWithoutDatabase sends each treatment route a request it would
// carry out, to a server whose database is down or stalls past
// REQUEST_TIMEOUT: each answers 503. What is refused before the database is
// asked is answered as ever.
func treatmentsWithoutDatabase(lc *liveCaller) {
	t := lc.t
	const list = "/api/v1/treatments"
	path := list + "/" + newUUID() // never cached, so the database is asked
	create := lc.requestExamples("TreatmentCreate")["defaults"]
	for _, r := range []struct {
		opID, path string
		header     http.Header
		body       string
	}{
		{"listTreatments", list + "?active=true", nil, ""},
		{"createTreatment", list, lc.asManager(nil), jsonOf(t, create)},
		{"updateTreatment", path, lc.asManager(nil), `{"price":1}`},
		{"deleteTreatment", path, lc.asManager(nil), ""},
	} {
		lc.call(r.opID, r.path, r.header, r.body, http.StatusServiceUnavailable)
	}
	lc.call("getTreatment", path, nil, "", http.StatusServiceUnavailable)
	lc.call("createTreatment", list, lc.asManager(header("Content-Type", "text/plain")), jsonOf(t, create), http.StatusUnsupportedMediaType)
	lc.call("listTreatments", list+"?limit=101", nil, "", http.StatusUnprocessableEntity)
	lc.call("updateTreatment", list+"/not-a-uuid", lc.asManager(nil), `{"price":1}`, http.StatusUnprocessableEntity)
	refuseWrites(lc, path, jsonOf(t, create))
}

// refuseWrites sends each of the menu's writes, with a body it would carry
// out, as every caller who may not make it (refusals): a user who is not a
// manager among them. The token is checked first, so the answers are the
// same whether the database is up or not, and whether item exists.
func refuseWrites(lc *liveCaller, item, create string) {
	rs := refusals(lc, lc.p.user(newUUID()))
	lc.refuse("createTreatment", "/api/v1/treatments", create, rs)
	lc.refuse("updateTreatment", item, `{"price":1}`, rs)
	lc.refuse("deleteTreatment", item, "", rs)
}

package main

import (
	"bufio"
	"bytes"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// The OpenAPI document is checked from both sides: against the route table
// the server registers (drift), against itself (its examples), and against
// live answers of every documented route (the schemas).

// loadOpenAPI decodes the embedded document.
func loadOpenAPI(t testing.TB) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	return doc
}

// httpMethods are the operation keys of an OpenAPI path item.
var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// operation is one documented method of one path.
type operation struct {
	method, path string
	op           map[string]any
}

// operations lists every documented operation, sorted by path and method.
func operations(t testing.TB, doc map[string]any) []operation {
	t.Helper()
	var ops []operation
	for path, item := range doc["paths"].(map[string]any) {
		for _, m := range httpMethods {
			if op, ok := item.(map[string]any)[m].(map[string]any); ok {
				ops = append(ops, operation{strings.ToUpper(m), path, op})
			}
		}
	}
	sort.Slice(ops, func(i, j int) bool {
		return ops[i].path+" "+ops[i].method < ops[j].path+" "+ops[j].method
	})
	return ops
}

// patternRoute turns a route pattern ("GET /{$}") into the method and the
// OpenAPI path it serves ("GET", "/").
func patternRoute(t testing.TB, pattern string) (method, path string) {
	t.Helper()
	method, path, ok := strings.Cut(pattern, " ")
	if !ok {
		t.Fatalf("route %q has no method: every route in routeTable must name one", pattern)
	}
	if strings.Contains(path, "...}") {
		t.Fatalf("route %q: a {name...} wildcard has no OpenAPI equivalent; extend patternRoute", pattern)
	}
	return method, strings.TrimSuffix(path, "{$}")
}

// TestOpenAPIDocumentCoversRoutes fails when a registered route is missing
// from openapi.json or a documented operation is not registered. HEAD is not
// documented: it comes with every GET (ServeMux serves it), so only GET, not
// HEAD, may appear on either side; the live test checks HEAD answers.
func TestOpenAPIDocumentCoversRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	documented := map[string]bool{}
	for _, o := range operations(t, doc) {
		documented[o.method+" "+o.path] = true
		if o.method == http.MethodHead {
			t.Errorf("openapi.json documents HEAD %s: HEAD comes with GET and is described once, in info.description", o.path)
		}
	}

	registered := func(kv ...string) map[string]bool {
		cfg := testConfig(t, adminDatabaseURL(), kv...)
		s, _ := newTestServer(t, cfg)
		routes := map[string]bool{}
		for _, rt := range s.routeTable() {
			method, path := patternRoute(t, rt.pattern)
			routes[method+" "+path] = true
		}
		return routes
	}
	all := registered("DOCS_ENABLED=true", "METRICS_ENABLED=true")
	for r := range all {
		if !documented[r] {
			t.Errorf("route %s is served but missing from openapi.json", r)
		}
	}
	for r := range documented {
		if !all[r] {
			t.Errorf("openapi.json documents %s, which the server does not serve", r)
		}
	}

	// A route that configuration switches off must say that it can answer 404.
	always := registered("DOCS_ENABLED=false", "METRICS_ENABLED=false")
	for _, o := range operations(t, doc) {
		r := o.method + " " + o.path
		_, has404 := o.op["responses"].(map[string]any)["404"]
		if all[r] && !always[r] && !has404 {
			t.Errorf("%s can be switched off, then answering 404, but documents no 404", r)
		}
	}
}

// TestOpenAPIExamplesMatchSchemas validates every example in the document
// against the schema beside it.
func TestOpenAPIExamplesMatchSchemas(t *testing.T) {
	doc := loadOpenAPI(t)
	c := schemaChecker{doc: doc}
	n := 0
	var walk func(at string, v any)
	walk = func(at string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if schema, ok := v["schema"]; ok {
				// A media type or a header object: example, or named examples.
				if ex, ok := v["example"]; ok {
					n++
					for _, p := range c.check(schema, ex, at+"/example") {
						t.Error(p)
					}
				}
				if exs, ok := v["examples"].(map[string]any); ok {
					for name, ex := range exs {
						n++
						value := c.resolve(ex).(map[string]any)["value"]
						for _, p := range c.check(schema, value, at+"/examples/"+name) {
							t.Error(p)
						}
					}
				}
			}
			for k, child := range v {
				walk(at+"/"+k, child)
			}
		case []any:
			for i, child := range v {
				walk(at+"/"+strconv.Itoa(i), child)
			}
		}
	}
	walk("#", doc)
	if n < 10 {
		t.Errorf("found %d examples in openapi.json, want one per documented response at least", n)
	}
	t.Logf("checked %d examples", n)
}

// TestOpenAPIErrorExamplesMatchStatus checks that each error example under
// a status carries a code that statusOf answers with that status: the
// schema allows every code under every status.
func TestOpenAPIErrorExamplesMatchStatus(t *testing.T) {
	doc := loadOpenAPI(t)
	c := schemaChecker{doc: doc}
	n := 0
	for _, o := range operations(t, doc) {
		for code, ref := range asMap(o.op["responses"]) {
			for mediaType, media := range asMap(asMap(c.resolve(ref))["content"]) {
				values := map[string]any{"example": asMap(media)["example"]}
				for name, ex := range asMap(asMap(media)["examples"]) {
					values["examples/"+name] = asMap(c.resolve(ex))["value"]
				}
				for name, v := range values {
					e, ok := asMap(v)["error"].(map[string]any)
					if !ok {
						continue
					}
					n++
					ec, _ := e["code"].(string)
					if got := strconv.Itoa(statusOf[errorCode(ec)]); got != code {
						t.Errorf("%s %s %s %s %s: error code %s is answered with %s, not %s", o.method, o.path, code, mediaType, name, ec, got, code)
					}
				}
			}
		}
	}
	if n == 0 {
		t.Errorf("found no error examples in openapi.json")
	}
}

// TestOpenAPIDescribesCORS checks that info.description lists the response
// headers CORS exposes and the request headers a preflight allows, as the
// cors middleware sends them: a browser client can use no other.
func TestOpenAPIDescribesCORS(t *testing.T) {
	description, _ := asMap(loadOpenAPI(t)["info"])["description"].(string)
	_, cors, ok := strings.Cut(description, "**CORS**")
	if !ok {
		t.Fatalf("info.description has no **CORS** paragraph")
	}
	cors, _, _ = strings.Cut(cors, "\n\n")
	for _, h := range []struct{ name, value string }{
		{"Access-Control-Expose-Headers", corsExposeHeaders},
		{"Access-Control-Allow-Headers", corsAllowHeaders},
	} {
		want := "`" + h.name + "` (`" + strings.ReplaceAll(h.value, ", ", "`, `") + "`)"
		if !strings.Contains(cors, want) {
			t.Errorf("info.description's CORS paragraph does not say %s; the server sends %s: %s", want, h.name, h.value)
		}
	}
}

// TestOpenAPIVersion checks that /openapi.json reports APP_VERSION and keeps
// the document's order (the UIs list routes in that order).
func TestOpenAPIVersion(t *testing.T) {
	cfg := testConfig(t, newTestDatabase(t), "APP_VERSION=7.8.9-docs")
	s, _ := newTestServer(t, cfg)
	ts := startTestServer(t, s)
	status, h, body := get(t, ts.URL, "/openapi.json")
	if status != http.StatusOK || h.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /openapi.json = %d %q, want 200 application/json", status, h.Get("Content-Type"))
	}
	var served struct {
		Info struct{ Version string } `json:"info"`
	}
	if err := json.Unmarshal(body, &served); err != nil {
		t.Fatalf("GET /openapi.json: %v", err)
	}
	if served.Info.Version != "7.8.9-docs" {
		t.Errorf("GET /openapi.json info.version = %q, want APP_VERSION 7.8.9-docs", served.Info.Version)
	}
	if got, want := topLevelKeys(t, body), topLevelKeys(t, openAPIDocument); !slices.Equal(got, want) {
		t.Errorf("GET /openapi.json top-level members = %v, want the document's order %v", got, want)
	}
	var a, b map[string]any
	_ = json.Unmarshal(body, &a)
	_ = json.Unmarshal(openAPIDocument, &b)
	a["info"].(map[string]any)["version"] = b["info"].(map[string]any)["version"]
	if !reflect.DeepEqual(a, b) {
		t.Errorf("GET /openapi.json differs from openapi.json in more than info.version")
	}

	if _, err := withInfoVersion([]byte(`{"openapi":"3.1.0"}`), "1"); err == nil {
		t.Errorf("withInfoVersion(a document without info) = nil error, want one")
	}
}

// topLevelKeys lists the members of a JSON object in their order.
func topLevelKeys(t testing.TB, obj []byte) []string {
	t.Helper()
	var keys []string
	dec := json.NewDecoder(bytes.NewReader(obj))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %.40s", obj)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// TestOpenAPILiveResponsesMatchDocument sends every documented operation to
// servers whose dependencies are up, down, whose docs are off and which
// cannot check tokens, plus the wrong method and an oversized body, and
// checks each answer against the document: the status is documented, and
// the body and headers match it; an operation answers a request without a
// token 401 (503 without SUPABASE_URL) exactly when the document says it
// needs one. Path parameters take their documented examples. Each server
// then gets the requests of its flows (docs_treatments_test.go and
// docs_auth_test.go), which walk the domain routes through their answers; a
// server whose database stalls gets only those, to show that
// REQUEST_TIMEOUT bounds them (fault_test.go has the health routes' answers
// to a stall), and so does one whose project's keys cannot be fetched.
// Every documented status must come up at least once, except 500, which no
// request can cause on purpose (its example is checked above).
func TestOpenAPILiveResponsesMatchDocument(t *testing.T) {
	requireRedis(t)
	doc := loadOpenAPI(t)
	c := schemaChecker{doc: doc}
	dead := strconv.Itoa(freePort(t))
	deadDB := "postgres://zenspa_test:" + testDatabasePassword + "@127.0.0.1:" + dead + "/zenspa?sslmode=disable"
	stalledDB := "postgres://zenspa_test:" + testDatabasePassword + "@" + silentListener(t) + "/zenspa?sslmode=disable"
	p := newProject(t)
	keyless := newProject(t)
	keyless.jwks.setStatus(http.StatusInternalServerError)
	type flow = func(*liveCaller)
	servers := []struct {
		name     string
		project  *project // nil: no SUPABASE_URL
		kv       []string
		db       string
		flows    []flow
		flowOnly bool // skip the requests to every operation
	}{
		{"dependencies up", p, nil, newMigratedDatabase(t), []flow{identityFlow, treatmentsFlow}, false},
		{"Redis down", p, []string{"REDIS_PORT=" + dead}, newMigratedDatabase(t), []flow{treatmentsFlow}, false},
		{"dependencies down", p, []string{"REDIS_PORT=" + dead}, deadDB, []flow{identityFlow, treatmentsWithoutDatabase}, false},
		{"docs and metrics off", p, []string{"ENVIRONMENT=production", "METRICS_ENABLED=false"}, deadDB, []flow{treatmentsWithoutDatabase}, false},
		{"authentication off", nil, nil, newMigratedDatabase(t), []flow{withoutAuthentication}, false},
		{"database stalls", p, []string{"REQUEST_TIMEOUT=300ms"}, stalledDB, []flow{treatmentsWithoutDatabase}, true},
		{"signing keys unavailable", keyless, nil, newMigratedDatabase(t), []flow{withoutSigningKeys}, true},
		// Its budget spent before the first request: every limited route answers 429.
		{"rate limit spent", p, []string{"RATE_LIMIT=1"}, deadDB, nil, false},
	}
	seen := map[string]bool{} // "GET /health 503"
	for _, srv := range servers {
		kv := srv.kv
		if srv.project != nil {
			kv = slices.Concat(srv.project.env(), kv)
		}
		cfg := testConfig(t, srv.db, kv...)
		s, _ := newTestServer(t, cfg)
		ts := startTestServer(t, s)
		if s.limiter != nil {
			isolateRateLimit(t, s)
			get(t, ts.URL, "/")
		}
		for _, o := range operations(t, doc) {
			if srv.flowOnly {
				break
			}
			path := examplePath(t, c, o)
			target := ts.URL + path
			what := fmt.Sprintf("%s: %s %s", srv.name, o.method, path)

			status, h, body := do(t, o.method, target, nil, nil)
			c.checkResponse(t, o, what, status, h, body)
			seen[fmt.Sprintf("%s %s %d", o.method, o.path, status)] = true

			// The document names bearerAuth exactly where the server asks
			// for a token.
			secured := len(asSlice(o.op["security"])) > 0
			challenge := h.Get("WWW-Authenticate")
			switch {
			case status == http.StatusTooManyRequests:
				// The budget is checked before the token: nothing to learn here.
			case secured && srv.project != nil && (status != http.StatusUnauthorized || challenge != "Bearer"):
				t.Errorf("%s without a token = %d with WWW-Authenticate %q, want 401 and Bearer: the document names bearerAuth", what, status, challenge)
			case secured && srv.project == nil && status != http.StatusServiceUnavailable:
				t.Errorf("%s without a token, authentication off = %d, want 503", what, status)
			case !secured && (status == http.StatusUnauthorized || status == http.StatusForbidden || challenge != ""):
				t.Errorf("%s without a token = %d with WWW-Authenticate %q: the server asks for a token where the document names no security", what, status, challenge)
			}

			// HEAD: the same status and headers as GET, no body.
			if o.method == http.MethodGet {
				hs, hh, hb := do(t, http.MethodHead, target, nil, nil)
				if hs != status || len(hb) != 0 || hh.Get("Content-Type") != h.Get("Content-Type") {
					t.Errorf("%s: HEAD = %d %q with %d body bytes, want %d %q and no body",
						what, hs, hh.Get("Content-Type"), len(hb), status, h.Get("Content-Type"))
				}
			}

			// A method the path does not take; Allow lists the ones it does.
			wrong := wrongMethod(doc, o.path)
			status, h, body = do(t, wrong, target, nil, nil)
			switch status {
			case http.StatusMethodNotAllowed:
				if got, want := h.Get("Allow"), documentedAllow(doc, o.path); got != want {
					t.Errorf("%s: %s = 405 with Allow %q, want the documented methods %q", what, wrong, got, want)
				}
				fallthrough
			case http.StatusNotFound, http.StatusTooManyRequests:
				c.checkResponse(t, o, what+" (as "+wrong+")", status, h, body)
				seen[fmt.Sprintf("%s %s %d", o.method, o.path, status)] = true
			default:
				t.Errorf("%s: %s = %d, want 405 (or 404 when the route is off)", what, wrong, status)
			}

			// A body over the limit, declared and not sent.
			status, h, body = declareHugeBody(t, ts.Listener.Addr().String(), o.method, path)
			c.checkResponse(t, o, what+" with a 2 MiB body", status, h, body)
			seen[fmt.Sprintf("%s %s %d", o.method, o.path, status)] = true
		}
		for _, f := range srv.flows {
			lc := &liveCaller{t: t, c: c, doc: doc, base: ts.URL, server: srv.name, seen: seen, p: srv.project}
			if srv.project != nil {
				lc.manager = srv.project.token(t, algES256, srv.project.manager())
			}
			f(lc)
		}
	}
	for _, o := range operations(t, doc) {
		for code := range o.op["responses"].(map[string]any) {
			if code != "500" && !seen[o.method+" "+o.path+" "+code] {
				t.Errorf("%s %s documents %s, which no request of this test got", o.method, o.path, code)
			}
		}
	}
}

// examplePath is o's path with each path parameter replaced by the example
// the document gives it.
func examplePath(t testing.TB, c schemaChecker, o operation) string {
	t.Helper()
	path := o.path
	for _, p := range asSlice(o.op["parameters"]) {
		p := asMap(c.resolve(p))
		if p["in"] != "path" {
			continue
		}
		example, ok := p["example"].(string)
		if !ok {
			t.Fatalf("%s %s: path parameter %v has no example string; the live test needs one", o.method, o.path, p["name"])
		}
		path = strings.ReplaceAll(path, "{"+p["name"].(string)+"}", url.PathEscape(example))
	}
	if strings.Contains(path, "{") {
		t.Fatalf("%s %s: a path parameter is not documented", o.method, o.path)
	}
	return path
}

// allowOrder is the order in which the server's Allow header lists methods.
var allowOrder = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}

// documentedAllow is the Allow header a 405 on path must carry: the
// documented methods, HEAD with GET.
func documentedAllow(doc map[string]any, path string) string {
	item := asMap(asMap(doc["paths"])[path])
	var allow []string
	for _, m := range allowOrder {
		documented := item[strings.ToLower(m)] != nil
		if m == http.MethodHead {
			documented = item["get"] != nil
		}
		if documented {
			allow = append(allow, m)
		}
	}
	return strings.Join(allow, ", ")
}

// wrongMethod is a method path does not take: POST, or PUT where POST is
// documented.
func wrongMethod(doc map[string]any, path string) string {
	if asMap(asMap(doc["paths"])[path])["post"] == nil {
		return http.MethodPost
	}
	return http.MethodPut
}

// declareHugeBody sends a request that declares a 2 MiB body and sends none
// of it, and reads the answer.
func declareHugeBody(t testing.TB, addr, method, path string) (int, http.Header, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: zenspa\r\nContent-Length: %d\r\n\r\n", method, path, 2<<20)
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s with a 2 MiB body: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s with a 2 MiB body: reading the answer: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, body
}

// checkResponse checks one answer to operation o against the document: the
// status is documented, the Content-Type is one of the documented media
// types, a JSON body matches its schema, and every documented header is
// there (when required) with a matching value.
func (c schemaChecker) checkResponse(t testing.TB, o operation, what string, status int, h http.Header, body []byte) {
	t.Helper()
	ref, ok := o.op["responses"].(map[string]any)[strconv.Itoa(status)]
	if !ok {
		t.Errorf("%s = %d %s: status not documented", what, status, body)
		return
	}
	resp := c.resolve(ref).(map[string]any)

	for name, hdr := range asMap(resp["headers"]) {
		hdr := c.resolve(hdr).(map[string]any)
		v, present := h[http.CanonicalHeaderKey(name)]
		if !present {
			if hdr["required"] == true {
				t.Errorf("%s = %d: documented header %s is missing", what, status, name)
			}
			continue
		}
		for _, p := range c.check(hdr["schema"], v[0], "header "+name) {
			t.Errorf("%s = %d: %s", what, status, p)
		}
	}

	content := asMap(resp["content"])
	if len(content) == 0 {
		if len(body) != 0 {
			t.Errorf("%s = %d: documented without content, got %d bytes", what, status, len(body))
		}
		return
	}
	mediaType, _, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil {
		t.Errorf("%s = %d: Content-Type %q: %v", what, status, h.Get("Content-Type"), err)
		return
	}
	media, ok := content[mediaType].(map[string]any)
	if !ok {
		t.Errorf("%s = %d: Content-Type %s is not among the documented %v", what, status, mediaType, keys(content))
		return
	}
	var value any = string(body)
	if mediaType == "application/json" {
		if err := json.Unmarshal(body, &value); err != nil {
			t.Errorf("%s = %d: body is not JSON: %v", what, status, err)
			return
		}
	}
	for _, p := range c.check(media["schema"], value, "body") {
		t.Errorf("%s = %d: %s\nbody: %s", what, status, p, body)
	}
}

// asMap is v as a JSON object, or nil.
func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// asSlice is v as a JSON array, or nil.
func asSlice(v any) []any {
	a, _ := v.([]any)
	return a
}

// keys lists a map's keys, sorted.
func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// schemaChecker validates JSON values against the subset of JSON Schema the
// document uses. A keyword outside the subset is reported as a problem, so
// that the document cannot lean on one the test would silently skip.
type schemaChecker struct {
	doc map[string]any
}

// annotations are keywords that constrain nothing.
var annotations = map[string]bool{"description": true, "title": true, "examples": true, "default": true}

// uuidForm is what format "uuid" accepts: the 8-4-4-4-12 hexadecimal form.
var uuidForm = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// resolve follows a local $ref ("#/components/schemas/Health"), repeatedly.
func (c schemaChecker) resolve(v any) any {
	for range 10 {
		m, ok := v.(map[string]any)
		if !ok {
			return v
		}
		ref, ok := m["$ref"].(string)
		if !ok {
			return v
		}
		var cur any = c.doc
		for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
			part = strings.NewReplacer("~1", "/", "~0", "~").Replace(part)
			cur = asMap(cur)[part]
		}
		if cur == nil {
			panic("unresolvable $ref " + ref)
		}
		v = cur
	}
	panic("$ref chain too long")
}

// check returns a problem per way value breaks schema; at names the value.
func (c schemaChecker) check(schema, value any, at string) []string {
	s, ok := schema.(map[string]any)
	if !ok {
		if schema == true {
			return nil
		}
		return []string{fmt.Sprintf("%s: schema %v is not an object", at, schema)}
	}
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, at+": "+fmt.Sprintf(format, args...))
	}
	for kw, arg := range s {
		switch kw {
		case "$ref":
			problems = append(problems, c.check(c.resolve(s), value, at)...)
		case "type":
			types, ok := arg.([]any)
			if !ok {
				types = []any{arg}
			}
			if !slices.ContainsFunc(types, func(t any) bool { return jsonType(value, t.(string)) }) {
				bad("%s is not of type %v", short(value), arg)
			}
		case "enum":
			if !slices.ContainsFunc(arg.([]any), func(e any) bool { return reflect.DeepEqual(e, value) }) {
				bad("%s is not one of %v", short(value), arg)
			}
		case "required":
			if obj, ok := value.(map[string]any); ok {
				for _, name := range arg.([]any) {
					if _, has := obj[name.(string)]; !has {
						bad("required member %q is missing", name)
					}
				}
			}
		case "properties":
			if obj, ok := value.(map[string]any); ok {
				for name, sub := range arg.(map[string]any) {
					if v, has := obj[name]; has {
						problems = append(problems, c.check(sub, v, at+"."+name)...)
					}
				}
			}
		case "additionalProperties":
			obj, ok := value.(map[string]any)
			if !ok {
				continue
			}
			props := asMap(s["properties"])
			for name, v := range obj {
				if _, declared := props[name]; declared {
					continue
				}
				if arg == false {
					bad("member %q is not in the schema", name)
				} else {
					problems = append(problems, c.check(arg, v, at+"."+name)...)
				}
			}
		case "items":
			if arr, ok := value.([]any); ok {
				for i, v := range arr {
					problems = append(problems, c.check(arg, v, fmt.Sprintf("%s[%d]", at, i))...)
				}
			}
		case "format":
			switch arg {
			case "date-time":
				if str, ok := value.(string); ok {
					if _, err := time.Parse(time.RFC3339, str); err != nil {
						bad("%q is not a date-time: %v", str, err)
					}
				}
			case "uuid":
				if str, ok := value.(string); ok && !uuidForm.MatchString(str) {
					bad("%q is not a UUID", str)
				}
			case "int64":
				if n, ok := value.(float64); ok && (n != math.Trunc(n) || n < math.MinInt64 || n >= math.MaxInt64) {
					bad("%v is not a 64-bit integer", n)
				}
			default:
				bad("format %q is not supported by this checker", arg)
			}
		case "pattern":
			str, ok := value.(string)
			if !ok {
				continue
			}
			re, err := regexp.Compile(arg.(string))
			if err != nil {
				bad("pattern %q: %v", arg, err)
			} else if !re.MatchString(str) {
				bad("%q does not match %q", str, arg)
			}
		case "minimum":
			if n, ok := value.(float64); ok && n < arg.(float64) {
				bad("%v is below the minimum %v", n, arg)
			}
		case "maximum":
			if n, ok := value.(float64); ok && n > arg.(float64) {
				bad("%v is above the maximum %v", n, arg)
			}
		case "multipleOf":
			if n, ok := value.(float64); ok && math.Mod(n, arg.(float64)) != 0 {
				bad("%v is not a multiple of %v", n, arg)
			}
		case "minLength":
			// JSON Schema counts characters (code points), not bytes.
			if str, ok := value.(string); ok && float64(utf8.RuneCountInString(str)) < arg.(float64) {
				bad("%q is shorter than %v characters", str, arg)
			}
		case "maxLength":
			if str, ok := value.(string); ok && float64(utf8.RuneCountInString(str)) > arg.(float64) {
				bad("%s is longer than %v characters", short(str), arg)
			}
		case "minItems":
			if arr, ok := value.([]any); ok && float64(len(arr)) < arg.(float64) {
				bad("%s has fewer than %v items", short(arr), arg)
			}
		case "minProperties":
			if obj, ok := value.(map[string]any); ok && float64(len(obj)) < arg.(float64) {
				bad("%s has fewer than %v members", short(obj), arg)
			}
		default:
			if !annotations[kw] {
				bad("keyword %q is not supported by this checker: extend schemaChecker.check", kw)
			}
		}
	}
	return problems
}

// jsonType reports whether v, as decoded by encoding/json, is of the JSON
// Schema type t.
func jsonType(v any, t string) bool {
	switch v := v.(type) {
	case nil:
		return t == "null"
	case bool:
		return t == "boolean"
	case string:
		return t == "string"
	case float64:
		return t == "number" || (t == "integer" && v == math.Trunc(v))
	case []any:
		return t == "array"
	case map[string]any:
		return t == "object"
	}
	return false
}

// short shows a value in a problem, cut to a readable length.
func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 80 {
		return string(b[:77]) + "..."
	}
	return string(b)
}

// TestOpenAPISchemaChecker shows that each keyword the checker supports refuses
// what it should: a keyword that passed everything would make the example
// and live checks silently weaker than the document.
func TestOpenAPISchemaChecker(t *testing.T) {
	doc := map[string]any{"components": map[string]any{"schemas": map[string]any{
		"Name": map[string]any{"type": "string", "maxLength": 3.0},
	}}}
	c := schemaChecker{doc: doc}
	tests := []struct {
		schema, value string
		ok            bool
	}{
		{`{"type":"integer"}`, `5`, true},
		{`{"type":"integer"}`, `5.5`, false},
		{`{"type":["string","null"]}`, `null`, true},
		{`{"type":["string","null"]}`, `1`, false},
		{`{"enum":["a"]}`, `"b"`, false},
		{`{"required":["a"]}`, `{}`, false},
		{`{"properties":{"a":{"type":"string"}}}`, `{"a":1}`, false},
		{`{"properties":{"a":{}},"additionalProperties":false}`, `{"a":1,"b":2}`, false},
		{`{"items":{"type":"string"}}`, `["a",1]`, false},
		{`{"$ref":"#/components/schemas/Name"}`, `"abcd"`, false},
		{`{"format":"date-time"}`, `"2026-12-01T20:44:51.520658Z"`, true},
		{`{"format":"date-time"}`, `"2026-12-01 20:44"`, false},
		{`{"format":"uuid"}`, `"29188B83-a777-41a9-b832-dbd0c5a6c735"`, true},
		{`{"format":"uuid"}`, `"29188b83a77741a9b832dbd0c5a6c735"`, false},
		{`{"format":"int64"}`, `-9223372036854775808`, true},
		{`{"format":"int64"}`, `9223372036854775808`, false},
		{`{"format":"int64"}`, `1.5`, false},
		{`{"format":"email"}`, `"a@b"`, false}, // unsupported: reported, not skipped
		{`{"pattern":"^[A-Z]{3}$"}`, `"VND"`, true},
		{`{"pattern":"^[A-Z]{3}$"}`, `"vnd"`, false},
		{`{"minimum":5}`, `4`, false},
		{`{"maximum":480}`, `485`, false},
		{`{"multipleOf":5}`, `45`, true},
		{`{"multipleOf":5}`, `47`, false},
		{`{"minLength":1}`, `""`, false},
		{`{"maxLength":3}`, `"đá!"`, true}, // three characters, five bytes
		{`{"maxLength":3}`, `"đá!!"`, false},
		{`{"minItems":1}`, `[]`, false},
		{`{"minProperties":1}`, `{}`, false},
		{`{"default":"VND","description":"x","title":"y","examples":["z"]}`, `1`, true},
		{`{"oneOf":[{}]}`, `1`, false}, // unsupported: reported, not skipped
	}
	for _, tt := range tests {
		var schema, value any
		if err := json.Unmarshal([]byte(tt.schema), &schema); err != nil {
			t.Fatalf("%s: %v", tt.schema, err)
		}
		if err := json.Unmarshal([]byte(tt.value), &value); err != nil {
			t.Fatalf("%s: %v", tt.value, err)
		}
		if problems := c.check(schema, value, "value"); (len(problems) == 0) != tt.ok {
			t.Errorf("check(%s, %s) = %q, want ok %v", tt.schema, tt.value, problems, tt.ok)
		}
	}
}

// TestDocsPages checks what the browser test cannot see directly: the pages'
// headers, that every asset comes from the asset base URL with its SRI hash,
// and that no script is inline.
func TestDocsPages(t *testing.T) {
	cfg := testConfig(t, newTestDatabase(t), "DOCS_ASSET_BASE_URL=https://mirror.example/npm/")
	s, _ := newTestServer(t, cfg)
	ts := startTestServer(t, s)
	const base = "https://mirror.example/npm"
	tests := []struct {
		path   string
		assets []docsAsset
		init   string
		csp    []string // directives the policy must have, exactly
	}{
		{"/docs", []docsAsset{swaggerUIStyle, swaggerUIScript}, "/docs/init.js", []string{
			"default-src 'none'",
			"script-src 'self' " + base + "/swagger-ui-dist@5.35.0/swagger-ui-bundle.js",
			"style-src " + base + "/swagger-ui-dist@5.35.0/swagger-ui.css",
			"img-src data:", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'",
		}},
		{"/redoc", []docsAsset{redocScript}, "/redoc/init.js", []string{
			"default-src 'none'",
			"script-src 'self' " + base + "/redoc@2.5.4/bundles/redoc.standalone.js",
			"style-src 'unsafe-inline'", "worker-src blob:",
			"img-src data:", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'",
		}},
	}
	scriptTag := regexp.MustCompile(`<script[^>]*>`)
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			status, h, body := get(t, ts.URL, tt.path)
			if status != http.StatusOK || h.Get("Content-Type") != "text/html; charset=utf-8" {
				t.Fatalf("GET %s = %d %q, want 200 text/html; charset=utf-8", tt.path, status, h.Get("Content-Type"))
			}
			var directives []string
			for _, d := range strings.Split(h.Get("Content-Security-Policy"), ";") {
				directives = append(directives, strings.TrimSpace(d))
			}
			slices.Sort(directives)
			want := slices.Sorted(slices.Values(tt.csp))
			if !slices.Equal(directives, want) {
				t.Errorf("GET %s Content-Security-Policy =\n  %q\nwant\n  %q", tt.path, directives, want)
			}
			page := html.UnescapeString(string(body)) // as the browser reads the attributes
			for _, a := range tt.assets {
				attr := fmt.Sprintf(`="%s" integrity="%s" crossorigin="anonymous"`, a.url(base), a.integrity)
				if !strings.Contains(page, attr) {
					t.Errorf("GET %s: no element with %s in\n%s", tt.path, attr, page)
				}
			}
			tags := scriptTag.FindAllString(page, -1)
			for _, tag := range tags {
				if !strings.Contains(tag, " src=") {
					t.Errorf("GET %s has an inline script %s; the policy forbids it", tt.path, tag)
				}
			}
			if want := `<script src="` + tt.init + `">`; !slices.Contains(tags, want) {
				t.Errorf("GET %s scripts = %q, want one %s", tt.path, tags, want)
			}
			status, h, _ = get(t, ts.URL, tt.init)
			if status != http.StatusOK || h.Get("Content-Type") != "text/javascript; charset=utf-8" {
				t.Errorf("GET %s = %d %q, want 200 text/javascript", tt.init, status, h.Get("Content-Type"))
			}
		})
	}
}

// TestDocsConfig covers DOCS_ENABLED, whose default depends on ENVIRONMENT,
// and the checks on DOCS_ASSET_BASE_URL.
func TestDocsConfig(t *testing.T) {
	db := adminDatabaseURL()
	enabled := []struct {
		kv   []string
		want bool
	}{
		{nil, true},
		{[]string{"ENVIRONMENT=staging"}, true},
		{[]string{"ENVIRONMENT=production"}, false},
		{[]string{"ENVIRONMENT=production", "DOCS_ENABLED=true"}, true},
		{[]string{"ENVIRONMENT=development", "DOCS_ENABLED=no"}, false},
		{[]string{"ENVIRONMENT=production", "DOCS_ENABLED="}, false},
	}
	for _, tt := range enabled {
		if got := testConfig(t, db, tt.kv...).DocsEnabled; got != tt.want {
			t.Errorf("loadConfig(%q).DocsEnabled = %v, want %v", tt.kv, got, tt.want)
		}
	}

	bases := []struct {
		value, want string // want "" for a configuration error
	}{
		{"", defaultDocsAssetBaseURL},
		{"http://127.0.0.1:8080/", "http://127.0.0.1:8080"},
		{"https://intranet.example/static/npm//", "https://intranet.example/static/npm"},
		{"ftp://intranet.example/npm", ""},
		{"/static/npm", ""},
		{"https://intranet.example/npm?v=1", ""},
		{"https://intranet.example/npm#x", ""},
		{"https://intranet.example/npm;script-src *", ""},
		{"https://intranet.example/a,b", ""},
		{"https://user:s3cret@intranet.example/npm", ""},
		{"ftp://user:s3cret@intranet.example/npm", ""},
		{"https://user:s3cret@intranet.example:port/npm", ""},
	}
	for _, tt := range bases {
		cfg, err := loadConfig(testEnv(t, db, "DOCS_ASSET_BASE_URL="+tt.value))
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("loadConfig(DOCS_ASSET_BASE_URL=%q) = %q, want an error", tt.value, cfg.DocsAssetBaseURL)
		case tt.want == "" && strings.Contains(err.Error(), "s3cret"):
			t.Errorf("loadConfig(DOCS_ASSET_BASE_URL=%q) error shows the password: %v", tt.value, err)
		case tt.want != "" && err != nil:
			t.Errorf("loadConfig(DOCS_ASSET_BASE_URL=%q): %v", tt.value, err)
		case tt.want != "" && cfg.DocsAssetBaseURL != tt.want:
			t.Errorf("loadConfig(DOCS_ASSET_BASE_URL=%q).DocsAssetBaseURL = %q, want %q", tt.value, cfg.DocsAssetBaseURL, tt.want)
		}
	}
}

// toolsModules returns tools/node_modules, where `make tools` installs the
// pinned npm packages (see requireTool for a missing one).
func toolsModules(t testing.TB) string {
	t.Helper()
	dir := filepath.Join("tools", "node_modules")
	requireTool(t, filepath.Join(dir, "redoc", "package.json"), "make tools")
	return dir
}

// TestDocsAssetsMatchPinnedPackages checks the versions and SRI hashes in
// docs.go against tools/package.json and the exact files npm installed.
func TestDocsAssetsMatchPinnedPackages(t *testing.T) {
	modules := toolsModules(t)
	var pinned struct{ Dependencies map[string]string }
	readJSONFile(t, filepath.Join("tools", "package.json"), &pinned)
	for _, a := range []docsAsset{swaggerUIScript, swaggerUIStyle, redocScript} {
		if got := pinned.Dependencies[a.pkg]; got != a.version {
			t.Errorf("tools/package.json pins %s %q, docs.go %q: keep them equal", a.pkg, got, a.version)
		}
		var installed struct{ Version string }
		readJSONFile(t, filepath.Join(modules, a.pkg, "package.json"), &installed)
		if installed.Version != a.version {
			t.Errorf("tools/node_modules holds %s %s, docs.go pins %s: run `make tools`", a.pkg, installed.Version, a.version)
			continue
		}
		b, err := os.ReadFile(filepath.Join(modules, a.pkg, a.file))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha512.Sum384(b)
		if got := "sha384-" + base64.StdEncoding.EncodeToString(sum[:]); got != a.integrity {
			t.Errorf("%s@%s/%s integrity = %s, docs.go says %s", a.pkg, a.version, a.file, got, a.integrity)
		}
	}
}

// readJSONFile decodes the JSON file name into v.
func readJSONFile(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

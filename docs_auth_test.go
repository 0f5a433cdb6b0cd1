package main

import (
	"net/http"
	"time"
)

// Authentication in TestOpenAPILiveResponsesMatchDocument: GET /api/v1/me,
// the callers every operation that needs a token turns away, and the 503s
// of a server that cannot check tokens. The treatment flows use refusals
// for the menu's writes.

// refusal is a caller that an operation needing a token turns away: the
// status it gets and the WWW-Authenticate challenge that comes with it.
type refusal struct {
	who       string
	header    http.Header
	status    int
	challenge string
}

// refusals are the callers every operation that needs a token refuses,
// notAllowed last: the claims of a valid token that the operation does not
// allow.
func refusals(lc *liveCaller, notAllowed map[string]any) []refusal {
	t, p := lc.t, lc.p
	expired := p.manager()
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	return []refusal{
		{"no token", nil, http.StatusUnauthorized, "Bearer"},
		{"Basic credentials", header("Authorization", "Basic YTpi"), http.StatusUnauthorized, `Bearer error="invalid_request"`},
		{"two tokens", http.Header{"Authorization": {"Bearer a.b.c", "Bearer d.e.f"}}, http.StatusUnauthorized, `Bearer error="invalid_request"`},
		{"a token that is not a JWT", bearer("not-a-token"), http.StatusUnauthorized, `Bearer error="invalid_token"`},
		{"a manager's expired token", bearer(p.token(t, algES256, expired)), http.StatusUnauthorized, `Bearer error="invalid_token"`},
		{"a token it does not allow", bearer(p.token(t, algES256, notAllowed)), http.StatusForbidden, `Bearer error="insufficient_scope"`},
	}
}

// refuse sends operation opID, with body, as each caller of rs, and checks
// the status and the challenge each gets.
func (lc *liveCaller) refuse(opID, path, body string, rs []refusal) {
	lc.t.Helper()
	for _, r := range rs {
		a := lc.call(opID, path, r.header, body, r.status)
		if got := a.header.Get("WWW-Authenticate"); got != r.challenge {
			lc.t.Errorf("%s: %s as %s = %d with WWW-Authenticate %q, want %q", lc.server, opID, r.who, a.status, got, r.challenge)
		}
	}
}

// identityFlow asks GET /api/v1/me who a user's and a manager's tokens speak
// for, signed either way a project signs, and sends it the callers it
// refuses: a service_role token is valid but not a user's.
func identityFlow(lc *liveCaller) {
	t, p := lc.t, lc.p
	const me = "/api/v1/me"
	for _, tc := range []struct {
		who    string
		alg    string
		claims map[string]any
	}{
		{"a user (ES256)", algES256, p.user(newUUID())},
		{"a manager (HS256)", algHS256, p.manager()},
	} {
		a := lc.call("getMe", me, bearer(p.token(t, tc.alg, tc.claims)), "", http.StatusOK)
		c := tc.claims
		wantMembers(t, lc.server+": GET "+me+" as "+tc.who, a.data(), map[string]any{
			"id": c["sub"], "email": c["email"], "phone": c["phone"], "role": c["role"], "aal": c["aal"],
			"session_id": c["session_id"], "is_anonymous": c["is_anonymous"], "app_metadata": c["app_metadata"],
			"expires_at": time.Unix(c["exp"].(int64), 0).UTC().Format(time.RFC3339),
		})
	}
	serviceRole := p.manager()
	serviceRole["role"] = "service_role"
	lc.refuse("getMe", me, "", refusals(lc, serviceRole))
}

// withoutAuthentication is the flow of a server without SUPABASE_URL: every
// operation that needs a token answers 503 and changes nothing, whatever
// token it gets; the menu is still read.
func withoutAuthentication(lc *liveCaller) {
	t := lc.t
	lc.unavailable = codeServiceUnavailable
	const list = "/api/v1/treatments"
	other := newProject(t) // a project this server knows nothing of
	manager := bearer(other.token(t, algHS256, other.manager()))
	create := jsonOf(t, lc.requestExamples("TreatmentCreate")["defaults"])
	path := list + "/" + newUUID()
	for _, r := range []struct {
		opID, path string
		header     http.Header
		body       string
	}{
		{"getMe", "/api/v1/me", manager, ""},
		{"getMe", "/api/v1/me", nil, ""},
		{"createTreatment", list, manager, create},
		{"createTreatment", list, nil, create},
		{"updateTreatment", path, manager, `{"price":1}`},
		{"deleteTreatment", path, manager, ""},
	} {
		a := lc.call(r.opID, r.path, r.header, r.body, http.StatusServiceUnavailable)
		if msg := asMap(a.body["error"])["message"]; msg != "Authentication is not configured" {
			t.Errorf("%s: %s %s = 503 %q, want it to say authentication is not configured", lc.server, r.opID, r.path, msg)
		}
	}
	if a := lc.call("listTreatments", list, nil, "", http.StatusOK); len(a.items()) != 0 {
		t.Errorf("%s: GET %s after refused writes lists %v, want nothing", lc.server, list, a.items())
	}
}

// withoutSigningKeys is the flow of a server whose project's key set cannot
// be fetched: a token signed with one of its keys cannot be checked (503),
// and one signed with the legacy secret still passes.
func withoutSigningKeys(lc *liveCaller) {
	t, p := lc.t, lc.p
	lc.unavailable = codeServiceUnavailable
	const list = "/api/v1/treatments"
	create := jsonOf(t, lc.requestExamples("TreatmentCreate")["defaults"])
	path := list + "/" + newUUID()
	asymmetric := bearer(p.token(t, algES256, p.manager()))
	for _, r := range []struct{ opID, path, body string }{
		{"getMe", "/api/v1/me", ""},
		{"createTreatment", list, create},
		{"updateTreatment", path, `{"price":1}`},
		{"deleteTreatment", path, ""},
	} {
		a := lc.call(r.opID, r.path, asymmetric, r.body, http.StatusServiceUnavailable)
		if msg := asMap(a.body["error"])["message"]; msg != "The access token cannot be checked now, try again later" {
			t.Errorf("%s: %s %s = 503 %q, want it to say the token cannot be checked now", lc.server, r.opID, r.path, msg)
		}
	}

	legacy := bearer(p.token(t, algHS256, p.manager()))
	lc.call("getMe", "/api/v1/me", legacy, "", http.StatusOK)
	a := lc.call("createTreatment", list, legacy, create, http.StatusCreated)
	lc.call("deleteTreatment", a.header.Get("Location"), legacy, "", http.StatusNoContent)
}

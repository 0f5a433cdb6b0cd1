package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// Authentication through HTTP: require, /api/v1/me, the treatment menu's
// writes, and transactions run as the caller under row-level security. The
// token rules themselves are tested in jwt_test.go and jwks_test.go.

// project is a Supabase project of the tests' own: its key set served on
// loopback (the test keys as kids "es", "rs" and "ed"), its legacy secret,
// and tokens minted the way it mints them.
type project struct {
	url  string
	jwks *jwtJWKSServer
	keys *jwtKeys
}

// newProject serves a project's key set until the test ends.
func newProject(t testing.TB) *project {
	t.Helper()
	keys := jwtTestKeys()
	jwks := newJWTJWKSServer(t, jwtPublicJWK("es", &keys.ec.PublicKey), jwtPublicJWK("rs", &keys.rsa.PublicKey), jwtPublicJWK("ed", keys.ed.Public()))
	return &project{url: jwks.URL, jwks: jwks, keys: keys}
}

// env is the configuration that points zenspa at the project.
func (p *project) env() []string {
	return []string{"SUPABASE_URL=" + p.url, "SUPABASE_JWT_SECRET=" + jwtTestSecret}
}

// user is the claims of a signed-in user's access token, valid for an hour.
func (p *project) user(sub string) map[string]any {
	now := time.Now().Unix()
	return map[string]any{
		"iss": p.url + "/auth/v1", "sub": sub, "aud": "authenticated", "role": "authenticated",
		"exp": now + 3600, "iat": now - 10, "email": "le.an@example.com", "phone": "", "aal": "aal1",
		"session_id": "3f0c4a5e-6b7d-4e8f-9a0b-1c2d3e4f5a6b", "is_anonymous": false,
		"app_metadata":  map[string]any{"provider": "email"},
		"user_metadata": map[string]any{"zenspa_role": "admin"}, // users write this themselves: it grants nothing
	}
}

// manager is a user whose app_metadata makes them a manager.
func (p *project) manager() map[string]any {
	c := p.user(newUUID())
	c["app_metadata"] = map[string]any{"provider": "email", "zenspa_role": "manager"}
	return c
}

// token signs claims: HS256 with the legacy secret, or with the project's
// key for alg.
func (p *project) token(t testing.TB, alg string, claims map[string]any) string {
	t.Helper()
	key := map[string]any{algES256: p.keys.ec, algRS256: p.keys.rsa, algEdDSA: p.keys.ed, algHS256: []byte(jwtTestSecret)}[alg]
	header := map[string]any{"alg": alg, "typ": "JWT"}
	if alg != algHS256 {
		header["kid"] = map[string]string{algES256: "es", algRS256: "rs", algEdDSA: "ed"}[alg]
	}
	return jwtSign(t, alg, key, header, claims)
}

// withBearer is a client transport (base, or http.DefaultTransport) that
// sends token with every request.
func withBearer(token string, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return bearerTransport{token: token, base: base}
}

// bearerTransport is what withBearer returns.
type bearerTransport struct {
	token string
	base  http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach base.
func (b bearerTransport) CloseIdleConnections() {
	if c, ok := b.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// bearer is the header of a request carrying token.
func bearer(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }

func TestAuthMe(t *testing.T) {
	t.Parallel()
	p := newProject(t)
	s, logs := newTestServer(t, testConfig(t, newTestDatabase(t), append(p.env(), "ENVIRONMENT=production")...))
	ts := startTestServer(t, s)
	sub := newUUID()
	for _, alg := range []string{algES256, algRS256, algEdDSA, algHS256} {
		token := p.token(t, alg, p.user(sub))
		status, _, body := do(t, http.MethodGet, ts.URL+"/api/v1/me", bearer(token), nil)
		if status != http.StatusOK {
			t.Fatalf("GET /api/v1/me with an %s token = %d %s, want 200", alg, status, body)
		}
		got := dataOf[me](t, "GET /api/v1/me", body)
		if got.ID != sub || got.Email != "le.an@example.com" || got.Role != "authenticated" || got.AAL != "aal1" ||
			got.SessionID == "" || got.AppMetadata["provider"] != "email" || got.ExpiresAt.Before(time.Now()) {
			t.Errorf("GET /api/v1/me (%s) = %+v, want the token's identity", alg, got)
		}
		if strings.Contains(string(body), token) || strings.Contains(string(body), strings.Split(token, ".")[2]) {
			t.Errorf("GET /api/v1/me answers the token itself: %s", body)
		}
	}
	if line := waitLogLine(t, logs, "the access log with the user", func(m map[string]any) bool { return m["user"] == sub }); line["path"] != "/api/v1/me" {
		t.Errorf("access log line with user %s = %v, want the /api/v1/me request", sub, line)
	}

	anon := p.user(newUUID())
	anon["is_anonymous"] = true
	if status, _, body := do(t, http.MethodGet, ts.URL+"/api/v1/me", bearer(p.token(t, algES256, anon)), nil); status != http.StatusOK ||
		!dataOf[me](t, "GET /api/v1/me (anonymous)", body).IsAnonymous {
		t.Errorf("GET /api/v1/me for an anonymous sign-in = %d %s, want 200 and is_anonymous", status, body)
	}

	expired := p.user(sub)
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	legacyAnonKey := map[string]any{"iss": "supabase", "ref": "abcdefghijklmnop", "role": "anon", "iat": 1700000000, "exp": 2000000000}
	for _, tc := range []struct {
		name      string
		header    http.Header
		challenge string
	}{
		{"no token", nil, "Bearer"},
		{"another scheme", http.Header{"Authorization": {"Basic " + "YTpi"}}, `Bearer error="invalid_request"`},
		{"an empty bearer", http.Header{"Authorization": {"Bearer "}}, `Bearer error="invalid_request"`},
		{"two headers", http.Header{"Authorization": {"Bearer a.b.c", "Bearer d.e.f"}}, `Bearer error="invalid_request"`},
		{"garbage", bearer("not-a-token"), `Bearer error="invalid_token"`},
		{"expired", bearer(p.token(t, algES256, expired)), `Bearer error="invalid_token"`},
		{"tampered", bearer(jwtTamper(p.token(t, algES256, p.user(sub)), 1)), `Bearer error="invalid_token"`},
		{"the legacy anon key", bearer(p.token(t, algHS256, legacyAnonKey)), `Bearer error="invalid_token"`},
		{"a secret API key", bearer("sb_secret_" + strings.Repeat("x", 40)), `Bearer error="invalid_token"`},
		{"a token in the query only", nil, "Bearer"},
	} {
		target := ts.URL + "/api/v1/me"
		if tc.name == "a token in the query only" {
			target += "?access_token=" + p.token(t, algES256, p.user(sub))
		}
		status, h, body := do(t, http.MethodGet, target, tc.header, nil)
		if status != http.StatusUnauthorized {
			t.Errorf("GET /api/v1/me with %s = %d %s, want 401", tc.name, status, body)
			continue
		}
		wantErrorEnvelope(t, "GET /api/v1/me with "+tc.name, h, body, codeUnauthorized)
		if got := h.Get("WWW-Authenticate"); got != tc.challenge {
			t.Errorf("GET /api/v1/me with %s: WWW-Authenticate = %q, want %q", tc.name, got, tc.challenge)
		}
	}
	for _, secret := range []string{jwtTestSecret, strings.Split(p.token(t, algES256, p.user(sub)), ".")[2]} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds a secret or a signature: %q", secret)
		}
	}

	// The counters of /metrics.
	sc := scrapeMetrics(t, ts.URL)
	for outcome, min := range map[string]float64{"ok": 5, "invalid": 3, "expired": 1} {
		if got, _ := sc.value("auth_verifications_total", map[string]string{"outcome": outcome}); got < min {
			t.Errorf("auth_verifications_total{outcome=%q} = %v, want at least %v", outcome, got, min)
		}
	}
	if got, _ := sc.value("auth_jwks_fetches_total", map[string]string{"result": "ok"}); got < 1 {
		t.Errorf("auth_jwks_fetches_total{result=\"ok\"} = %v, want the fetch at start", got)
	}
}

func TestAuthTreatmentWrites(t *testing.T) {
	t.Parallel()
	p := newProject(t)
	m := newMenuOn(t, newMigratedDatabase(t), p)
	body := `{"name":"Xoa bóp bấm huyệt","duration_minutes":60,"price":400000}`
	admin := p.user(newUUID())
	admin["app_metadata"] = map[string]any{"zenspa_role": "admin"}
	serviceRole := p.manager()
	serviceRole["role"] = "service_role"
	for _, tc := range []struct {
		name   string
		header http.Header
		status int
		code   errorCode
	}{
		{"no token", jsonHeader(), http.StatusUnauthorized, codeUnauthorized},
		{"a user", jsonHeader("Authorization", "Bearer "+p.token(t, algES256, p.user(newUUID()))), http.StatusForbidden, codeForbidden},
		{"a service_role token", jsonHeader("Authorization", "Bearer "+p.token(t, algHS256, serviceRole)), http.StatusForbidden, codeForbidden},
		{"a manager", m.hdr(), http.StatusCreated, ""},
		{"an admin, HS256", jsonHeader("Authorization", "Bearer "+p.token(t, algHS256, admin)), http.StatusConflict, codeConflict},
	} {
		status, h, b := do(t, http.MethodPost, m.url, tc.header, strings.NewReader(body))
		if status != tc.status {
			t.Errorf("POST as %s = %d %s, want %d", tc.name, status, b, tc.status)
			continue
		}
		if tc.code != "" {
			wantErrorEnvelope(t, "POST as "+tc.name, h, b, tc.code)
		}
		if tc.status == http.StatusForbidden && h.Get("WWW-Authenticate") != `Bearer error="insufficient_scope"` {
			t.Errorf("POST as %s: WWW-Authenticate = %q, want insufficient_scope", tc.name, h.Get("WWW-Authenticate"))
		}
	}
	// Reads stay public.
	if status, _, b := get(t, m.url, ""); status != http.StatusOK {
		t.Errorf("GET the menu without a token = %d %s, want 200", status, b)
	}
	for _, method := range []string{http.MethodPatch, http.MethodDelete} {
		status, _, b := do(t, method, m.url+"/"+newUUID(), jsonHeader(), strings.NewReader(`{"price":1}`))
		if status != http.StatusUnauthorized {
			t.Errorf("%s without a token = %d %s, want 401", method, status, b)
		}
	}
}

// TestAuthNotConfigured: without SUPABASE_URL a route that needs a user
// answers 503 and lets nothing through.
func TestAuthNotConfigured(t *testing.T) {
	t.Parallel()
	s, _ := newTestServer(t, testConfig(t, newMigratedDatabase(t)))
	ts := startTestServer(t, s)
	p := newProject(t)
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/api/v1/me"}, {http.MethodPost, "/api/v1/treatments"}, {http.MethodDelete, "/api/v1/treatments/" + newUUID()},
	} {
		status, h, body := do(t, tc.method, ts.URL+tc.path, jsonHeader("Authorization", "Bearer "+p.token(t, algHS256, p.manager())),
			strings.NewReader(`{"name":"X","duration_minutes":60,"price":1}`))
		if status != http.StatusServiceUnavailable {
			t.Errorf("%s %s with auth off = %d %s, want 503", tc.method, tc.path, status, body)
			continue
		}
		if m := wantErrorEnvelope(t, tc.method+" "+tc.path, h, body, codeServiceUnavailable); !strings.Contains(fmt.Sprint(m["error"]), "not configured") {
			t.Errorf("%s %s with auth off = %s, want it to say authentication is not configured", tc.method, tc.path, body)
		}
	}
	if status, _, _ := get(t, ts.URL, "/api/v1/treatments"); status != http.StatusOK {
		t.Errorf("GET the menu with auth off = %d, want 200", status)
	}
}

// TestAuthKeysUnavailable: a key set that cannot be fetched at start does
// not stop the service; tokens that need it get 503, HS256 ones still pass.
func TestAuthKeysUnavailable(t *testing.T) {
	t.Parallel()
	p := newProject(t)
	p.jwks.setStatus(http.StatusInternalServerError)
	cfg := testConfig(t, newTestDatabase(t), p.env()...)
	s, logs := newTestServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.auth.start(ctx)
	if !strings.Contains(logs.String(), "jwks not loaded") {
		t.Errorf("no warning that the key set did not load:\n%s", logs)
	}
	ts := startTestServer(t, s)
	if status, _, body := do(t, http.MethodGet, ts.URL+"/api/v1/me", bearer(p.token(t, algES256, p.user(newUUID()))), nil); status != http.StatusServiceUnavailable {
		t.Errorf("GET /api/v1/me with an ES256 token and no keys = %d %s, want 503", status, body)
	}
	if status, _, body := do(t, http.MethodGet, ts.URL+"/api/v1/me", bearer(p.token(t, algHS256, p.user(newUUID()))), nil); status != http.StatusOK {
		t.Errorf("GET /api/v1/me with an HS256 token and no keys = %d %s, want 200", status, body)
	}
	if status, _, _ := get(t, ts.URL, "/health/ready"); status != http.StatusOK {
		t.Errorf("/health/ready with no keys = %d, want 200: readiness is not tied to the JWKS", status)
	}
}

// TestUserTransactions: queries run as the caller see what Supabase's
// row-level security lets them, two users at once through one pool, and
// nothing of it stays on a pooled connection, also behind PgBouncer in
// transaction mode.
func TestUserTransactions(t *testing.T) {
	t.Parallel()
	dbURL := newTestDatabase(t)
	admin, _ := newTestServer(t, testConfig(t, dbURL))
	ctx := context.Background()
	for _, q := range []string{
		// auth.uid() as Supabase defines it: the sub of the request's claims.
		`CREATE SCHEMA auth`,
		`CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS
			$$ SELECT (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')::uuid $$`,
		`CREATE TABLE notes (owner uuid NOT NULL DEFAULT auth.uid(), body text NOT NULL)`,
		`ALTER TABLE notes ENABLE ROW LEVEL SECURITY`,
		`CREATE POLICY notes_owner ON notes USING (owner = auth.uid()) WITH CHECK (owner = auth.uid())`,
		`GRANT USAGE ON SCHEMA auth TO authenticated`,
		`GRANT SELECT, INSERT ON notes TO authenticated`,
	} {
		if _, err := admin.db.exec(ctx, q); err != nil {
			t.Fatalf("%s: %v (the role authenticated, and zenspa_test's membership in it, come from `make services`)", q, err)
		}
	}

	servers := map[string]func(t *testing.T) *server{
		"direct": func(*testing.T) *server { return admin },
		"pgbouncer": func(t *testing.T) *server {
			s, _ := newTestServer(t, testConfig(t, startPgBouncer(t, dbURL)))
			return s
		},
	}
	for via, server := range servers {
		t.Run(via, func(t *testing.T) {
			s := server(t)
			users := []string{newUUID(), newUUID()}
			var wg sync.WaitGroup
			for _, sub := range users {
				id := &identity{Subject: sub, Role: "authenticated", Claims: []byte(fmt.Sprintf(`{"sub":%q,"role":"authenticated"}`, sub))}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 20 {
						var seen, foreign int
						err := s.db.withUserTx(ctx, id, func(tx statements) error {
							if _, err := tx.exec(ctx, "INSERT INTO notes (body) VALUES ($1)", fmt.Sprintf("note %d", i)); err != nil {
								return err
							}
							return tx.queryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE owner <> $1) FROM notes", []any{sub}, &seen, &foreign)
						})
						if err != nil || seen != i+1 || foreign != 0 {
							t.Errorf("user %s, note %d: sees %d rows, %d of others (%v); want %d, 0", sub, i, seen, foreign, err, i+1)
							return
						}
					}
				}()
			}
			wg.Wait()
			// Nothing stays on the pooled connections.
			for range 8 {
				var who, claims string
				mustf(t, s.db.queryRow(ctx, "SELECT current_user, coalesce(current_setting('request.jwt.claims', true), '')", nil, &who, &claims), "who")
				if who != "zenspa_test" || claims != "" {
					t.Fatalf("a pooled connection after the users' transactions runs as %q with claims %q, want zenspa_test and none", who, claims)
				}
			}
			// A role outside the fixed list runs nothing.
			err := s.db.withUserTx(ctx, &identity{Subject: users[0], Role: "service_role", Claims: []byte(`{}`)}, func(statements) error {
				t.Errorf("a service_role identity ran a transaction")
				return nil
			})
			var ae *apiError
			if !errors.As(err, &ae) || ae.Code != codeForbidden {
				t.Errorf("withUserTx as service_role = %v, want FORBIDDEN", err)
			}
		})
	}
}

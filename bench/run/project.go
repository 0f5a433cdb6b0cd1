package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"
)

// A project stands in for a Supabase project for the authenticated cases:
// it serves the JWKS of one ES256 key on loopback and has minted a
// manager's access token with it, which zenspa (SUPABASE_URL) and the
// baseline (-jwks-url) both verify: on GET /api/v1/me, and on every POST.
type project struct {
	url   string // SUPABASE_URL
	token string // a signed-in user's access token, valid for six hours
	srv   *http.Server
}

// startProject generates the key, serves its JWKS until stop, and mints the
// token.
func startProject() (*project, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]any{{
		"kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256", "use": "sig",
		"x": b64(key.X.FillBytes(make([]byte, 32))), "y": b64(key.Y.FillBytes(make([]byte, 32))),
	}}})
	p := &project{url: "http://" + ln.Addr().String()}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "max-age=600")
		_, _ = w.Write(jwks)
	})}
	go func() { _ = p.srv.Serve(ln) }()

	now := time.Now().Unix()
	header, _ := json.Marshal(map[string]any{"alg": "ES256", "typ": "JWT", "kid": "bench"})
	claims, _ := json.Marshal(map[string]any{
		"iss": p.url + "/auth/v1", "aud": "authenticated", "role": "authenticated", "exp": now + 6*3600, "iat": now,
		"sub": "5b0c3f8e-2d4a-4e6b-9c1d-7f8e9a0b1c2d", "email": "bench@example.com", "phone": "", "aal": "aal1",
		"session_id": "0d7e2a4b-6c8f-4a1e-b3d5-9f7a1c3e5b7d", "is_anonymous": false, "app_metadata": map[string]any{"provider": "email", "zenspa_role": "manager"},
	})
	input := b64(header) + "." + b64(claims)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return nil, err
	}
	p.token = input + "." + b64(append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...))
	return p, nil
}

// jwksURL is where the project's keys are, as zenspa derives it.
func (p *project) jwksURL() string { return p.url + "/auth/v1/.well-known/jwks.json" }

// stop ends the JWKS server.
func (p *project) stop() { _ = p.srv.Close() }

// String names the project in progress lines.
func (p *project) String() string { return fmt.Sprintf("project %s", p.url) }

package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The verifier's tests: the token rules, judged by tokens from PyJWT, by
// the published RFC examples and by hostile tokens of our own. The JWKS
// fetching and caching tests are in jwks_test.go; both share the fixture
// below. Run them with: go test -race -run 'JWT|JWKS|Token|Verif' .

// jwtTestIssuer and jwtTestSubject are what a Supabase project's tokens say.
const (
	jwtTestIssuer  = "https://abcdefghijklmnop.supabase.co/auth/v1"
	jwtTestSubject = "8d7c2f4e-1b3a-4c5d-9e6f-7a8b9c0d1e2f"
	jwtTestSecret  = "super-secret-jwt-token-with-at-least-32-characters-long"
)

// jwtKeys are the test's signing keys, one of each type the verifier takes.
type jwtKeys struct {
	ec  *ecdsa.PrivateKey
	rsa *rsa.PrivateKey
	ed  ed25519.PrivateKey
}

// jwtTestKeys generates the signing keys once per test binary: an RSA key
// takes a while under the race detector. They are never modified.
var jwtTestKeys = sync.OnceValue(func() *jwtKeys {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return &jwtKeys{ec: ec, rsa: rk, ed: ed}
})

// jwtClock is a test clock that moves only when told.
type jwtClock struct {
	mu sync.Mutex
	t  time.Time
}

// newJWTClock starts a clock at a fixed, recent instant.
func newJWTClock() *jwtClock { return &jwtClock{t: time.Unix(1_760_000_000, 0)} }

// now is the clock's time; pass it as the verifier's clock.
func (c *jwtClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// advance moves the clock forward by d.
func (c *jwtClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// jwtJWKSServer serves a key set that the test can change, and counts the
// requests it gets.
type jwtJWKSServer struct {
	*httptest.Server
	requests atomic.Int64

	mu      sync.Mutex
	body    []byte
	status  int
	headers map[string]string
	delay   time.Duration
}

// newJWTJWKSServer serves keys (public JWKs) until the test ends.
func newJWTJWKSServer(t testing.TB, keys ...map[string]any) *jwtJWKSServer {
	t.Helper()
	s := &jwtJWKSServer{status: http.StatusOK}
	s.setKeys(t, keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		body, status, delay := s.body, s.status, s.delay
		for k, v := range s.headers {
			w.Header().Set(k, v)
		}
		s.mu.Unlock()
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		if etag := w.Header().Get("ETag"); etag != "" && r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// setKeys replaces the set the server publishes.
func (s *jwtJWKSServer) setKeys(t testing.TB, keys ...map[string]any) {
	t.Helper()
	if keys == nil {
		keys = []map[string]any{}
	}
	body, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	s.setBody(body)
}

// setBody replaces the raw body the server answers with.
func (s *jwtJWKSServer) setBody(body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body = body
}

// setStatus changes the status the server answers with.
func (s *jwtJWKSServer) setStatus(code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = code
}

// setDelay makes every answer wait d first.
func (s *jwtJWKSServer) setDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// setHeader adds a response header to every answer; with an ETag, the
// server answers 304 to a matching If-None-Match.
func (s *jwtJWKSServer) setHeader(k, v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.headers == nil {
		s.headers = map[string]string{}
	}
	s.headers[k] = v
}

// jwtFixture is a started verifier with the test keys published as kids
// "es", "rs" and "ed", the HS256 secret configured, and a test clock.
type jwtFixture struct {
	keys  *jwtKeys
	clock *jwtClock
	jwks  *jwtJWKSServer
	logs  *syncBuffer
	v     *verifier
}

// newJWTFixture builds and starts the fixture; mod, if not nil, changes
// the settings first.
func newJWTFixture(t testing.TB, mod func(*authSettings)) *jwtFixture {
	t.Helper()
	keys := jwtTestKeys()
	f := &jwtFixture{keys: keys, clock: newJWTClock(), logs: &syncBuffer{}}
	f.jwks = newJWTJWKSServer(t, jwtPublicJWK("es", &keys.ec.PublicKey), jwtPublicJWK("rs", &keys.rsa.PublicKey), jwtPublicJWK("ed", keys.ed.Public()))
	s := authSettings{
		Issuer:   jwtTestIssuer,
		Audience: "authenticated",
		Secret:   []byte(jwtTestSecret),
		JWKSURL:  f.jwks.URL + "/auth/v1/.well-known/jwks.json",
		JWKSTTL:  10 * time.Minute,
		Leeway:   30 * time.Second,
	}
	if mod != nil {
		mod(&s)
	}
	log := slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f.v = newVerifier(s, log, &http.Client{}, f.clock.now)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.v.start(ctx)
	return f
}

// claims returns valid claims of a Supabase access token issued a minute
// ago and expiring in an hour, by the fixture's clock.
func (f *jwtFixture) claims() map[string]any {
	now := f.clock.now().Unix()
	return map[string]any{
		"iss":          jwtTestIssuer,
		"sub":          jwtTestSubject,
		"aud":          "authenticated",
		"exp":          now + 3600,
		"iat":          now - 60,
		"email":        "ana@example.com",
		"phone":        "",
		"app_metadata": map[string]any{"provider": "email", "providers": []string{"email"}},
		"user_metadata": map[string]any{
			"full_name": "Ana",
		},
		"role":         "authenticated",
		"aal":          "aal1",
		"amr":          []map[string]any{{"method": "password", "timestamp": now - 60}},
		"session_id":   "3f0c4a5e-6b7d-4e8f-9a0b-1c2d3e4f5a6b",
		"is_anonymous": false,
	}
}

// mint signs claims with the fixture key for alg, with the matching kid.
func (f *jwtFixture) mint(t testing.TB, alg string, claims map[string]any) string {
	t.Helper()
	kid := map[string]string{algES256: "es", algRS256: "rs", algEdDSA: "ed"}[alg]
	return jwtSign(t, alg, f.signingKey(alg), map[string]any{"alg": alg, "typ": "JWT", "kid": kid}, claims)
}

// signingKey is the fixture's private key (or secret) for alg.
func (f *jwtFixture) signingKey(alg string) any {
	switch alg {
	case algES256:
		return f.keys.ec
	case algRS256:
		return f.keys.rsa
	case algEdDSA:
		return f.keys.ed
	}
	return []byte(jwtTestSecret)
}

// verify runs the fixture's verifier with a generous deadline.
func (f *jwtFixture) verify(token string) (*identity, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return f.v.verify(ctx, token)
}

// jwtSign encodes header and claims as JSON and signs them; see jwtSignRaw.
func jwtSign(t testing.TB, alg string, key any, header, claims map[string]any) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return jwtSignRaw(t, alg, key, string(h), string(c))
}

// jwtSignRaw signs the exact header and payload JSON text given, so that
// a test can sign what json.Marshal would never write (duplicate members,
// NaN). key is an *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey,
// or []byte for HMAC; alg picks the signature scheme.
func jwtSignRaw(t testing.TB, alg string, key any, header, payload string) string {
	t.Helper()
	input := jwtB64([]byte(header)) + "." + jwtB64([]byte(payload))
	return input + "." + jwtB64(jwtSignature(t, alg, key, input))
}

// jwtSignature is the raw JWS signature of input.
func jwtSignature(t testing.TB, alg string, key any, input string) []byte {
	t.Helper()
	digest := sha256.Sum256([]byte(input))
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		return append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	case *rsa.PrivateKey:
		sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		return sig
	case ed25519.PrivateKey:
		return ed25519.Sign(k, []byte(input))
	case []byte:
		mac := hmac.New(sha256.New, k)
		mac.Write([]byte(input))
		return mac.Sum(nil)
	}
	t.Fatalf("jwtSignature(%s): no signer for %T", alg, key)
	return nil
}

// jwtB64 is unpadded base64url.
func jwtB64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwtPublicJWK is the public JWK of pub with kid, as a JWKS publishes it.
func jwtPublicJWK(kid string, pub crypto.PublicKey) map[string]any {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		b, _ := k.ECDH()
		point := b.Bytes()
		return map[string]any{"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
			"x": jwtB64(point[1:33]), "y": jwtB64(point[33:])}
	case *rsa.PublicKey:
		return map[string]any{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
			"n": jwtB64(k.N.Bytes()), "e": jwtB64(big.NewInt(int64(k.E)).Bytes())}
	case ed25519.PublicKey:
		return map[string]any{"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA", "x": jwtB64(k)}
	}
	panic(fmt.Sprintf("jwtPublicJWK: %T", pub))
}

// jwtRule returns err's rule, or a description of a non-authError.
func jwtRule(err error) string {
	var ae *authError
	if errors.As(err, &ae) {
		return ae.rule
	}
	return fmt.Sprintf("not an *authError: %v", err)
}

// jwtPython runs testdata/jwt/mint.py with request and decodes its answer.
// A machine without PyJWT fails the test: the tokens of an independent
// implementation are the point.
func jwtPython(t testing.TB, request any) (jwks json.RawMessage, tokens []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// PyJWT is a tool beyond PostgreSQL and Redis: a plain go test skips
	// without it, make test (ZENSPA_REQUIRE_TOOLS=1) fails.
	python := requireTool(t, "/usr/bin/python3", "make services-test")
	if out, err := exec.CommandContext(ctx, python, "-c", "import jwt, cryptography").CombinedOutput(); err != nil {
		msg := fmt.Sprintf("/usr/bin/python3 cannot import jwt and cryptography (%v: %s): run `make services-test`, which installs python3-jwt and python3-cryptography", err, bytes.TrimSpace(out))
		if os.Getenv(requireToolsEnv) != "1" {
			t.Skip(msg)
		}
		t.Fatal(msg)
	}
	in, err := json.Marshal(request)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", "testdata/jwt/mint.py")
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("testdata/jwt/mint.py: %v\n%s", err, stderr.String())
	}
	var answer struct {
		JWKS   json.RawMessage `json:"jwks"`
		Tokens []string        `json:"tokens"`
	}
	if err := json.Unmarshal(out, &answer); err != nil {
		t.Fatalf("testdata/jwt/mint.py printed %q: %v", out, err)
	}
	return answer.JWKS, answer.Tokens
}

// jwtTamper returns token with one character of part (0 header, 1
// payload, 2 signature) changed, keeping the base64url alphabet and
// strictness: the middle character of the part gets its lowest bit flipped.
func jwtTamper(token string, part int) string {
	parts := strings.Split(token, ".")
	p := []byte(parts[part])
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := len(p) / 2
	p[i] = alphabet[strings.IndexByte(alphabet, p[i])^1]
	parts[part] = string(p)
	return strings.Join(parts, ".")
}

// TestVerifyTokenPyJWT verifies tokens that PyJWT signed, with keys that
// PyJWT generated and rendered as JWKs, and refuses them once tampered.
func TestVerifyTokenPyJWT(t *testing.T) {
	f := newJWTFixture(t, nil)
	request := map[string]any{
		"secret": jwtTestSecret,
		"keys":   []map[string]string{{"alg": "ES256", "kid": "py-es"}, {"alg": "RS256", "kid": "py-rs"}, {"alg": "EdDSA", "kid": "py-ed"}},
		"tokens": []map[string]any{
			{"alg": "ES256", "kid": "py-es", "claims": f.claims()},
			{"alg": "RS256", "kid": "py-rs", "claims": f.claims()},
			{"alg": "EdDSA", "kid": "py-ed", "claims": f.claims()},
			{"alg": "HS256", "claims": f.claims()},
			{"alg": "HS256", "kid": "legacy-kid", "claims": f.claims()},
		},
	}
	jwks, tokens := jwtPython(t, request)
	f.jwks.setBody(jwks)
	f.clock.advance(jwksMinRefetch) // the new kids are learnt by the refetch they trigger

	for i, token := range tokens {
		alg := request["tokens"].([]map[string]any)[i]["alg"].(string)
		t.Run(fmt.Sprintf("%d-%s", i, alg), func(t *testing.T) {
			id, err := f.verify(token)
			if err != nil {
				t.Fatalf("verify(PyJWT %s token) = %v, want an identity", alg, err)
			}
			if id.Subject != jwtTestSubject || id.Role != "authenticated" {
				t.Errorf("verify(PyJWT %s token) = sub %q role %q, want %q authenticated", alg, id.Subject, id.Role, jwtTestSubject)
			}
			// A tampered header may break any header rule first; a tampered
			// payload or signature breaks the signature.
			var ae *authError
			if _, err := f.verify(jwtTamper(token, 0)); !errors.As(err, &ae) {
				t.Errorf("verify(PyJWT %s token, header tampered) = %v, want an *authError", alg, err)
			}
			for part, name := range map[int]string{1: "payload", 2: "signature"} {
				if _, err := f.verify(jwtTamper(token, part)); jwtRule(err) != ruleSignatureInvalid {
					t.Errorf("verify(PyJWT %s token, %s tampered) = %v, want signature_invalid", alg, name, err)
				}
			}
		})
	}
}

// The published examples of RFC 7515 appendix A and RFC 8037 appendix A:
// test data, embedded as printed.
const (
	rfc7515Payload = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
	rfc7515A1      = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9." + rfc7515Payload + ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	rfc7515A1Key   = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
	rfc7515A2      = "eyJhbGciOiJSUzI1NiJ9." + rfc7515Payload + "." +
		"cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7" +
		"AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4" +
		"BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K" +
		"0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv" +
		"hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB" +
		"p0igcN_IoypGlUPQGe77Rw"
	rfc7515A2N = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddx" +
		"HmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMs" +
		"D1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSH" +
		"SXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdV" +
		"MTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8" +
		"NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"
	rfc7515A3  = "eyJhbGciOiJFUzI1NiJ9." + rfc7515Payload + ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
	rfc7515A3X = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"
	rfc7515A3Y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
	rfc7515A5  = "eyJhbGciOiJub25lIn0." + rfc7515Payload + "."
	rfc8037A4  = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
	rfc8037A2X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
)

// TestVerifyTokenRFCExamples checks the signature layer against the RFC
// examples. Their claims (iss "joe", exp in 2011, no kid) do not fit a
// Supabase token, so the signatures are checked below the claim rules;
// and the HS256 one, through the whole verifier with the clock set back,
// must fail on a claim rule, not on its signature.
func TestVerifyTokenRFCExamples(t *testing.T) {
	jwk := func(m map[string]any) *verificationKey {
		t.Helper()
		raw, _ := json.Marshal(m)
		k, err := parseJWK(raw)
		if err != nil {
			t.Fatalf("parseJWK(%s) = %v", raw, err)
		}
		return k
	}
	rsaKey := jwk(map[string]any{"kty": "RSA", "kid": "rfc7515-a2", "n": rfc7515A2N, "e": "AQAB"})
	ecKey := jwk(map[string]any{"kty": "EC", "kid": "rfc7515-a3", "crv": "P-256", "x": rfc7515A3X, "y": rfc7515A3Y})
	edKey := jwk(map[string]any{"kty": "OKP", "kid": "rfc8037", "crv": "Ed25519", "x": rfc8037A2X})
	secret, _ := base64.RawURLEncoding.DecodeString(rfc7515A1Key)

	for _, tc := range []struct {
		name, token string
		check       func(*jwtToken) *authError
	}{
		{"RFC7515-A.1-HS256", rfc7515A1, func(tok *jwtToken) *authError { return verifyHMAC(secret, tok.signingInput, tok.signature) }},
		{"RFC7515-A.2-RS256", rfc7515A2, func(tok *jwtToken) *authError { return rsaKey.verify(tok.header.alg, tok.signingInput, tok.signature) }},
		{"RFC7515-A.3-ES256", rfc7515A3, func(tok *jwtToken) *authError { return ecKey.verify(tok.header.alg, tok.signingInput, tok.signature) }},
		{"RFC8037-A.4-EdDSA", rfc8037A4, func(tok *jwtToken) *authError { return edKey.verify(tok.header.alg, tok.signingInput, tok.signature) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := parseToken(tc.token)
			if err != nil {
				t.Fatalf("parseToken(%s) = %v, want parts", tc.name, err)
			}
			if err := tc.check(tok); err != nil {
				t.Errorf("signature of %s = %v, want valid", tc.name, err)
			}
			bad, err := parseToken(jwtTamper(tc.token, 1))
			if err != nil {
				t.Fatalf("parseToken(%s, payload tampered) = %v, want parts", tc.name, err)
			}
			if err := tc.check(bad); jwtRule(err) != ruleSignatureInvalid {
				t.Errorf("signature of %s with its payload tampered = %v, want signature_invalid", tc.name, err)
			}
		})
	}

	t.Run("RFC7515-A.1-through-verify", func(t *testing.T) {
		clock := &jwtClock{t: time.Unix(1300819380-60, 0)}
		v := newVerifier(authSettings{Issuer: "joe", Secret: secret}, slog.New(slog.DiscardHandler), nil, clock.now)
		// Its signature verifies and its issuer matches: the first rule it
		// breaks is the audience, which the example does not have.
		if _, err := v.verify(context.Background(), rfc7515A1); jwtRule(err) != ruleAudienceMismatch {
			t.Errorf("verify(A.1, iss joe, before its exp) = %v, want aud_mismatch", err)
		}
		if _, err := v.verify(context.Background(), jwtTamper(rfc7515A1, 2)); jwtRule(err) != ruleSignatureInvalid {
			t.Errorf("verify(A.1 with its signature tampered) = %v, want signature_invalid", err)
		}
	})

	t.Run("RFC7515-A.5-none", func(t *testing.T) {
		if _, err := parseToken(rfc7515A5); jwtRule(err) != ruleAlgNone {
			t.Errorf("parseToken(A.5) = %v, want alg_none", err)
		}
		f := newJWTFixture(t, nil)
		if _, err := f.verify(rfc7515A5); jwtRule(err) != ruleAlgNone {
			t.Errorf("verify(A.5) = %v, want alg_none", err)
		}
	})
}

// TestVerifyTokenAccepts covers the valid shapes: each algorithm, aud as
// an array, and the edges of the leeway.
func TestVerifyTokenAccepts(t *testing.T) {
	f := newJWTFixture(t, nil)
	now := f.clock.now().Unix()
	for _, tc := range []struct {
		name   string
		alg    string
		change map[string]any
		drop   []string
	}{
		{"ES256", algES256, nil, nil},
		{"RS256", algRS256, nil, nil},
		{"EdDSA", algEdDSA, nil, nil},
		{"HS256", algHS256, nil, nil},
		{"aud array", algES256, map[string]any{"aud": []string{"other", "authenticated"}}, nil},
		{"exp within leeway", algES256, map[string]any{"exp": now - 29}, nil},
		{"exp fractional", algES256, map[string]any{"exp": float64(now) + 0.5}, nil},
		{"nbf within leeway", algES256, map[string]any{"nbf": now + 29}, nil},
		{"iat within leeway", algES256, map[string]any{"iat": now + 29}, nil},
		{"anonymous user", algES256, map[string]any{"is_anonymous": true, "email": "", "role": "authenticated"}, nil},
		{"optional claims null", algES256, map[string]any{"email": nil, "phone": nil, "app_metadata": nil}, nil},
		{"uppercase uuid", algES256, map[string]any{"sub": strings.ToUpper(jwtTestSubject)}, nil},
		{"no optional claims", algES256, nil, []string{"email", "phone", "aal", "session_id", "is_anonymous", "app_metadata", "user_metadata", "amr", "iat"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			claims := f.claims()
			for k, v := range tc.change {
				claims[k] = v
			}
			for _, k := range tc.drop {
				delete(claims, k)
			}
			if _, err := f.verify(f.mint(t, tc.alg, claims)); err != nil {
				t.Errorf("verify(%s, %v) = %v, want an identity", tc.alg, tc.change, err)
			}
		})
	}
}

// TestVerifyTokenIdentity checks what the identity carries.
func TestVerifyTokenIdentity(t *testing.T) {
	f := newJWTFixture(t, nil)
	claims := f.claims()
	claims["app_metadata"] = map[string]any{"provider": "email", "tenant": 12345678901234567}
	claims["is_anonymous"] = true
	claims["phone"] = "+351910000000"
	token := f.mint(t, algES256, claims)
	id, err := f.verify(token)
	if err != nil {
		t.Fatalf("verify = %v, want an identity", err)
	}
	want := identity{Subject: jwtTestSubject, Email: "ana@example.com", Phone: "+351910000000", Role: "authenticated",
		AAL: "aal1", SessionID: "3f0c4a5e-6b7d-4e8f-9a0b-1c2d3e4f5a6b", IsAnonymous: true,
		Expires: time.Unix(claims["exp"].(int64), 0)}
	got := *id
	got.AppMetadata, got.Claims, got.notBefore = nil, nil, time.Time{}
	if !got.Expires.Equal(want.Expires) {
		t.Errorf("identity.Expires = %v, want %v", got.Expires, want.Expires)
	}
	got.Expires = want.Expires
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("identity = %+v, want %+v", got, want)
	}
	if n, _ := id.AppMetadata["tenant"].(json.Number); n.String() != "12345678901234567" {
		t.Errorf("identity.AppMetadata[tenant] = %#v, want json.Number 12345678901234567", id.AppMetadata["tenant"])
	}
	payload, _ := jwtBase64.DecodeString(strings.Split(token, ".")[1])
	if !bytes.Equal(id.Claims, payload) {
		t.Errorf("identity.Claims = %s, want the payload %s", id.Claims, payload)
	}
	// A cache hit answers the same, and the caller's copy is its own.
	id.Subject = "changed by the caller"
	again, err := f.verify(token)
	if err != nil || again.Subject != jwtTestSubject {
		t.Errorf("verify again = %+v, %v; want sub %s", again, err, jwtTestSubject)
	}
}

// jwtHostileCase is one token the verifier must refuse, with the rule.
type jwtHostileCase struct {
	name  string
	token string
	rule  string
}

// jwtHostileTokens builds the hostile tokens against fixture f. jku is
// the URL of a server that must never be asked for anything.
func jwtHostileTokens(t testing.TB, f *jwtFixture, jku string) []jwtHostileCase {
	t.Helper()
	keys := f.keys
	es := func(header map[string]any, claims map[string]any) string {
		return jwtSign(t, algES256, keys.ec, header, claims)
	}
	esHeader := map[string]any{"alg": "ES256", "typ": "JWT", "kid": "es"}
	with := func(change map[string]any) map[string]any { return edited(f.claims(), change) }
	headerWith := func(change map[string]any) map[string]any { return edited(esHeader, change) }
	good := f.mint(t, algES256, f.claims())
	goodParts := strings.Split(good, ".")
	now := f.clock.now().Unix()
	claimsJSON, _ := json.Marshal(f.claims())
	// rawClaims replaces the exp member of valid claims JSON text.
	rawClaims := func(exp string) string {
		return strings.Replace(string(claimsJSON), fmt.Sprintf(`"exp":%d`, now+3600), exp, 1)
	}
	esRaw := func(payload string) string {
		return jwtSignRaw(t, algES256, keys.ec, `{"alg":"ES256","typ":"JWT","kid":"es"}`, payload)
	}

	// Key confusion: HS256 with the public key's bytes as the secret.
	spki, _ := x509.MarshalPKIXPublicKey(&keys.rsa.PublicKey)
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})
	rsaJWK, _ := json.Marshal(jwtPublicJWK("rs", &keys.rsa.PublicKey))
	hsHeader := map[string]any{"alg": "HS256", "typ": "JWT", "kid": "rs"}

	// ES256 signatures of the wrong shape, over the good signing input.
	input := goodParts[0] + "." + goodParts[1]
	sig := jwtSignature(t, algES256, keys.ec, input)
	digest := sha256.Sum256([]byte(input))
	der, _ := ecdsa.SignASN1(rand.Reader, keys.ec, digest[:])
	n := elliptic.P256().Params().N.FillBytes(make([]byte, 32))
	withSig := func(s []byte) string { return input + "." + jwtB64(s) }
	cat := func(a, b []byte) []byte { return append(append([]byte{}, a...), b...) }
	zero := make([]byte, 32)
	ones := bytes.Repeat([]byte{0xff}, 32)

	// A strict decoder refuses a last character with stray low bits,
	// which a lenient one would decode to the same signature.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := good[len(good)-1]
	strayBits := good[:len(good)-1] + string(alphabet[strings.IndexByte(alphabet, last)|1])

	// A stranger's key, for tokens that bring their own.
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	strangerJWK := jwtPublicJWK("stranger", &stranger.PublicKey)

	deep := strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40)

	return []jwtHostileCase{
		// Structure.
		{"empty", "", ruleMalformed},
		{"10000 dots", strings.Repeat(".", 10_000), ruleTooLarge},
		{"8000 dots", strings.Repeat(".", 8_000), ruleMalformed},
		{"100 KiB token", goodParts[0] + "." + strings.Repeat("A", 100<<10) + "." + goodParts[2], ruleTooLarge},
		{"two parts", goodParts[0] + "." + goodParts[1], ruleMalformed},
		{"four parts", good + "." + goodParts[2], ruleMalformed},
		{"empty header", "." + goodParts[1] + "." + goodParts[2], ruleMalformed},
		{"padding in signature", good + "==", ruleEncoding},
		{"padding in payload", goodParts[0] + "." + goodParts[1] + "=." + goodParts[2], ruleEncoding},
		{"standard base64 alphabet", strings.NewReplacer("-", "+", "_", "/").Replace(good) + "+", ruleEncoding},
		{"stray bits in signature", strayBits, ruleEncoding},
		{"newline in signature", good[:len(good)-10] + "\n" + good[len(good)-10:], ruleEncoding},
		{"space in token", " " + good, ruleEncoding},
		{"sb_secret key", "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz", ruleMalformed},
		{"sb_publishable key", "sb_publishable_ZjB1X2dhbGxlcnlfc2VydmljZQ", ruleMalformed},
		{"header not JSON", jwtB64([]byte("not json")) + "." + goodParts[1] + "." + goodParts[2], ruleHeaderInvalid},
		{"header an array", jwtB64([]byte(`["ES256"]`)) + "." + goodParts[1] + "." + goodParts[2], ruleHeaderInvalid},
		{"header trailing data", jwtB64([]byte(`{"alg":"ES256","kid":"es"} {}`)) + "." + goodParts[1] + "." + goodParts[2], ruleHeaderInvalid},
		{"header invalid UTF-8", jwtB64([]byte("{\"alg\":\"ES256\",\"kid\":\"es\xff\"}")) + "." + goodParts[1] + "." + goodParts[2], ruleHeaderInvalid},

		// Algorithms.
		{"alg none", jwtB64([]byte(`{"alg":"none"}`)) + "." + goodParts[1] + ".", ruleAlgNone},
		{"alg None", jwtB64([]byte(`{"alg":"None"}`)) + "." + goodParts[1] + ".", ruleAlgNone},
		{"alg NONE", jwtB64([]byte(`{"alg":"NONE"}`)) + "." + goodParts[1] + ".", ruleAlgNone},
		{"alg nOnE with a signature", jwtB64([]byte(`{"alg":"nOnE","kid":"es"}`)) + "." + goodParts[1] + "." + goodParts[2], ruleAlgNone},
		{"alg missing", es(headerWith(map[string]any{"alg": nil}), f.claims()), ruleHeaderInvalid},
		{"alg not a string", es(headerWith(map[string]any{"alg": 256}), f.claims()), ruleHeaderInvalid},
		{"alg es256 lowercase", es(headerWith(map[string]any{"alg": "es256"}), f.claims()), ruleAlgUnsupported},
		{"alg ES384", es(headerWith(map[string]any{"alg": "ES384"}), f.claims()), ruleAlgUnsupported},
		{"alg PS256", es(headerWith(map[string]any{"alg": "PS256"}), f.claims()), ruleAlgUnsupported},
		{"alg HS512", es(headerWith(map[string]any{"alg": "HS512"}), f.claims()), ruleAlgUnsupported},
		{"duplicate alg", jwtSignRaw(t, algES256, keys.ec, `{"alg":"HS256","alg":"ES256","kid":"es"}`, string(claimsJSON)), ruleHeaderInvalid},
		{"HS256 with the RSA key's PEM as secret", jwtSign(t, algHS256, rsaPEM, hsHeader, f.claims()), ruleSignatureInvalid},
		{"HS256 with the RSA key's JWK as secret", jwtSign(t, algHS256, rsaJWK, hsHeader, f.claims()), ruleSignatureInvalid},
		{"HS256 with the RSA modulus as secret", jwtSign(t, algHS256, keys.rsa.N.Bytes(), hsHeader, f.claims()), ruleSignatureInvalid},
		{"ES256 kid naming the RSA key", jwtSign(t, algES256, keys.ec, headerWith(map[string]any{"kid": "rs"}), f.claims()), ruleAlgKeyMismatch},
		{"RS256 kid naming the EC key", jwtSign(t, algRS256, keys.rsa, map[string]any{"alg": "RS256", "kid": "es"}, f.claims()), ruleAlgKeyMismatch},
		{"EdDSA kid naming the EC key", jwtSign(t, algEdDSA, keys.ed, map[string]any{"alg": "EdDSA", "kid": "es"}, f.claims()), ruleAlgKeyMismatch},

		// Key references and extensions: never followed.
		{"crit", es(headerWith(map[string]any{"crit": []string{"exp"}, "exp": now + 3600}), f.claims()), ruleHeaderCrit},
		{"crit b64", es(headerWith(map[string]any{"crit": []string{"b64"}, "b64": false}), f.claims()), ruleHeaderCrit},
		{"jku", jwtSign(t, algES256, stranger, headerWith(map[string]any{"kid": "stranger", "jku": jku}), f.claims()), ruleHeaderKeyRef},
		{"x5u", jwtSign(t, algES256, stranger, headerWith(map[string]any{"kid": "stranger", "x5u": jku}), f.claims()), ruleHeaderKeyRef},
		{"jwk embedded", jwtSign(t, algES256, stranger, headerWith(map[string]any{"kid": "stranger", "jwk": strangerJWK}), f.claims()), ruleHeaderKeyRef},
		{"jwk embedded without kid", jwtSign(t, algES256, stranger, headerWith(map[string]any{"kid": nil, "jwk": strangerJWK}), f.claims()), ruleHeaderKeyRef},
		{"x5c", es(headerWith(map[string]any{"x5c": []string{"MIIB"}}), f.claims()), ruleHeaderKeyRef},
		{"kid missing", es(headerWith(map[string]any{"kid": nil}), f.claims()), ruleKidMissing},
		{"kid not a string", es(headerWith(map[string]any{"kid": 7}), f.claims()), ruleHeaderInvalid},
		{"kid unknown", jwtSign(t, algES256, stranger, headerWith(map[string]any{"kid": "stranger"}), f.claims()), ruleKidUnknown},
		{"kid known, stranger's signature", jwtSign(t, algES256, stranger, esHeader, f.claims()), ruleSignatureInvalid},

		// Signatures.
		{"payload tampered", jwtTamper(good, 1), ruleSignatureInvalid},
		{"signature tampered", jwtTamper(good, 2), ruleSignatureInvalid},
		{"no signature", input + ".", ruleSignatureFormat},
		{"ES256 DER signature", withSig(der), ruleSignatureFormat},
		{"ES256 63-byte signature", withSig(sig[:63]), ruleSignatureFormat},
		{"ES256 65-byte signature", withSig(append(cat(sig, nil), 0)), ruleSignatureFormat},
		{"ES256 r zero", withSig(cat(zero, sig[32:])), ruleSignatureInvalid},
		{"ES256 s zero", withSig(cat(sig[:32], zero)), ruleSignatureInvalid},
		{"ES256 r and s zero", withSig(cat(zero, zero)), ruleSignatureInvalid},
		{"ES256 r = n", withSig(cat(n, sig[32:])), ruleSignatureInvalid},
		{"ES256 s = n", withSig(cat(sig[:32], n)), ruleSignatureInvalid},
		{"ES256 r > n", withSig(cat(ones, sig[32:])), ruleSignatureInvalid},
		{"ES256 s > n", withSig(cat(sig[:32], ones)), ruleSignatureInvalid},
		{"RS256 short signature", func() string {
			tok := f.mint(t, algRS256, f.claims())
			p := strings.Split(tok, ".")
			s, _ := jwtBase64.DecodeString(p[2])
			return p[0] + "." + p[1] + "." + jwtB64(s[1:])
		}(), ruleSignatureFormat},
		{"EdDSA 63-byte signature", func() string {
			tok := f.mint(t, algEdDSA, f.claims())
			p := strings.Split(tok, ".")
			s, _ := jwtBase64.DecodeString(p[2])
			return p[0] + "." + p[1] + "." + jwtB64(s[:63])
		}(), ruleSignatureFormat},
		{"HS256 31-byte signature", func() string {
			tok := f.mint(t, algHS256, f.claims())
			p := strings.Split(tok, ".")
			s, _ := jwtBase64.DecodeString(p[2])
			return p[0] + "." + p[1] + "." + jwtB64(s[:31])
		}(), ruleSignatureFormat},
		{"HS256 other secret", jwtSign(t, algHS256, []byte("another secret of at least 32 bytes ....."), map[string]any{"alg": "HS256"}, f.claims()), ruleSignatureInvalid},

		// Claims, each token validly signed.
		{"claims not JSON", esRaw("not json"), ruleClaimsInvalid},
		{"claims an array", esRaw(`[1,2]`), ruleClaimsInvalid},
		{"claims trailing data", esRaw(string(claimsJSON) + "{}"), ruleClaimsInvalid},
		{"claims invalid UTF-8", esRaw(strings.Replace(string(claimsJSON), "Ana", "An\xe1", 1)), ruleClaimsInvalid},
		{"claims nested too deep", esRaw(strings.Replace(string(claimsJSON), `{"provider"`, `{"deep":`+deep+`,"provider"`, 1)), ruleClaimsInvalid},
		{"duplicate exp", esRaw(rawClaims(fmt.Sprintf(`"exp":%d,"exp":%d`, now-7200, now+3600))), ruleClaimsInvalid},
		{"duplicate sub", esRaw(strings.Replace(string(claimsJSON), `"sub":`, `"sub":"00000000-0000-0000-0000-000000000000","sub":`, 1)), ruleClaimsInvalid},
		{"duplicate escaped name", esRaw(rawClaims(fmt.Sprintf(`"exp":%d,"\u0065xp":%d`, now+3600, now+3600))), ruleClaimsInvalid},
		{"duplicate nested", esRaw(strings.Replace(string(claimsJSON), `"provider":"email"`, `"provider":"email","provider":"google"`, 1)), ruleClaimsInvalid},
		{"EXP only", esRaw(rawClaims(fmt.Sprintf(`"EXP":%d`, now+3600))), ruleExpMissing},
		{"Exp only", esRaw(rawClaims(fmt.Sprintf(`"Exp":%d`, now+3600))), ruleExpMissing},
		{"exp missing", es(esHeader, with(map[string]any{"exp": nil})), ruleExpMissing},
		{"exp string", es(esHeader, with(map[string]any{"exp": fmt.Sprint(now + 3600)})), ruleExpInvalid},
		{"exp string NaN", es(esHeader, with(map[string]any{"exp": "NaN"})), ruleExpInvalid},
		{"exp bare NaN", esRaw(rawClaims(`"exp":NaN`)), ruleClaimsInvalid},
		{"exp 1e309", esRaw(rawClaims(`"exp":1e309`)), ruleExpInvalid},
		{"exp negative", es(esHeader, with(map[string]any{"exp": -1})), ruleExpInvalid},
		{"exp true", es(esHeader, with(map[string]any{"exp": true})), ruleExpInvalid},
		{"exp null", esRaw(rawClaims(`"exp":null`)), ruleExpInvalid},
		{"exp beyond year 9999", es(esHeader, with(map[string]any{"exp": 1e12})), ruleExpInvalid},
		{"expired", es(esHeader, with(map[string]any{"exp": now - 31})), ruleExpired},
		{"expired at the leeway's edge", es(esHeader, with(map[string]any{"exp": now - 30})), ruleExpired},
		{"nbf in the future", es(esHeader, with(map[string]any{"nbf": now + 31})), ruleNotYetValid},
		{"nbf string", es(esHeader, with(map[string]any{"nbf": "soon"})), ruleNbfInvalid},
		{"iat in the future", es(esHeader, with(map[string]any{"iat": now + 31})), ruleIssuedInFuture},
		{"iat negative", es(esHeader, with(map[string]any{"iat": -5})), ruleIatInvalid},
		{"iss with trailing slash", es(esHeader, with(map[string]any{"iss": jwtTestIssuer + "/"})), ruleIssuerMismatch},
		{"iss other case", es(esHeader, with(map[string]any{"iss": strings.ToUpper(jwtTestIssuer)})), ruleIssuerMismatch},
		{"iss missing", es(esHeader, with(map[string]any{"iss": nil})), ruleIssuerMismatch},
		{"iss an array", es(esHeader, with(map[string]any{"iss": []string{jwtTestIssuer}})), ruleIssuerMismatch},
		{"aud missing", es(esHeader, with(map[string]any{"aud": nil})), ruleAudienceMismatch},
		{"aud other", es(esHeader, with(map[string]any{"aud": []string{"other"}})), ruleAudienceMismatch},
		{"aud anon", es(esHeader, with(map[string]any{"aud": "anon"})), ruleAudienceMismatch},
		{"aud a number", es(esHeader, with(map[string]any{"aud": 1})), ruleAudienceMismatch},
		{"aud array with a number", es(esHeader, with(map[string]any{"aud": []any{"authenticated", 1}})), ruleAudienceMismatch},
		{"sub not a UUID", es(esHeader, with(map[string]any{"sub": "admin"})), ruleSubjectInvalid},
		{"sub UUID without dashes", es(esHeader, with(map[string]any{"sub": strings.ReplaceAll(jwtTestSubject, "-", "")})), ruleSubjectInvalid},
		{"sub missing", es(esHeader, with(map[string]any{"sub": nil})), ruleSubjectInvalid},
		{"sub a number", es(esHeader, with(map[string]any{"sub": 42})), ruleSubjectInvalid},
		{"role missing", es(esHeader, with(map[string]any{"role": nil})), ruleRoleMissing},
		{"role empty", es(esHeader, with(map[string]any{"role": ""})), ruleRoleMissing},
		{"email a number", es(esHeader, with(map[string]any{"email": 5})), ruleClaimType},
		{"is_anonymous a string", es(esHeader, with(map[string]any{"is_anonymous": "false"})), ruleClaimType},
		{"app_metadata an array", es(esHeader, with(map[string]any{"app_metadata": []string{"admin"}})), ruleClaimType},

		// Supabase's legacy API keys: HS256 JWTs signed with the very
		// secret the verifier holds, but no access tokens.
		{"legacy anon key", jwtSign(t, algHS256, []byte(jwtTestSecret), map[string]any{"alg": "HS256", "typ": "JWT"},
			map[string]any{"iss": "supabase", "ref": "abcdefghijklmnop", "role": "anon", "iat": now - 86400, "exp": now + 86400*3650}), ruleIssuerMismatch},
		{"legacy service_role key", jwtSign(t, algHS256, []byte(jwtTestSecret), map[string]any{"alg": "HS256", "typ": "JWT"},
			map[string]any{"iss": "supabase", "ref": "abcdefghijklmnop", "role": "service_role", "iat": now - 86400, "exp": now + 86400*3650}), ruleIssuerMismatch},
		{"legacy anon key with our iss", jwtSign(t, algHS256, []byte(jwtTestSecret), map[string]any{"alg": "HS256", "typ": "JWT"},
			map[string]any{"iss": jwtTestIssuer, "ref": "abcdefghijklmnop", "role": "anon", "iat": now - 86400, "exp": now + 86400*3650}), ruleAudienceMismatch},
	}
}

// TestVerifyTokenHostile refuses every hostile token with the rule it
// breaks, without a panic and without asking anyone for a key.
func TestVerifyTokenHostile(t *testing.T) {
	f := newJWTFixture(t, nil)
	var keyRequests atomic.Int64
	trap := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keyRequests.Add(1)
		http.Error(w, "no", http.StatusTeapot)
	}))
	t.Cleanup(trap.Close)
	fetches := f.jwks.requests.Load()

	cases := jwtHostileTokens(t, f, trap.URL+"/keys.json")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := f.verify(tc.token)
			if id != nil || jwtRule(err) != tc.rule {
				t.Errorf("verify(%s) = %v, %v; want nil, %s", tc.name, id, err, tc.rule)
			}
		})
	}
	if n := keyRequests.Load(); n != 0 {
		t.Errorf("the jku/x5u server got %d requests, want 0", n)
	}
	// The one unknown kid may not refetch: the set is seconds old.
	if n := f.jwks.requests.Load() - fetches; n != 0 {
		t.Errorf("hostile tokens caused %d JWKS fetches, want 0", n)
	}

	t.Run("HS256 without a secret configured", func(t *testing.T) {
		g := newJWTFixture(t, func(s *authSettings) { s.Secret = nil })
		spki, _ := x509.MarshalPKIXPublicKey(&g.keys.rsa.PublicKey)
		rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})
		rsaJWK, _ := json.Marshal(jwtPublicJWK("rs", &g.keys.rsa.PublicKey))
		for _, secret := range [][]byte{rsaPEM, rsaJWK, []byte(jwtTestSecret), {}} {
			token := jwtSign(t, algHS256, secret, map[string]any{"alg": "HS256", "kid": "rs"}, g.claims())
			if _, err := g.verify(token); jwtRule(err) != ruleAlgNotConfigured {
				t.Errorf("verify(HS256 signed with %.20q…, no secret configured) = %v, want alg_not_configured", secret, err)
			}
		}
	})

	t.Run("asymmetric without a JWKS URL", func(t *testing.T) {
		g := newJWTFixture(t, func(s *authSettings) { s.JWKSURL = "" })
		if _, err := g.verify(g.mint(t, algES256, g.claims())); jwtRule(err) != ruleAlgNotConfigured {
			t.Errorf("verify(ES256, no JWKS URL) = %v, want alg_not_configured", err)
		}
		if _, err := g.verify(g.mint(t, algHS256, g.claims())); err != nil {
			t.Errorf("verify(HS256, no JWKS URL) = %v, want an identity", err)
		}
	})
}

// TestVerifyTokenCache checks that a cached token still obeys the clock,
// and that the cache is bounded.
func TestVerifyTokenCache(t *testing.T) {
	f := newJWTFixture(t, nil)
	claims := f.claims()
	claims["exp"] = f.clock.now().Unix() + 120
	for _, alg := range []string{algES256, algHS256} {
		token := f.mint(t, alg, claims)
		for i := range 3 {
			if _, err := f.verify(token); err != nil {
				t.Fatalf("verify(%s) #%d = %v, want an identity", alg, i, err)
			}
		}
	}
	if s := f.v.stats(); s.CacheHits != 4 || s.OK != 6 || s.CachedTokens != 2 {
		t.Errorf("stats after 2 tokens verified 3 times = %+v, want 6 ok, 4 cache hits, 2 cached", s)
	}

	// Past exp plus leeway, the cached tokens are refused and dropped.
	f.clock.advance(120*time.Second + 30*time.Second)
	for _, alg := range []string{algES256, algHS256} {
		if _, err := f.verify(f.mint(t, alg, claims)); jwtRule(err) != ruleExpired {
			t.Errorf("verify(cached %s token past exp+leeway) = %v, want expired", alg, err)
		}
	}

	t.Run("bounded", func(t *testing.T) {
		c := newTokenCache(3, 1<<20)
		for i := range 5 {
			c.put(&cachedToken{hash: sha256.Sum256([]byte{byte(i)}), id: &identity{Claims: []byte("{}")}})
		}
		if c.len() != 3 || c.get(sha256.Sum256([]byte{0})) != nil || c.get(sha256.Sum256([]byte{4})) == nil {
			t.Errorf("cache of 3 after 5 puts: len %d, want 3, the oldest gone, the newest kept", c.len())
		}
		small := newTokenCache(100, 10)
		for i := range 5 {
			small.put(&cachedToken{hash: sha256.Sum256([]byte{byte(i)}), id: &identity{Claims: []byte("1234")}})
		}
		if small.len() != 2 {
			t.Errorf("cache of 10 bytes after five 4-byte entries: len %d, want 2", small.len())
		}
	})
}

// TestVerifierLogsRefusals checks the refusal log: the rule and kid, at
// WARN once per interval and at DEBUG between, and never the token.
func TestVerifierLogsRefusals(t *testing.T) {
	f := newJWTFixture(t, nil)
	cases := jwtHostileTokens(t, f, "https://attacker.example/keys.json")
	before := len(f.logs.String())
	for _, tc := range cases {
		f.verify(tc.token)
	}
	f.clock.advance(authWarnInterval)
	expired := f.mint(t, algES256, map[string]any{"iss": jwtTestIssuer, "aud": "authenticated", "sub": jwtTestSubject, "role": "authenticated", "exp": f.clock.now().Unix() - 60})
	f.verify(expired)
	logs := f.logs.String()[before:]

	if n := strings.Count(logs, "level=WARN msg=\"token refused\""); n != 2 {
		t.Errorf("WARN lines for %d refusals over one interval = %d, want 2:\n%s", len(cases)+1, n, logs)
	}
	if n := strings.Count(logs, "level=DEBUG msg=\"token refused\""); n != len(cases)-1 {
		t.Errorf("DEBUG lines = %d, want %d", n, len(cases)-1)
	}
	for _, want := range []string{"rule=" + ruleKidUnknown + " kid=stranger", "rule=expired kid=es sub=" + jwtTestSubject, "rule=" + ruleAlgNone} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	for _, tc := range append(cases, jwtHostileCase{name: "expired", token: expired}) {
		for i, part := range strings.Split(tc.token, ".") {
			if len(part) >= 16 && i > 0 && strings.Contains(logs, part) {
				t.Errorf("log shows part %d of token %q", i, tc.name)
			}
		}
	}
}

// FuzzVerifyToken feeds the verifier arbitrary strings: it must never
// panic, never answer anything but an identity or an *authError, and
// accept only a token whose signature one of the test keys made.
func FuzzVerifyToken(f *testing.F) {
	fx := newJWTFixture(f, nil)
	for _, alg := range []string{algES256, algRS256, algEdDSA, algHS256} {
		f.Add(fx.mint(f, alg, fx.claims()))
	}
	for _, tc := range jwtHostileTokens(f, fx, "https://attacker.example/keys.json") {
		if len(tc.token) < 4<<10 {
			f.Add(tc.token)
		}
	}
	f.Fuzz(func(t *testing.T, token string) {
		id, err := fx.verify(token)
		var ae *authError
		switch {
		case err == nil && id == nil:
			t.Fatalf("verify(%q) = nil, nil", token)
		case err != nil && !errors.As(err, &ae):
			t.Fatalf("verify(%q) = %v, want nil or an *authError", token, err)
		case err == nil && !jwtSignedByTestKey(fx.keys, token):
			t.Fatalf("verify(%q) accepted a token no test key signed", token)
		}
	})
}

// jwtSignedByTestKey is the fuzz oracle, independent of the verifier's
// parsing: does one of the test keys sign the token's first two parts?
func jwtSignedByTestKey(keys *jwtKeys, token string) bool {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return false
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(parts[2])
	if err != nil {
		return false
	}
	input := []byte(parts[0] + "." + parts[1])
	digest := sha256.Sum256(input)
	mac := hmac.New(sha256.New, []byte(jwtTestSecret))
	mac.Write(input)
	return hmac.Equal(mac.Sum(nil), sig) ||
		len(sig) == 64 && ecdsa.Verify(&keys.ec.PublicKey, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) ||
		rsa.VerifyPKCS1v15(&keys.rsa.PublicKey, crypto.SHA256, digest[:], sig) == nil ||
		len(sig) == 64 && ed25519.Verify(keys.ed.Public().(ed25519.PublicKey), input, sig)
}

// BenchmarkVerify measures one verification per token of each algorithm,
// with the token cache out of the way, and one answer from the cache.
func BenchmarkVerify(b *testing.B) {
	f := newJWTFixture(b, nil)
	uncached := newJWTFixture(b, nil)
	uncached.v.tokens = newTokenCache(0, 0) // every put evicted at once: each verify is a miss
	ctx := context.Background()
	for _, alg := range []string{algES256, algRS256, algHS256, algEdDSA} {
		b.Run(alg, func(b *testing.B) {
			v := uncached.v
			token := uncached.mint(b, alg, uncached.claims())
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.verify(ctx, token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("cached", func(b *testing.B) {
		token := f.mint(b, algES256, f.claims())
		if _, err := f.v.verify(ctx, token); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := f.v.verify(ctx, token); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("refused", func(b *testing.B) {
		token := jwtTamper(f.mint(b, algES256, f.claims()), 2)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := f.v.verify(ctx, token); err == nil {
				b.Fatal("tampered token accepted")
			}
		}
	})
}

// jwtHex is a short hex string for names.
func jwtHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

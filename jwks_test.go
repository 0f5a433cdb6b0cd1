package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// The JWKS tests: rotation, the refetch bound, a server that is down or
// misbehaves, the cache lifetime, and which keys a set may hold. They use
// the fixture and the JWKS server of jwt_test.go.

// TestJWKSRotation walks one verifier through a Supabase key rotation: a
// standby key published, then signing, the old key still valid until it is
// revoked, and refused once the cached set has turned over.
func TestJWKSRotation(t *testing.T) {
	f := newJWTFixture(t, nil)
	keys := f.keys
	old := jwtPublicJWK("es", &keys.ec.PublicKey)
	next, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	nextJWK := jwtPublicJWK("es-next", &next.PublicKey)
	header := func(kid string) map[string]any { return map[string]any{"alg": "ES256", "typ": "JWT", "kid": kid} }
	signOld := func() string { return jwtSign(t, algES256, keys.ec, header("es"), f.claims()) }
	signNext := func() string { return jwtSign(t, algES256, next, header("es-next"), f.claims()) }
	fetches := func() int64 { return f.jwks.requests.Load() }
	mustVerify := func(step, token string) {
		t.Helper()
		if _, err := f.verify(token); err != nil {
			t.Fatalf("%s: verify = %v, want an identity", step, err)
		}
	}

	oldToken := signOld()
	mustVerify("before the rotation", oldToken)

	// A standby key is published; the verifier learns it when its cached
	// set turns over.
	f.jwks.setKeys(t, old, nextJWK)
	f.clock.advance(10*time.Minute + time.Second)
	mustVerify("standby published, old key", signOld())
	if n := fetches(); n != 2 {
		t.Errorf("fetches after the cache turned over = %d, want 2", n)
	}

	// The standby key starts signing: no fetch needed, old tokens still good.
	mustVerify("standby signing", signNext())
	mustVerify("standby signing, token of the old key", oldToken)
	if n := fetches(); n != 2 {
		t.Errorf("fetches after the new key signed = %d, want 2", n)
	}

	// The old key is revoked: until the set turns over it still verifies,
	// then neither the cached token nor a new one does.
	f.jwks.setKeys(t, nextJWK)
	f.clock.advance(time.Minute)
	mustVerify("old key revoked, set not yet turned over", oldToken)
	f.clock.advance(10 * time.Minute)
	for _, token := range []string{oldToken, signOld()} {
		if _, err := f.verify(token); jwtRule(err) != ruleKidUnknown {
			t.Errorf("verify(old key's token after revocation and turnover) = %v, want kid_unknown", err)
		}
	}
	mustVerify("after revocation, new key", signNext())
	if n := fetches(); n != 3 {
		t.Errorf("fetches after the revocation = %d, want 3", n)
	}

	// A key published between turnovers is learnt from the first token
	// that names it, once the refetch bound allows.
	third, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.jwks.setKeys(t, nextJWK, jwtPublicJWK("es-third", &third.PublicKey))
	f.clock.advance(jwksMinRefetch)
	mustVerify("unknown kid refetched", jwtSign(t, algES256, third, header("es-third"), f.claims()))
	if n := fetches(); n != 4 {
		t.Errorf("fetches after an unknown kid = %d, want 4", n)
	}
}

// TestJWKSRefetchBound floods the verifier with tokens of random unknown
// kids for a minute of its clock: at most two fetches.
func TestJWKSRefetchBound(t *testing.T) {
	f := newJWTFixture(t, nil)
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	claims := f.claims()
	mint := func(n int) []string {
		tokens := make([]string, n)
		for i := range tokens {
			tokens[i] = jwtSign(t, algES256, stranger, map[string]any{"alg": "ES256", "kid": jwtHex(8)}, claims)
		}
		return tokens
	}
	big, small := mint(1000), mint(100)
	flood := func(tokens []string) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, len(tokens))
		for _, token := range tokens {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := f.verify(token); jwtRule(err) != ruleKidUnknown {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("verify(unknown kid) = %v, want kid_unknown", err)
		}
	}

	flood(big) // the start's fetch is fresh: no refetch
	for elapsed := 5 * time.Second; elapsed < time.Minute; elapsed += 5 * time.Second {
		f.clock.advance(5 * time.Second)
		if elapsed == jwksMinRefetch {
			flood(big) // the one refetch of the minute, shared by 1000 requests
		} else {
			flood(small)
		}
	}
	if n := f.jwks.requests.Load(); n > 2 {
		t.Errorf("JWKS fetches in the first minute of a flood of unknown kids = %d, want at most 2", n)
	}
	f.clock.advance(5 * time.Second)
	flood(small)
	if n := f.jwks.requests.Load(); n != 3 {
		t.Errorf("JWKS fetches at the start of the second minute = %d, want 3", n)
	}
	if s := f.v.stats(); s.Invalid != uint64(2*len(big)+11*len(small)) {
		t.Errorf("stats().Invalid = %d, want %d", s.Invalid, 2*len(big)+11*len(small))
	}
}

// TestJWKSKnownKidNoFetch opens the refetch bound and checks that only an
// unknown kid uses it: a known kid whose token fails triggers no fetch, and
// a symmetric key in the set never verifies an HS256 token.
func TestJWKSKnownKidNoFetch(t *testing.T) {
	for _, secret := range []string{jwtTestSecret, ""} {
		t.Run(fmt.Sprintf("secret %v", secret != ""), func(t *testing.T) {
			f := newJWTFixture(t, func(s *authSettings) { s.Secret = []byte(secret) })
			keys := f.keys
			octSecret := []byte("a symmetric key published in the JWKS, 32+ bytes")
			f.jwks.setKeys(t, jwtPublicJWK("es", &keys.ec.PublicKey), jwtPublicJWK("rs", &keys.rsa.PublicKey),
				map[string]any{"kty": "oct", "kid": "oct", "alg": "HS256", "k": jwtB64(octSecret)})
			f.clock.advance(jwksMinRefetch)

			stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			wantHS := ruleSignatureInvalid
			if secret == "" {
				wantHS = ruleAlgNotConfigured
			}
			for _, tc := range []struct {
				name, token, rule string
			}{
				{"stranger's signature", jwtSign(t, algES256, stranger, map[string]any{"alg": "ES256", "kid": "es"}, f.claims()), ruleSignatureInvalid},
				{"tampered", jwtTamper(f.mint(t, algES256, f.claims()), 1), ruleSignatureInvalid},
				{"alg of another key type", jwtSign(t, algES256, keys.ec, map[string]any{"alg": "ES256", "kid": "rs"}, f.claims()), ruleAlgKeyMismatch},
				{"expired", f.mint(t, algES256, map[string]any{"iss": jwtTestIssuer, "aud": "authenticated", "sub": jwtTestSubject, "role": "authenticated", "exp": 1}), ruleExpired},
				{"HS256 with the JWKS oct key", jwtSign(t, algHS256, octSecret, map[string]any{"alg": "HS256", "kid": "oct"}, f.claims()), wantHS},
			} {
				if _, err := f.verify(tc.token); jwtRule(err) != tc.rule {
					t.Errorf("verify(%s) = %v, want %s", tc.name, err, tc.rule)
				}
			}
			if n := f.jwks.requests.Load(); n != 1 {
				t.Errorf("fetches after failing tokens of known kids = %d, want 1 (the start's)", n)
			}
			f.verify(jwtSign(t, algES256, stranger, map[string]any{"alg": "ES256", "kid": "unknown"}, f.claims()))
			if n := f.jwks.requests.Load(); n != 2 {
				t.Errorf("fetches after an unknown kid = %d, want 2", n)
			}
		})
	}
}

// TestJWKSSharedFetch checks that requests arriving while the first fetch
// is under way share it, and that one whose context ends meanwhile gets
// errKeysUnavailable.
func TestJWKSSharedFetch(t *testing.T) {
	keys := jwtTestKeys()
	server := newJWTJWKSServer(t, jwtPublicJWK("es", &keys.ec.PublicKey))
	server.setDelay(300 * time.Millisecond)
	clock := newJWTClock()
	v := newVerifier(authSettings{Issuer: jwtTestIssuer, JWKSURL: server.URL}, slog.New(slog.DiscardHandler), nil, clock.now)
	f := &jwtFixture{keys: keys, clock: clock, v: v}
	token := f.mint(t, algES256, f.claims())

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := v.verify(ctx, token)
	cancel()
	if !errors.Is(err, errKeysUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("verify(ctx ending during the first fetch) = %v, want errKeysUnavailable and the deadline", err)
	}

	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.verify(token); err != nil {
				t.Errorf("verify(during the first fetch) = %v, want an identity", err)
			}
		}()
	}
	wg.Wait()
	if n := server.requests.Load(); n != 1 {
		t.Errorf("JWKS fetches for 201 concurrent first requests = %d, want 1", n)
	}
}

// TestJWKSServerDown keeps verifying with the last good keys when the
// server fails, whatever the failure.
func TestJWKSServerDown(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(*jwtJWKSServer)
	}{
		{"closed", func(s *jwtJWKSServer) { s.Close() }},
		{"500", func(s *jwtJWKSServer) { s.setStatus(http.StatusInternalServerError) }},
		{"not JSON", func(s *jwtJWKSServer) { s.setBody([]byte("<html>maintenance</html>")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newJWTFixture(t, nil)
			if _, err := f.verify(f.mint(t, algES256, f.claims())); err != nil {
				t.Fatalf("verify before the failure = %v", err)
			}
			tc.fail(f.jwks)
			f.clock.advance(11 * time.Minute)
			for _, alg := range []string{algES256, algRS256, algEdDSA} {
				if _, err := f.verify(f.mint(t, alg, f.claims())); err != nil {
					t.Errorf("verify(%s, server %s, cache expired) = %v, want an identity from the last good keys", alg, tc.name, err)
				}
			}
			if s := f.v.stats(); s.FetchError != 1 || s.FetchOK != 1 || s.Keys != 3 {
				t.Errorf("stats = %+v, want 1 fetch ok, 1 error, 3 keys", s)
			}
			if !strings.Contains(f.logs.String(), "jwks fetch failed; keeping the last good keys") {
				t.Errorf("log lacks the failed fetch:\n%s", f.logs.String())
			}
		})
	}
}

// TestJWKSKeysUnavailable starts with the JWKS server failing: tokens for
// its keys get errKeysUnavailable (503), HS256 tokens still verify, and
// the keys arrive with the first fetch the refetch bound allows.
func TestJWKSKeysUnavailable(t *testing.T) {
	keys := jwtTestKeys()
	down := newJWTJWKSServer(t, jwtPublicJWK("es", &keys.ec.PublicKey))
	down.setStatus(http.StatusServiceUnavailable)
	f := newJWTFixture(t, func(s *authSettings) { s.JWKSURL = down.URL })
	if !strings.Contains(f.logs.String(), "jwks not loaded at start") {
		t.Errorf("log lacks the start warning:\n%s", f.logs.String())
	}

	es := f.mint(t, algES256, f.claims())
	var ae *authError
	if _, err := f.verify(es); !errors.Is(err, errKeysUnavailable) || errors.As(err, &ae) {
		t.Errorf("verify(ES256, JWKS never fetched) = %v, want errKeysUnavailable", err)
	}
	if _, err := f.verify(f.mint(t, algHS256, f.claims())); err != nil {
		t.Errorf("verify(HS256, JWKS never fetched) = %v, want an identity", err)
	}

	down.setStatus(http.StatusOK)
	f.clock.advance(jwksMinRefetch - time.Second)
	if _, err := f.verify(es); !errors.Is(err, errKeysUnavailable) {
		t.Errorf("verify(ES256, server back, bound not yet passed) = %v, want errKeysUnavailable", err)
	}
	f.clock.advance(time.Second)
	if _, err := f.verify(es); err != nil {
		t.Errorf("verify(ES256, server back, bound passed) = %v, want an identity", err)
	}
	if s := f.v.stats(); s.Unavailable != 2 || s.OK != 2 || down.requests.Load() != 2 {
		t.Errorf("stats = %+v and %d fetches, want 2 unavailable, 2 ok, 2 fetches", s, down.requests.Load())
	}
}

// TestJWKSFetchRefused checks that a misbehaving server's answer is
// refused: too large, too slow, redirected elsewhere, or not a key set.
func TestJWKSFetchRefused(t *testing.T) {
	var redirected int
	var mu sync.Mutex
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		redirected++
		mu.Unlock()
		w.Write([]byte(`{"keys":[]}`))
	}))
	t.Cleanup(elsewhere.Close)

	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"too large", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"keys":[]}` + strings.Repeat(" ", jwksMaxBytes)))
		}, "larger than"},
		{"too slow", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}, "deadline exceeded"},
		{"redirect", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, elsewhere.URL, http.StatusFound)
		}, "302"},
		{"404", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, "404"},
		{"not JSON", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("keys")) }, "not a JSON object"},
		{"no keys", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"jwks":[]}`)) }, `no "keys"`},
		{"keys not an array", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"keys":{}}`)) }, `no "keys"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := httptest.NewServer(tc.handler)
			t.Cleanup(server.Close)
			v := newVerifier(authSettings{Issuer: jwtTestIssuer, JWKSURL: server.URL}, slog.New(slog.DiscardHandler), nil, time.Now)
			v.jwks.timeout = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			err := v.jwks.refresh(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("refresh(server %s) = %v, want an error saying %q", tc.name, err, tc.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("refresh(server %s) took %v, want about the timeout", tc.name, d)
			}
			if s := v.stats(); s.FetchError != 1 || s.Keys != 0 {
				t.Errorf("stats = %+v, want 1 fetch error, no keys", s)
			}
		})
	}
	if redirected != 0 {
		t.Errorf("the redirect's target got %d requests, want 0", redirected)
	}
	if v := newVerifier(authSettings{JWKSURL: "http://jwks.example.com/keys"}, slog.New(slog.DiscardHandler), nil, time.Now); v.jwks.urlErr == nil {
		t.Errorf("newVerifier(plain http JWKS URL).jwks.urlErr = nil, want the validJWKSURL error that stops every fetch")
	}
}

// TestJWKSCacheLifetime checks how long a fetched set is trusted.
func TestJWKSCacheLifetime(t *testing.T) {
	ttl := 10 * time.Minute
	for _, tc := range []struct {
		headers map[string]string
		want    time.Duration
	}{
		{nil, ttl},
		{map[string]string{"Cache-Control": "max-age=60"}, time.Minute},
		{map[string]string{"Cache-Control": "public, max-age=120, must-revalidate"}, 2 * time.Minute},
		{map[string]string{"Cache-Control": "max-age=3600"}, ttl},
		{map[string]string{"Cache-Control": `max-age="30"`}, 30 * time.Second},
		{map[string]string{"Cache-Control": "MAX-AGE=45"}, 45 * time.Second},
		{map[string]string{"Cache-Control": "max-age=60", "Age": "20"}, 40 * time.Second},
		{map[string]string{"Cache-Control": "max-age=60", "Age": "600"}, 0},
		{map[string]string{"Cache-Control": "max-age=999999999999999999999"}, ttl},
		{map[string]string{"Cache-Control": "max-age=-5"}, ttl},
		{map[string]string{"Cache-Control": "max-age=soon"}, ttl},
		{map[string]string{"Cache-Control": "no-store"}, 0},
		{map[string]string{"Cache-Control": "no-cache"}, 0},
		{map[string]string{"Age": "100"}, ttl},
	} {
		h := http.Header{}
		for k, v := range tc.headers {
			h.Set(k, v)
		}
		if got := jwksLifetime(h, ttl); got != tc.want {
			t.Errorf("jwksLifetime(%v, %v) = %v, want %v", tc.headers, ttl, got, tc.want)
		}
	}

	t.Run("max-age honoured", func(t *testing.T) {
		f := newJWTFixture(t, nil)
		f.jwks.setHeader("Cache-Control", "max-age=60")
		f.clock.advance(11 * time.Minute) // the start's answer had no max-age
		f.verify(f.mint(t, algES256, f.claims()))
		f.clock.advance(59 * time.Second)
		f.verify(f.mint(t, algES256, f.claims()))
		if n := f.jwks.requests.Load(); n != 2 {
			t.Errorf("fetches within max-age = %d, want 2", n)
		}
		f.clock.advance(2 * time.Second)
		f.verify(f.mint(t, algES256, f.claims()))
		if n := f.jwks.requests.Load(); n != 3 {
			t.Errorf("fetches past max-age = %d, want 3", n)
		}
	})

	t.Run("not modified", func(t *testing.T) {
		f := newJWTFixture(t, nil)
		f.jwks.setHeader("ETag", `"v1"`)
		token := f.mint(t, algES256, f.claims())
		f.verify(token)
		for i := range 2 {
			f.clock.advance(11 * time.Minute)
			if _, err := f.verify(token); err != nil {
				t.Fatalf("verify after turnover %d = %v", i, err)
			}
		}
		// The first turnover fetched the same body (with its ETag), the
		// second got a 304: both kept the key objects, so the token stayed
		// cached.
		s := f.v.stats()
		if s.FetchOK != 2 || s.FetchNotModified != 1 || s.CacheHits != 2 {
			t.Errorf("stats = %+v, want 2 fetches ok, 1 not modified, 2 cache hits", s)
		}
	})
}

// TestParseJWKS checks which entries of a set are kept, and why the
// others are skipped.
func TestParseJWKS(t *testing.T) {
	keys := jwtTestKeys()
	ec := jwtPublicJWK("ec", &keys.ec.PublicKey)
	rsaJWK := jwtPublicJWK("rsa", &keys.rsa.PublicKey)
	ed := jwtPublicJWK("ed", keys.ed.Public())
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384Point, _ := p384.PublicKey.ECDH()
	weak := new(big.Int).Rsh(keys.rsa.N, 1024)

	for _, tc := range []struct {
		name  string
		entry any
		alg   string // kept with this alg; "" when skipped
		skip  string // part of the reason when skipped
	}{
		{"EC P-256", ec, algES256, ""},
		{"EC without alg and use", edited(ec, map[string]any{"alg": nil, "use": nil}), algES256, ""},
		{"RSA 2048", rsaJWK, algRS256, ""},
		{"Ed25519", ed, algEdDSA, ""},
		{"key_ops verify", edited(ec, map[string]any{"key_ops": []string{"verify"}}), algES256, ""},
		{"extra members", edited(ec, map[string]any{"x5t": "abc", "ext": true}), algES256, ""},
		{"EC alg RS256", edited(ec, map[string]any{"alg": "RS256"}), "", "does not fit"},
		{"EC alg ES384", edited(ec, map[string]any{"alg": "ES384"}), "", "does not fit"},
		{"RSA alg PS256", edited(rsaJWK, map[string]any{"alg": "PS256"}), "", "does not fit"},
		{"OKP alg Ed25519", edited(ed, map[string]any{"alg": "Ed25519"}), "", "does not fit"},
		{"EC P-384", edited(ec, map[string]any{"crv": "P-384", "x": jwtB64(p384Point.Bytes()[1:49]), "y": jwtB64(p384Point.Bytes()[49:])}), "", "not P-256"},
		{"EC point off the curve", edited(ec, map[string]any{"y": ec["x"]}), "", "not on P-256"},
		{"EC short x", edited(ec, map[string]any{"x": jwtB64(make([]byte, 31))}), "", "not 32"},
		{"EC x padded", edited(ec, map[string]any{"x": ec["x"].(string) + "="}), "", "not base64url"},
		{"EC with d", edited(ec, map[string]any{"d": "AAAA"}), "", "private"},
		{"RSA 1024", edited(rsaJWK, map[string]any{"n": jwtB64(weak.Bytes())}), "", "1024 bits"},
		{"RSA even exponent", edited(rsaJWK, map[string]any{"e": jwtB64([]byte{1, 0, 0})}), "", "exponent"},
		{"RSA exponent 1", edited(rsaJWK, map[string]any{"e": "AQ"}), "", "exponent"},
		{"RSA with p and q", edited(rsaJWK, map[string]any{"p": "AQAB", "q": "AQAB"}), "", "private"},
		{"OKP X25519", edited(ed, map[string]any{"crv": "X25519"}), "", "not Ed25519"},
		{"OKP short x", edited(ed, map[string]any{"x": jwtB64(make([]byte, 31))}), "", "not 32"},
		{"oct", map[string]any{"kty": "oct", "kid": "hs", "k": "c2VjcmV0"}, "", "symmetric"},
		{"unknown kty", edited(ec, map[string]any{"kty": "ML-DSA"}), "", "unsupported kty"},
		{"no kty", edited(ec, map[string]any{"kty": nil}), "", `no "kty"`},
		{"no kid", edited(ec, map[string]any{"kid": nil}), "", `no "kid"`},
		{"empty kid", edited(ec, map[string]any{"kid": ""}), "", "empty kid"},
		{"kid a number", edited(ec, map[string]any{"kid": 7}), "", "not a string"},
		{"use enc", edited(ec, map[string]any{"use": "enc"}), "", "not sig"},
		{"key_ops encrypt", edited(ec, map[string]any{"key_ops": []string{"encrypt"}}), "", "does not allow verify"},
		{"not an object", "EC", "", "not a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, _ := json.Marshal(map[string]any{"keys": []any{tc.entry}})
			got, skipped, err := parseJWKS(body)
			if err != nil {
				t.Fatalf("parseJWKS(%s) = %v, want a set", body, err)
			}
			switch {
			case tc.alg != "" && (len(got) != 1 || len(skipped) != 0):
				t.Errorf("parseJWKS(%s) kept %d, skipped %v; want the key kept", body, len(got), skipped)
			case tc.alg != "":
				for _, k := range got {
					if k.alg != tc.alg {
						t.Errorf("parseJWKS(%s) key alg = %s, want %s", body, k.alg, tc.alg)
					}
				}
			case len(got) != 0 || len(skipped) != 1 || !strings.Contains(skipped[0].reason, tc.skip):
				t.Errorf("parseJWKS(%s) kept %d, skipped %v; want it skipped for %q", body, len(got), skipped, tc.skip)
			}
		})
	}

	t.Run("repeated kid", func(t *testing.T) {
		body, _ := json.Marshal(map[string]any{"keys": []any{ec, edited(rsaJWK, map[string]any{"kid": "ec"})}})
		got, skipped, err := parseJWKS(body)
		if err != nil || len(got) != 1 || got["ec"].alg != algES256 || len(skipped) != 1 || !strings.Contains(skipped[0].reason, "repeats") {
			t.Errorf("parseJWKS(two keys with kid ec) = %v, %v, %v; want the first kept, the second skipped", got, skipped, err)
		}
	})
	t.Run("too many keys", func(t *testing.T) {
		entries := make([]any, jwksMaxKeys+5)
		for i := range entries {
			entries[i] = edited(ec, map[string]any{"kid": fmt.Sprint(i)})
		}
		body, _ := json.Marshal(map[string]any{"keys": entries})
		got, _, err := parseJWKS(body)
		if err != nil || len(got) != jwksMaxKeys {
			t.Errorf("parseJWKS(%d keys) kept %d, %v; want %d", len(entries), len(got), err, jwksMaxKeys)
		}
	})
	for _, body := range []string{``, `[]`, `null`, `{}`, `{"keys":null}`, `{"keys":"x"}`, `{"keys":[]} trailing`, `{"keys":[],"keys":[]}`,
		`{"keys":[{"kty":"EC","kty":"RSA","kid":"dup"}]}`} {
		if _, _, err := parseJWKS([]byte(body)); err == nil {
			t.Errorf("parseJWKS(%q) = nil error, want the set refused", body)
		}
	}
	if got, _, err := parseJWKS([]byte(`{"keys":[]}`)); err != nil || len(got) != 0 {
		t.Errorf("parseJWKS(empty set) = %v, %v; want an empty set", got, err)
	}
}

// TestValidJWKSURL checks which URLs may serve the key set.
func TestValidJWKSURL(t *testing.T) {
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"https://abcdefghijklmnop.supabase.co/auth/v1/.well-known/jwks.json", true},
		{"https://[2001:db8::1]/jwks", true},
		{"http://127.0.0.1:54321/auth/v1/.well-known/jwks.json", true},
		{"http://127.9.8.7/jwks", true},
		{"http://localhost:54321/jwks", true},
		{"http://LOCALHOST/jwks", true},
		{"http://[::1]:8080/jwks", true},
		{"HTTPS://abcdefghijklmnop.supabase.co/jwks", true},
		{"http://abcdefghijklmnop.supabase.co/auth/v1/.well-known/jwks.json", false},
		{"http://10.0.0.1/jwks", false},
		{"http://0.0.0.0/jwks", false},
		{"http://127.0.0.1.nip.io/jwks", false},
		{"http://localhost.example.com/jwks", false},
		{"http://[::ffff:10.0.0.1]/jwks", false},
		{"ftp://127.0.0.1/jwks", false},
		{"file:///etc/jwks.json", false},
		{"javascript:alert(1)", false},
		{"", false},
		{"/auth/v1/.well-known/jwks.json", false},
		{"https://", false},
		{"https://user:secret@abcdefghijklmnop.supabase.co/jwks", false},
		{"https://abc.supabase.co:bad/jwks", false},
	} {
		if err := validJWKSURL(tc.url); (err == nil) != tc.ok {
			t.Errorf("validJWKSURL(%q) = %v, want ok %v", tc.url, err, tc.ok)
		}
	}
}

// FuzzParseJWKS feeds parseJWKS arbitrary bodies: no panic, and every key
// it keeps is a public key of an allowed type and size, under its kid.
func FuzzParseJWKS(f *testing.F) {
	keys := jwtTestKeys()
	for _, set := range [][]any{
		{jwtPublicJWK("ec", &keys.ec.PublicKey), jwtPublicJWK("rsa", &keys.rsa.PublicKey), jwtPublicJWK("ed", keys.ed.Public())},
		{map[string]any{"kty": "oct", "kid": "hs", "k": "c2VjcmV0"}},
		{map[string]any{"kty": "EC", "crv": "P-256", "kid": "x", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "d": "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}},
	} {
		body, _ := json.Marshal(map[string]any{"keys": set})
		f.Add(body)
	}
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"rfc8037","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, _, err := parseJWKS(body)
		if err != nil {
			return
		}
		for kid, k := range got {
			if kid == "" || k.kid != kid {
				t.Fatalf("parseJWKS(%q) keeps kid %q under %q", body, k.kid, kid)
			}
			switch pub := k.pub.(type) {
			case *ecdsa.PublicKey:
				if _, err := pub.ECDH(); err != nil || pub.Curve != elliptic.P256() || k.alg != algES256 {
					t.Fatalf("parseJWKS(%q) keeps an EC key that is not a valid P-256 ES256 key", body)
				}
			case *rsa.PublicKey:
				if pub.N.BitLen() < rsaMinBits || pub.N.BitLen() > rsaMaxBits || pub.E < 3 || pub.E%2 == 0 || k.alg != algRS256 {
					t.Fatalf("parseJWKS(%q) keeps an RSA key of %d bits, e %d, alg %s", body, pub.N.BitLen(), pub.E, k.alg)
				}
			case ed25519.PublicKey:
				if len(pub) != ed25519.PublicKeySize || k.alg != algEdDSA {
					t.Fatalf("parseJWKS(%q) keeps an Ed25519 key of %d bytes, alg %s", body, len(pub), k.alg)
				}
			default:
				t.Fatalf("parseJWKS(%q) keeps a %T", body, k.pub)
			}
		}
	})
}

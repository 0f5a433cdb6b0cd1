package main

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The verifier of Supabase Auth access tokens: who is calling.
//
// The HTTP layer builds one verifier at startup and asks it about every
// bearer token:
//
//	v := newVerifier(settings, log, httpClient, time.Now)
//	v.start(ctx) // first JWKS fetch; a failure is logged, never fatal
//	id, err := v.verify(r.Context(), token)
//
// verify answers an *identity, or an error of one of two kinds:
//
//   - an *authError: the token is refused, answer 401. Its rule names the
//     check that failed (the rule* constants of jwt.go), for logs and metrics.
//   - anything else wraps errKeysUnavailable: the token needs an asymmetric
//     key and no JWKS fetch has succeeded yet (or the request ended while
//     one was under way), answer 503.
//
// stats reads the counters for /metrics. The verifier logs each refusal
// itself (its rule, or "keys_unavailable" for a 503, and the kid and sub
// when known, never the token): at WARN at most once every
// authWarnInterval, at DEBUG otherwise.
//
// The algorithm is fixed by the key, never by the token: HS256 only with
// the configured secret, ES256, RS256 and EdDSA only with a JWKS key of the
// matching type. Claims are read by their exact names, duplicates refused.
// Verified tokens are cached by their SHA-256; a cached answer is re-checked
// against the clock and the current key set on every use.

const (
	// authWarnInterval spaces the WARN lines about refused tokens.
	authWarnInterval = 5 * time.Second
	// tokenCacheEntries and tokenCacheBytes bound the cache of verified
	// tokens, by count and by the size of the claims it holds.
	tokenCacheEntries = 10_000
	tokenCacheBytes   = 32 << 20
	// defaultAuthAudience is the aud of Supabase access tokens.
	defaultAuthAudience = "authenticated"
	// defaultAuthLeeway is AUTH_LEEWAY's default, for config.go: the
	// verifier itself takes a zero Leeway as none.
	defaultAuthLeeway = 30 * time.Second
)

// authSettings is what the verifier needs; config.go fills it from
// SUPABASE_URL, AUTH_ISSUER, AUTH_JWKS_URL, SUPABASE_JWT_SECRET,
// AUTH_AUDIENCE, AUTH_LEEWAY and AUTH_JWKS_TTL.
type authSettings struct {
	Issuer   string        // exact expected iss, e.g. https://abc.supabase.co/auth/v1; required
	Audience string        // aud (a string or an array) must contain it; "" means "authenticated"
	Secret   []byte        // legacy HS256 secret as raw bytes (not base64-decoded); empty: HS256 off
	JWKSURL  string        // "": no asymmetric keys; else it must pass validJWKSURL
	JWKSTTL  time.Duration // cap on caching the set; 0 means 10m
	Leeway   time.Duration // clock skew allowed on exp, nbf, iat; 0 is none (config's default is 30s)
}

// identity is who a verified token speaks for. The verifier may hand the
// same AppMetadata map and Claims bytes to many requests: treat them as
// read-only.
type identity struct {
	Subject     string          // sub, a UUID
	Email       string          // email, "" if absent
	Phone       string          // phone, "" if absent
	Role        string          // role, e.g. "authenticated"; routes check it against their allowlist
	AAL         string          // aal, e.g. "aal1"
	SessionID   string          // session_id
	IsAnonymous bool            // is_anonymous
	AppMetadata map[string]any  // app_metadata, numbers as json.Number; nil if absent
	Expires     time.Time       // exp
	Claims      json.RawMessage // the verified claims JSON, for set_config('request.jwt.claims')

	notBefore time.Time // nbf, zero if absent: the token cache checks it on every hit
}

// authError is a refused token: the HTTP layer answers 401. rule is one of
// the rule* constants; kid is the header's kid when it had one, and sub the
// claims' sub, only once the signature has verified. Both are truncated to
// logValueMax bytes.
type authError struct {
	rule string
	kid  string
	sub  string
}

// Error names the rule only: neither the token nor its claims.
func (e *authError) Error() string { return "invalid token: " + e.rule }

// verifierCounters counts verifications by outcome and JWKS fetches by
// result, for stats.
type verifierCounters struct {
	ok, invalid, expired, unavailable, cacheHits atomic.Uint64
	fetchOK, fetchError, fetchNotModified        atomic.Uint64
}

// verifierStats is a snapshot of the counters for /metrics. Verifications
// by outcome: OK ("ok", CacheHits of them answered from the token cache),
// Invalid ("invalid", any 401 but expiry), Expired ("expired", rule
// expired) and Unavailable ("unavailable", the 503s). JWKS fetches by
// result: FetchOK ("ok"), FetchError ("error"), FetchNotModified
// ("not_modified", a 304 to If-None-Match). Keys and CachedTokens are
// gauges.
type verifierStats struct {
	OK, Invalid, Expired, Unavailable, CacheHits uint64
	FetchOK, FetchError, FetchNotModified        uint64
	Keys, CachedTokens                           int
}

// verifier checks access tokens; see the top of this file.
type verifier struct {
	issuer   string
	audience string
	secret   []byte
	leeway   time.Duration
	now      func() time.Time
	log      *slog.Logger
	jwks     *jwksCache // nil: no JWKS URL, asymmetric algorithms refused
	tokens   *tokenCache
	counts   *verifierCounters
	warn     every // loud refusals, by the verifier's clock
}

// newVerifier returns a verifier for s. client fetches the JWKS (nil: a
// plain client; redirects are never followed); now is the clock, time.Now
// outside tests.
func newVerifier(s authSettings, log *slog.Logger, client *http.Client, now func() time.Time) *verifier {
	if s.Audience == "" {
		s.Audience = defaultAuthAudience
	}
	if s.JWKSTTL <= 0 {
		s.JWKSTTL = defaultJWKSTTL
	}
	v := &verifier{
		issuer:   s.Issuer,
		audience: s.Audience,
		leeway:   max(s.Leeway, 0),
		now:      now,
		log:      log,
		tokens:   newTokenCache(tokenCacheEntries, tokenCacheBytes),
		counts:   &verifierCounters{},
		warn:     every{interval: authWarnInterval},
	}
	if len(s.Secret) > 0 {
		v.secret = bytes.Clone(s.Secret)
	}
	if s.JWKSURL != "" {
		v.jwks = newJWKSCache(s.JWKSURL, s.JWKSTTL, client, now, log, v.counts)
	}
	return v
}

// start makes the first JWKS fetch and waits for it (at most
// jwksFetchTimeout). A failure is logged: the service still starts, HS256
// tokens still verify, and tokens needing a JWKS key answer 503 until a
// later fetch, started by traffic, succeeds.
func (v *verifier) start(ctx context.Context) {
	if v.jwks == nil {
		return
	}
	if err := v.jwks.refresh(ctx); err != nil {
		v.log.WarnContext(ctx, "jwks not loaded at start; tokens signed with its keys get 503 until a fetch succeeds",
			"url", v.jwks.url, "error", err)
	}
}

// verify checks token and says who it speaks for; see the top of this
// file for its errors. Every call is counted, and every refusal logged.
func (v *verifier) verify(ctx context.Context, token string) (*identity, error) {
	id, cached, err := v.check(ctx, token)
	var ae *authError
	switch {
	case err == nil:
		v.counts.ok.Add(1)
		if cached {
			v.counts.cacheHits.Add(1)
		}
		return id, nil
	case errors.As(err, &ae):
		// The kid comes from an unverified header: bound what the log shows.
		ae.kid, ae.sub = jwtLogValue(ae.kid), jwtLogValue(ae.sub)
		if ae.rule == ruleExpired {
			v.counts.expired.Add(1)
		} else {
			v.counts.invalid.Add(1)
		}
		v.logRefusal(ctx, "token refused", "rule", ae.rule, "kid", ae.kid, "sub", ae.sub)
	default:
		v.counts.unavailable.Add(1)
		v.logRefusal(ctx, "token not verified: signing keys unavailable", "rule", "keys_unavailable")
	}
	return nil, err
}

// stats returns a snapshot of the counters.
func (v *verifier) stats() verifierStats {
	s := verifierStats{
		OK: v.counts.ok.Load(), Invalid: v.counts.invalid.Load(), Expired: v.counts.expired.Load(),
		Unavailable: v.counts.unavailable.Load(), CacheHits: v.counts.cacheHits.Load(),
		FetchOK: v.counts.fetchOK.Load(), FetchError: v.counts.fetchError.Load(),
		FetchNotModified: v.counts.fetchNotModified.Load(),
		CachedTokens:     v.tokens.len(),
	}
	if v.jwks != nil {
		s.Keys = v.jwks.size()
	}
	return s
}

// check is verify without the counting: the cache first, then every rule.
// cached says whether the answer came from the token cache.
func (v *verifier) check(ctx context.Context, token string) (id *identity, cached bool, err error) {
	if len(token) > maxTokenBytes {
		return nil, false, &authError{rule: ruleTooLarge}
	}
	hash := sha256.Sum256([]byte(token))
	if id, refused := v.cached(ctx, hash); refused != nil {
		return nil, false, refused
	} else if id != nil {
		return id, true, nil
	}

	tok, err := parseToken(token)
	if err != nil {
		return nil, false, err
	}
	key, err := v.keyFor(ctx, tok.header)
	if err != nil {
		return nil, false, err
	}
	var refused *authError
	if key == nil {
		refused = verifyHMAC(v.secret, tok.signingInput, tok.signature)
	} else {
		refused = key.verify(tok.header.alg, tok.signingInput, tok.signature)
	}
	if refused == nil {
		id, refused = v.claims(tok)
	}
	if refused != nil {
		refused.kid = tok.header.kid
		return nil, false, refused
	}
	v.tokens.put(&cachedToken{hash: hash, id: id, key: key, kid: tok.header.kid})
	return copyIdentity(id), false, nil
}

// cached answers from the token cache: an identity on a hit, a refusal
// when the time rules, applied on every hit, fail, and neither on a miss.
// An entry whose key has left the set, or changed, is a miss: the token
// then goes through every rule again.
func (v *verifier) cached(ctx context.Context, hash [sha256.Size]byte) (*identity, *authError) {
	e := v.tokens.get(hash)
	if e == nil {
		return nil, nil
	}
	if refused := v.timely(e.id.Expires, e.id.notBefore, time.Time{}); refused != nil {
		v.tokens.remove(hash)
		refused.kid, refused.sub = e.kid, e.id.Subject
		return nil, refused
	}
	if e.key != nil {
		// The lookup refreshes an expired set, so a removed key stops
		// verifying cached tokens once the set has turned over.
		k, err := v.jwks.lookup(ctx, e.kid)
		if err != nil || k != e.key {
			v.tokens.remove(hash)
			return nil, nil
		}
	}
	return copyIdentity(e.id), nil
}

// keyFor picks the key that header's alg may use: nil for HS256 (the
// configured secret), else the JWKS key named by kid, which must be of the
// alg's type.
func (v *verifier) keyFor(ctx context.Context, h jwtHeader) (*verificationKey, error) {
	if h.alg == algHS256 {
		if v.secret == nil {
			return nil, &authError{rule: ruleAlgNotConfigured, kid: h.kid}
		}
		return nil, nil
	}
	if v.jwks == nil {
		return nil, &authError{rule: ruleAlgNotConfigured, kid: h.kid}
	}
	if h.kid == "" {
		return nil, &authError{rule: ruleKidMissing}
	}
	k, err := v.jwks.lookup(ctx, h.kid)
	if err != nil {
		return nil, err
	}
	if k.alg != h.alg {
		return nil, &authError{rule: ruleAlgKeyMismatch, kid: h.kid}
	}
	return k, nil
}

// logRefusal logs at WARN when the limiter allows, else at DEBUG.
func (v *verifier) logRefusal(ctx context.Context, msg string, attrs ...any) {
	level := slog.LevelDebug
	if v.warn.allowAt(v.now()) {
		level = slog.LevelWarn
	}
	if !v.log.Enabled(ctx, level) {
		return
	}
	// Drop the empty kid and sub pairs: a log line says only what is known.
	kept := attrs[:0:0]
	for i := 0; i+1 < len(attrs); i += 2 {
		if s, ok := attrs[i+1].(string); ok && s == "" {
			continue
		}
		kept = append(kept, attrs[i], attrs[i+1])
	}
	v.log.Log(ctx, level, msg, kept...)
}

// copyIdentity returns a copy of id whose fields the caller may change;
// AppMetadata and Claims stay shared and read-only.
func copyIdentity(id *identity) *identity {
	c := *id
	return &c
}

// cachedToken is a verified token: its identity and the key it verified
// with (nil for HS256), which must still be in the set.
type cachedToken struct {
	hash [sha256.Size]byte
	id   *identity
	key  *verificationKey
	kid  string
}

// tokenCache keeps the most recently used verified tokens, bounded by
// count and by the bytes of claims held; the least recently used goes
// first. It holds only tokens that passed every rule, so a flood of bad
// tokens cannot push good ones out.
type tokenCache struct {
	maxEntries, maxBytes int

	mu      sync.Mutex
	bytes   int
	order   *list.List // of *cachedToken, most recently used first
	entries map[[sha256.Size]byte]*list.Element
}

// newTokenCache returns an empty cache with the given bounds.
func newTokenCache(maxEntries, maxBytes int) *tokenCache {
	return &tokenCache{maxEntries: maxEntries, maxBytes: maxBytes, order: list.New(), entries: make(map[[sha256.Size]byte]*list.Element)}
}

// get returns the entry for hash, or nil.
func (c *tokenCache) get(hash [sha256.Size]byte) *cachedToken {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.entries[hash]
	if el == nil {
		return nil
	}
	c.order.MoveToFront(el)
	return el.Value.(*cachedToken)
}

// put adds e, evicting the least recently used entries past the bounds.
func (c *tokenCache) put(e *cachedToken) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.entries[e.hash]; el != nil {
		c.removeLocked(el)
	}
	c.entries[e.hash] = c.order.PushFront(e)
	c.bytes += len(e.id.Claims)
	for c.order.Len() > c.maxEntries || c.bytes > c.maxBytes {
		c.removeLocked(c.order.Back())
	}
}

// remove drops the entry for hash, if any.
func (c *tokenCache) remove(hash [sha256.Size]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.entries[hash]; el != nil {
		c.removeLocked(el)
	}
}

// removeLocked drops el; c.mu must be held.
func (c *tokenCache) removeLocked(el *list.Element) {
	e := c.order.Remove(el).(*cachedToken)
	delete(c.entries, e.hash)
	c.bytes -= len(e.id.Claims)
}

// len is the number of entries.
func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

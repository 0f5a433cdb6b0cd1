package main

import (
	"bytes"
	"container/list"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
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
//     check that failed (the rule* constants below), for logs and metrics.
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
	// maxTokenBytes caps a token; a Supabase access token is about 1 KiB.
	maxTokenBytes = 8 << 10
	// maxJSONDepth caps the nesting of a token's header and claims.
	maxJSONDepth = 32
	// maxNumericDate is 9999-12-31T23:59:59Z: later dates are refused
	// rather than converted with overflow.
	maxNumericDate = 253402300799
	// logValueMax truncates the kid and sub that the log shows.
	logValueMax = 64
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

// The rules: what authError.rule says. Each is a fixed identifier, safe for
// logs and metric labels; none ever contains bytes of the token.
const (
	ruleTooLarge         = "token_too_large"      // more than maxTokenBytes
	ruleMalformed        = "token_malformed"      // not three dot-separated parts, the first two non-empty
	ruleEncoding         = "token_encoding"       // a part is not strict unpadded base64url, or a byte is outside its alphabet
	ruleHeaderInvalid    = "header_invalid"       // header is not a JSON object with a string alg (or duplicates a member)
	ruleAlgNone          = "alg_none"             // alg "none" in any case
	ruleAlgUnsupported   = "alg_unsupported"      // alg other than ES256, RS256, EdDSA, HS256
	ruleAlgNotConfigured = "alg_not_configured"   // HS256 without a secret, or an asymmetric alg without a JWKS URL
	ruleHeaderCrit       = "header_crit"          // a crit header: no extension is understood
	ruleHeaderKeyRef     = "header_key_reference" // jku, jwk, x5u or x5c: keys come from the configuration only
	ruleKidMissing       = "kid_missing"          // an asymmetric alg without a kid
	ruleKidUnknown       = "kid_unknown"          // no key of the set has this kid, even after a refetch
	ruleAlgKeyMismatch   = "alg_key_mismatch"     // the kid's key is of another type than alg
	ruleSignatureFormat  = "signature_format"     // wrong signature length for the algorithm
	ruleSignatureInvalid = "signature_invalid"    // the signature does not verify
	ruleClaimsInvalid    = "claims_invalid"       // claims are not a JSON object (or duplicate a member)
	ruleIssuerMismatch   = "iss_mismatch"         // iss absent or not the configured issuer byte for byte
	ruleAudienceMismatch = "aud_mismatch"         // aud absent, malformed, or without the audience
	ruleExpMissing       = "exp_missing"          // no exp
	ruleExpInvalid       = "exp_invalid"          // exp not a finite non-negative number
	ruleNbfInvalid       = "nbf_invalid"          // nbf not a finite non-negative number
	ruleIatInvalid       = "iat_invalid"          // iat not a finite non-negative number
	ruleExpired          = "expired"              // now is past exp plus leeway
	ruleNotYetValid      = "nbf_future"           // now is before nbf minus leeway
	ruleIssuedInFuture   = "iat_future"           // iat is after now plus leeway
	ruleSubjectInvalid   = "sub_invalid"          // sub absent or not a UUID
	ruleRoleMissing      = "role_missing"         // role absent or not a non-empty string
	ruleClaimType        = "claim_type"           // email, phone, aal, session_id, is_anonymous or app_metadata of the wrong type
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

// jwtBase64 is the only encoding of a token's parts: unpadded base64url,
// with no stray bits in the last character.
var jwtBase64 = base64.RawURLEncoding.Strict()

// jwtToken is a token split and decoded, not yet verified.
type jwtToken struct {
	signingInput string // header.payload exactly as received: what is signed
	header       jwtHeader
	payload      []byte
	signature    []byte
}

// jwtHeader is what the verifier reads of a JOSE header.
type jwtHeader struct {
	alg string
	kid string
}

// parseToken splits a compact JWS into its three parts, decodes them, and
// applies the header rules.
func parseToken(token string) (*jwtToken, error) {
	if len(token) > maxTokenBytes {
		return nil, &authError{rule: ruleTooLarge}
	}
	h, rest, ok1 := strings.Cut(token, ".")
	p, s, ok2 := strings.Cut(rest, ".")
	// An empty signature is left to the algorithm rules, so that an
	// unsigned token is reported as alg none rather than malformed.
	if !ok1 || !ok2 || h == "" || p == "" || strings.Contains(s, ".") {
		return nil, &authError{rule: ruleMalformed}
	}
	// The base64 decoder skips \r and \n even in strict mode: refuse every
	// byte outside the alphabet, so that one token has one spelling.
	for i := 0; i < len(token); i++ {
		if c := token[i]; c != '.' && !jwtBase64URLByte(c) {
			return nil, &authError{rule: ruleEncoding}
		}
	}
	headerJSON, err1 := jwtBase64.DecodeString(h)
	payload, err2 := jwtBase64.DecodeString(p)
	signature, err3 := jwtBase64.DecodeString(s)
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, &authError{rule: ruleEncoding}
	}
	header, err := parseHeader(headerJSON)
	if err != nil {
		return nil, err
	}
	return &jwtToken{signingInput: token[:len(h)+1+len(p)], header: header, payload: payload, signature: signature}, nil
}

// jwtBase64URLByte reports whether c is in the base64url alphabet.
func jwtBase64URLByte(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// jwtKeyReferences are the header members that point at a key (RFC 7515
// section 4.1): honouring one would let the token choose its own key.
var jwtKeyReferences = []string{"jku", "jwk", "x5u", "x5c"}

// parseHeader applies the header rules to the decoded header JSON.
func parseHeader(data []byte) (jwtHeader, error) {
	m, err := jwtObject(data)
	if err != nil {
		return jwtHeader{}, &authError{rule: ruleHeaderInvalid}
	}
	var h jwtHeader
	if raw, ok := m["kid"]; ok {
		var kid string
		if json.Unmarshal(raw, &kid) != nil {
			return jwtHeader{}, &authError{rule: ruleHeaderInvalid}
		}
		h.kid = kid
	}
	var alg string
	if raw, ok := m["alg"]; !ok || json.Unmarshal(raw, &alg) != nil {
		return jwtHeader{}, &authError{rule: ruleHeaderInvalid, kid: h.kid}
	}
	switch {
	case strings.EqualFold(alg, "none"):
		return jwtHeader{}, &authError{rule: ruleAlgNone, kid: h.kid}
	case alg != algES256 && alg != algRS256 && alg != algEdDSA && alg != algHS256:
		return jwtHeader{}, &authError{rule: ruleAlgUnsupported, kid: h.kid}
	}
	h.alg = alg
	if _, ok := m["crit"]; ok {
		return jwtHeader{}, &authError{rule: ruleHeaderCrit, kid: h.kid}
	}
	for _, name := range jwtKeyReferences {
		if _, ok := m[name]; ok {
			return jwtHeader{}, &authError{rule: ruleHeaderKeyRef, kid: h.kid}
		}
	}
	return h, nil
}

// verify checks sig over signingInput with k, for a token that says alg.
// The algorithm must be the key's own: the token does not get to choose.
func (k *verificationKey) verify(alg, signingInput string, sig []byte) *authError {
	if alg != k.alg {
		return &authError{rule: ruleAlgKeyMismatch}
	}
	digest := sha256.Sum256([]byte(signingInput))
	ok := false
	switch pub := k.pub.(type) {
	case *ecdsa.PublicKey:
		// RFC 7518 section 3.4: R and S as two 32-byte big-endian
		// integers, never DER. Zero or ≥ n is no signature at all.
		if len(sig) != 64 {
			return &authError{rule: ruleSignatureFormat}
		}
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		n := elliptic.P256().Params().N
		if r.Sign() == 0 || s.Sign() == 0 || r.Cmp(n) >= 0 || s.Cmp(n) >= 0 {
			return &authError{rule: ruleSignatureInvalid}
		}
		ok = ecdsa.Verify(pub, digest[:], r, s)
	case *rsa.PublicKey:
		if len(sig) != pub.Size() {
			return &authError{rule: ruleSignatureFormat}
		}
		ok = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) == nil
	case ed25519.PublicKey:
		if len(sig) != ed25519.SignatureSize {
			return &authError{rule: ruleSignatureFormat}
		}
		ok = ed25519.Verify(pub, []byte(signingInput), sig)
	}
	if !ok {
		return &authError{rule: ruleSignatureInvalid}
	}
	return nil
}

// verifyHMAC checks an HS256 signature against the configured secret, in
// constant time.
func verifyHMAC(secret []byte, signingInput string, sig []byte) *authError {
	if len(sig) != sha256.Size {
		return &authError{rule: ruleSignatureFormat}
	}
	mac := hmac.New(sha256.New, secret)
	io.WriteString(mac, signingInput)
	if !hmac.Equal(mac.Sum(nil), sig) {
		return &authError{rule: ruleSignatureInvalid}
	}
	return nil
}

// claims applies the claim rules to the payload of a token whose
// signature has verified, and returns the identity.
func (v *verifier) claims(tok *jwtToken) (*identity, *authError) {
	m, err := jwtObject(tok.payload)
	if err != nil {
		return nil, &authError{rule: ruleClaimsInvalid}
	}
	if iss, ok := jwtClaimString(m, "iss"); !ok || iss == "" || iss != v.issuer {
		return nil, &authError{rule: ruleIssuerMismatch}
	}
	if !jwtAudienceHas(m["aud"], v.audience) {
		return nil, &authError{rule: ruleAudienceMismatch}
	}
	// From here on the sub is the issuer's word: the log may show it.
	sub, _ := jwtClaimString(m, "sub")
	fail := func(rule string) (*identity, *authError) {
		return nil, &authError{rule: rule, sub: sub}
	}

	rawExp, ok := m["exp"]
	if !ok {
		return fail(ruleExpMissing)
	}
	exp, ok := jwtNumericDate(rawExp)
	if !ok {
		return fail(ruleExpInvalid)
	}
	var nbf, iat time.Time
	if raw, present := m["nbf"]; present {
		if nbf, ok = jwtNumericDate(raw); !ok {
			return fail(ruleNbfInvalid)
		}
	}
	if raw, present := m["iat"]; present {
		if iat, ok = jwtNumericDate(raw); !ok {
			return fail(ruleIatInvalid)
		}
	}
	if refused := v.timely(exp, nbf, iat); refused != nil {
		return fail(refused.rule)
	}

	if !jwtUUID(sub) {
		return fail(ruleSubjectInvalid)
	}
	id := &identity{Subject: sub, Expires: exp, Claims: tok.payload, notBefore: nbf}
	if id.Role, ok = jwtClaimString(m, "role"); !ok || id.Role == "" {
		return fail(ruleRoleMissing)
	}
	for _, c := range []struct {
		name string
		dst  *string
	}{{"email", &id.Email}, {"phone", &id.Phone}, {"aal", &id.AAL}, {"session_id", &id.SessionID}} {
		if !jwtOptional(m[c.name], c.dst) {
			return fail(ruleClaimType)
		}
	}
	if !jwtOptional(m["is_anonymous"], &id.IsAnonymous) || !jwtOptionalObject(m["app_metadata"], &id.AppMetadata) {
		return fail(ruleClaimType)
	}
	return id, nil
}

// timely applies the time rules with the leeway: now must be before exp,
// not before nbf, and not before iat (each zero time is skipped).
func (v *verifier) timely(exp, nbf, iat time.Time) *authError {
	now := v.now()
	switch {
	case !now.Before(exp.Add(v.leeway)):
		return &authError{rule: ruleExpired}
	case !nbf.IsZero() && now.Before(nbf.Add(-v.leeway)):
		return &authError{rule: ruleNotYetValid}
	case !iat.IsZero() && iat.After(now.Add(v.leeway)):
		return &authError{rule: ruleIssuedInFuture}
	}
	return nil
}

// jwtObject decodes a JSON object and returns its members by their exact
// names. It refuses what a lenient parser would quietly resolve: a
// duplicate member name at any depth, invalid UTF-8, nesting deeper than
// maxJSONDepth, and anything after the object.
func jwtObject(data []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(data) {
		return nil, errors.New("invalid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	// Numbers stay text, so that 1e309 reaches the claim rules as an
	// invalid date rather than failing the walk.
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	if err := jwtWalk(dec, '{', 1); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	// Member names are now known to be unique, and decoding into a map,
	// unlike into a struct, matches them exactly.
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// jwtWalk reads the rest of an object or array whose opening delim was
// just read, refusing duplicate names and excessive depth.
func jwtWalk(dec *json.Decoder, delim json.Delim, depth int) error {
	if depth > maxJSONDepth {
		return errors.New("JSON nested too deep")
	}
	var seen map[string]bool
	if delim == '{' {
		seen = make(map[string]bool)
	}
	for dec.More() {
		if seen != nil {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			name := tok.(string)
			if seen[name] {
				return fmt.Errorf("duplicate member %q", jwtLogValue(name))
			}
			seen[name] = true
		}
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			if err := jwtWalk(dec, d, depth+1); err != nil {
				return err
			}
		}
	}
	_, err := dec.Token() // the closing delim
	return err
}

// jwtNumericDate reads a NumericDate (RFC 7519 section 2): a JSON number of
// seconds, finite, non-negative and before the year 10000.
func jwtNumericDate(raw json.RawMessage) (time.Time, bool) {
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return time.Time{}, false
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// jwtClaimString returns claim name if it is a JSON string.
func jwtClaimString(m map[string]json.RawMessage, name string) (string, bool) {
	raw, ok := m[name]
	if !ok || len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// jwtAudienceHas reports whether aud is want or an array of strings
// holding want (RFC 7519 section 4.1.3).
func jwtAudienceHas(raw json.RawMessage, want string) bool {
	if len(raw) == 0 {
		return false
	}
	if raw[0] == '"' {
		var s string
		return json.Unmarshal(raw, &s) == nil && s == want
	}
	var auds []string
	if raw[0] != '[' || json.Unmarshal(raw, &auds) != nil {
		return false
	}
	for _, s := range auds {
		if s == want {
			return true
		}
	}
	return false
}

// jwtOptional decodes an optional claim of dst's type: absent or null
// leaves dst as it is, another type is refused.
func jwtOptional[T string | bool](raw json.RawMessage, dst *T) bool {
	if len(raw) == 0 || string(raw) == "null" {
		return true
	}
	return json.Unmarshal(raw, dst) == nil
}

// jwtOptionalObject decodes an optional JSON object claim, keeping numbers
// as json.Number so that large integers survive a round trip.
func jwtOptionalObject(raw json.RawMessage, dst *map[string]any) bool {
	if len(raw) == 0 || string(raw) == "null" {
		return true
	}
	if raw[0] != '{' {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(dst) == nil
}

// jwtUUID reports whether s is a UUID in its 8-4-4-4-12 hex form.
func jwtUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
		default:
			return false
		}
	}
	return true
}

// jwtLogValue truncates an untrusted string for the log.
func jwtLogValue(s string) string {
	if len(s) <= logValueMax {
		return s
	}
	return strings.ToValidUTF8(s[:logValueMax], "")
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

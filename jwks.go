package main

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The JSON Web Key Set: where the verifier's asymmetric keys come from.
// jwksCache fetches the configured URL only, keeps the last good set when a
// fetch fails, and bounds how often traffic can make it fetch again
// (jwksMinRefetch), so forged kids cannot turn the verifier into a
// flood against the auth server. parseJWKS keeps only the public keys the
// verifier can use and says why it skipped the others.

const (
	// jwksFetchTimeout bounds one fetch, connection and body included.
	jwksFetchTimeout = 5 * time.Second
	// jwksMaxBytes caps the body read from the JWKS URL; a real set of a
	// few keys is about a kilobyte.
	jwksMaxBytes = 256 << 10
	// jwksMinRefetch is the least time between two fetches started on
	// behalf of requests, whatever the reason (an unknown kid, an expired
	// cache, a set never fetched): a flood costs at most two a minute.
	jwksMinRefetch = 30 * time.Second
	// jwksMaxKeys caps how many entries of one set are looked at.
	jwksMaxKeys = 100
	// rsaMinBits and rsaMaxBits bound the RSA moduli accepted: below 2048
	// is too weak, above 8192 only makes each verification slower.
	rsaMinBits = 2048
	rsaMaxBits = 8192
	// defaultJWKSTTL caps how long a fetched set is trusted without
	// asking again, whatever Cache-Control says.
	defaultJWKSTTL = 10 * time.Minute
)

// Key types and algorithms as RFC 7517 and RFC 7518 spell them.
const (
	algES256 = "ES256"
	algRS256 = "RS256"
	algEdDSA = "EdDSA"
	algHS256 = "HS256"
)

// verificationKey is one usable public key of the set. Its algorithm is
// fixed by its type, never by a token: ES256 for a P-256 EC key, RS256 for
// an RSA key, EdDSA for an Ed25519 OKP key.
type verificationKey struct {
	kid string
	alg string
	// pub is an *ecdsa.PublicKey on P-256, an *rsa.PublicKey of 2048 to
	// 8192 bits, or an ed25519.PublicKey of 32 bytes.
	pub crypto.PublicKey
}

// skippedKey records one entry of a set that was not kept, and why.
type skippedKey struct {
	kid    string
	reason string
}

// parseJWKS parses a JWK Set (RFC 7517 section 5) and returns its usable
// keys by kid. Entries it cannot use (another key type, private or
// symmetric material, a weak RSA key, another curve, no kid, a repeated
// kid) are skipped, not fatal. A body that is not a set is an error, and
// so is a duplicate member name anywhere in it: such a document is not
// one that every parser reads the same way.
func parseJWKS(data []byte) (map[string]*verificationKey, []skippedKey, error) {
	top, err := jwtObject(data)
	if err != nil {
		return nil, nil, fmt.Errorf("jwks is not a JSON object: %w", err)
	}
	var entries []json.RawMessage
	if raw := top["keys"]; len(raw) == 0 || raw[0] != '[' || json.Unmarshal(raw, &entries) != nil {
		return nil, nil, errors.New(`jwks has no "keys" array`)
	}
	keys := make(map[string]*verificationKey)
	var skipped []skippedKey
	for i, raw := range entries {
		if i >= jwksMaxKeys {
			skipped = append(skipped, skippedKey{reason: fmt.Sprintf("more than %d keys: the rest ignored", jwksMaxKeys)})
			break
		}
		k, err := parseJWK(raw)
		switch {
		case err != nil:
			skipped = append(skipped, skippedKey{kid: jwkKid(raw), reason: err.Error()})
		case keys[k.kid] != nil:
			// Two keys behind one kid would make the choice depend on order.
			skipped = append(skipped, skippedKey{kid: k.kid, reason: "repeats the kid of an earlier key"})
		default:
			keys[k.kid] = k
		}
	}
	return keys, skipped, nil
}

// jwkPrivateMembers are the members that only a private or symmetric key
// has (RFC 7518 section 6): a set that publishes them has leaked a secret,
// and the key must not be used as if nothing happened.
var jwkPrivateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// parseJWK turns one set entry into a verificationKey, or says why not.
func parseJWK(raw json.RawMessage) (*verificationKey, error) {
	m, err := jwtObject(raw)
	if err != nil {
		return nil, fmt.Errorf("not a JSON object: %v", err)
	}
	kty, err := jwkString(m, "kty", true)
	if err != nil {
		return nil, err
	}
	if kty == "oct" {
		return nil, errors.New("symmetric key (kty oct): HS256 uses only the configured secret")
	}
	for _, name := range jwkPrivateMembers {
		if _, ok := m[name]; ok {
			return nil, fmt.Errorf("carries private key material (%q)", name)
		}
	}
	kid, err := jwkString(m, "kid", true)
	if err != nil {
		return nil, err
	}
	if kid == "" {
		return nil, errors.New("empty kid")
	}
	if use, err := jwkString(m, "use", false); err != nil {
		return nil, err
	} else if use != "" && use != "sig" {
		return nil, fmt.Errorf("use is %q, not sig", use)
	}
	if err := jwkKeyOps(m); err != nil {
		return nil, err
	}
	alg, err := jwkString(m, "alg", false)
	if err != nil {
		return nil, err
	}

	k := &verificationKey{kid: kid}
	switch kty {
	case "EC":
		k.alg, k.pub, err = jwkEC(m)
	case "RSA":
		k.alg, k.pub, err = jwkRSA(m)
	case "OKP":
		k.alg, k.pub, err = jwkOKP(m)
	default:
		return nil, fmt.Errorf("unsupported kty %q", kty)
	}
	if err != nil {
		return nil, err
	}
	if alg != "" && alg != k.alg {
		return nil, fmt.Errorf("alg %q does not fit a %s key, which verifies %s only", alg, kty, k.alg)
	}
	return k, nil
}

// jwkEC reads a P-256 public key; the point must lie on the curve.
func jwkEC(m map[string]json.RawMessage) (string, crypto.PublicKey, error) {
	crv, err := jwkString(m, "crv", true)
	if err != nil {
		return "", nil, err
	}
	if crv != "P-256" {
		return "", nil, fmt.Errorf("EC curve %q, not P-256", crv)
	}
	x, err := jwkBytes(m, "x", 32)
	if err != nil {
		return "", nil, err
	}
	y, err := jwkBytes(m, "y", 32)
	if err != nil {
		return "", nil, err
	}
	// crypto/ecdh checks that the point is on the curve and not the
	// identity. go.mod still allows Go 1.24, which lacks
	// ecdsa.ParseUncompressedPublicKey, hence the coordinates below.
	point := append(append([]byte{4}, x...), y...)
	if _, err := ecdh.P256().NewPublicKey(point); err != nil {
		return "", nil, errors.New("EC point is not on P-256")
	}
	pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
	return algES256, pub, nil
}

// jwkRSA reads an RSA public key of rsaMinBits to rsaMaxBits.
func jwkRSA(m map[string]json.RawMessage) (string, crypto.PublicKey, error) {
	nb, err := jwkBytes(m, "n", 0)
	if err != nil {
		return "", nil, err
	}
	eb, err := jwkBytes(m, "e", 0)
	if err != nil {
		return "", nil, err
	}
	n := new(big.Int).SetBytes(nb)
	if bits := n.BitLen(); bits < rsaMinBits || bits > rsaMaxBits {
		return "", nil, fmt.Errorf("RSA modulus of %d bits, not %d to %d", bits, rsaMinBits, rsaMaxBits)
	}
	e := new(big.Int).SetBytes(eb)
	// An even or tiny exponent is no RSA key; int32 is what crypto/rsa takes.
	if e.Bit(0) == 0 || e.Cmp(big.NewInt(3)) < 0 || e.BitLen() > 31 {
		return "", nil, errors.New("RSA exponent is not an odd number from 3 to 2^31-1")
	}
	return algRS256, &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
}

// jwkOKP reads an Ed25519 public key (RFC 8037).
func jwkOKP(m map[string]json.RawMessage) (string, crypto.PublicKey, error) {
	crv, err := jwkString(m, "crv", true)
	if err != nil {
		return "", nil, err
	}
	if crv != "Ed25519" {
		return "", nil, fmt.Errorf("OKP curve %q, not Ed25519", crv)
	}
	x, err := jwkBytes(m, "x", ed25519.PublicKeySize)
	if err != nil {
		return "", nil, err
	}
	return algEdDSA, ed25519.PublicKey(x), nil
}

// jwkString returns member name as a string; absent is "" unless required.
func jwkString(m map[string]json.RawMessage, name string, required bool) (string, error) {
	raw, ok := m[name]
	if !ok {
		if required {
			return "", fmt.Errorf("no %q", name)
		}
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%q is not a string", name)
	}
	return s, nil
}

// jwkBytes decodes member name from strict unpadded base64url; size, when
// not zero, is the exact length required.
func jwkBytes(m map[string]json.RawMessage, name string, size int) ([]byte, error) {
	s, err := jwkString(m, name, true)
	if err != nil {
		return nil, err
	}
	b, err := jwtBase64.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, fmt.Errorf("%q is not base64url", name)
	}
	if size > 0 && len(b) != size {
		return nil, fmt.Errorf("%q is %d bytes, not %d", name, len(b), size)
	}
	return b, nil
}

// jwkKeyOps accepts a key without key_ops, or one whose key_ops allow
// "verify" (RFC 7517 section 4.3).
func jwkKeyOps(m map[string]json.RawMessage) error {
	raw, ok := m["key_ops"]
	if !ok {
		return nil
	}
	var ops []string
	if err := json.Unmarshal(raw, &ops); err != nil {
		return errors.New(`"key_ops" is not an array of strings`)
	}
	for _, op := range ops {
		if op == "verify" {
			return nil
		}
	}
	return errors.New(`"key_ops" does not allow verify`)
}

// jwkKid is the kid of an entry that could not be parsed, for the log.
func jwkKid(raw json.RawMessage) string {
	var e struct {
		Kid any `json:"kid"`
	}
	_ = json.Unmarshal(raw, &e)
	s, _ := e.Kid.(string)
	return jwtLogValue(s)
}

// validJWKSURL reports whether raw may serve the key set: https, or plain
// http to a loopback host (127.0.0.0/8, ::1, localhost) for local
// development and tests. Credentials in the URL are refused, since the URL
// is logged.
func validJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("JWKS URL does not parse: %w", err)
	}
	if u.User != nil {
		return errors.New("JWKS URL must not carry a user or password")
	}
	if u.Hostname() == "" {
		return errors.New("JWKS URL has no host")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if jwksLoopback(u.Hostname()) {
			return nil
		}
		return errors.New("JWKS URL must use https unless its host is loopback")
	default:
		return fmt.Errorf("JWKS URL scheme %q is not https", u.Scheme)
	}
}

// jwksLoopback reports whether host is localhost or a loopback address.
func jwksLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.IsLoopback()
}

// jwksCache holds the last good key set and refreshes it on demand: when a
// token names a kid it does not know, when the set has outlived
// min(Cache-Control max-age, ttl), or while no fetch has ever succeeded.
// Concurrent callers share one fetch in flight, and traffic starts at most
// one fetch per jwksMinRefetch. A failed fetch keeps the keys it had.
type jwksCache struct {
	url     string
	urlErr  error // set when url breaks validJWKSURL: nothing is fetched
	client  *http.Client
	ttl     time.Duration
	timeout time.Duration
	now     func() time.Time
	log     *slog.Logger
	counts  *verifierCounters

	mu        sync.Mutex
	keys      map[string]*verificationKey
	fetched   bool      // some fetch succeeded
	expires   time.Time // when the set must be asked for again
	lastStart time.Time // when the last fetch started
	etag      string
	bodyHash  [sha256.Size]byte
	inflight  *jwksFetch
}

// jwksFetch is a fetch in flight; done closes when err is set.
type jwksFetch struct {
	done chan struct{}
	err  error
}

// errKeysUnavailable means a token needs an asymmetric key while no JWKS
// fetch has succeeded yet: the HTTP layer answers 503, not 401, since the
// token may well be good.
var errKeysUnavailable = errors.New("signing keys unavailable: no JWKS fetch has succeeded yet")

// newJWKSCache returns a cache for rawURL. The client is copied so that it
// follows no redirect: the set comes from the configured URL only.
func newJWKSCache(rawURL string, ttl time.Duration, client *http.Client, now func() time.Time, log *slog.Logger, counts *verifierCounters) *jwksCache {
	c := &jwksCache{url: rawURL, urlErr: validJWKSURL(rawURL), ttl: ttl, timeout: jwksFetchTimeout, now: now, log: log, counts: counts}
	own := http.Client{}
	if client != nil {
		own = *client
	}
	own.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	c.client = &own
	return c
}

// refresh fetches the set now (subject to the refetch bound) and waits for
// the result: start uses it for the first fetch.
func (c *jwksCache) refresh(ctx context.Context) error {
	c.mu.Lock()
	call := c.startLocked(ctx)
	c.mu.Unlock()
	if call == nil {
		return fmt.Errorf("a JWKS fetch started less than %s ago", jwksMinRefetch)
	}
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lookup returns the key for kid, refreshing the set first when it has
// expired or does not know kid, within the refetch bound. It answers
// errKeysUnavailable while no fetch has ever succeeded, and an *authError
// (ruleKidUnknown) for a kid the set does not hold.
func (c *jwksCache) lookup(ctx context.Context, kid string) (*verificationKey, error) {
	c.mu.Lock()
	k := c.keys[kid]
	if c.fetched && k != nil && c.now().Before(c.expires) {
		c.mu.Unlock()
		return k, nil
	}
	call := c.startLocked(ctx)
	c.mu.Unlock()

	if call != nil {
		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", errKeysUnavailable, ctx.Err())
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.fetched {
		return nil, errKeysUnavailable
	}
	if k = c.keys[kid]; k == nil {
		return nil, &authError{rule: ruleKidUnknown, kid: kid}
	}
	return k, nil
}

// size is the number of usable keys held.
func (c *jwksCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.keys)
}

// startLocked joins the fetch in flight or starts one if the refetch bound
// allows; nil means neither. The fetch must outlive the request that
// started it, since every waiting request shares it: it keeps ctx's
// values (for the log) but not its cancellation. c.mu must be held.
func (c *jwksCache) startLocked(ctx context.Context) *jwksFetch {
	if c.inflight != nil {
		return c.inflight
	}
	now := c.now()
	if !c.lastStart.IsZero() && now.Sub(c.lastStart) < jwksMinRefetch {
		return nil
	}
	c.lastStart = now
	call := &jwksFetch{done: make(chan struct{})}
	c.inflight = call
	go c.run(context.WithoutCancel(ctx), call)
	return call
}

// run performs one fetch and publishes its result.
func (c *jwksCache) run(ctx context.Context, call *jwksFetch) {
	err := c.fetch(ctx)
	// Counted and logged before the waiters go on, so that what they do
	// next (a scrape, say) sees this fetch.
	if err != nil {
		c.counts.fetchError.Add(1)
		c.log.WarnContext(ctx, "jwks fetch failed; keeping the last good keys", "url", c.url, "error", err)
	}
	c.mu.Lock()
	c.inflight = nil
	c.mu.Unlock()
	call.err = err
	close(call.done)
}

// fetch asks the URL for the set, conditionally when an ETag is known, and
// installs what it gets.
func (c *jwksCache) fetch(ctx context.Context) error {
	if c.urlErr != nil {
		return c.urlErr
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	c.mu.Lock()
	etag := c.etag
	c.mu.Unlock()
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	lifetime := jwksLifetime(resp.Header, c.ttl)
	switch {
	case resp.StatusCode == http.StatusNotModified && etag != "":
		c.mu.Lock()
		c.expires = c.now().Add(lifetime)
		c.mu.Unlock()
		c.counts.fetchNotModified.Add(1)
		return nil
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("jwks answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBytes+1))
	if err != nil {
		return fmt.Errorf("read jwks: %w", err)
	}
	if len(body) > jwksMaxBytes {
		return fmt.Errorf("jwks is larger than %d bytes", jwksMaxBytes)
	}
	keys, skipped, err := parseJWKS(body)
	if err != nil {
		return err
	}

	// An unchanged body keeps its key objects, so that the token cache,
	// which remembers the key object it verified with, stays warm.
	hash := sha256.Sum256(body)
	c.mu.Lock()
	changed := !c.fetched || hash != c.bodyHash
	if changed {
		c.keys, c.bodyHash = keys, hash
	}
	c.fetched = true
	c.expires = c.now().Add(lifetime)
	c.etag = resp.Header.Get("ETag")
	c.mu.Unlock()
	c.counts.fetchOK.Add(1)
	if changed {
		for _, s := range skipped {
			c.log.WarnContext(ctx, "jwks key skipped", "kid", s.kid, "reason", s.reason)
		}
		c.log.InfoContext(ctx, "jwks loaded", "url", c.url, "keys", len(keys), "skipped", len(skipped), "cache_for", lifetime.String())
	}
	return nil
}

// jwksLifetime is how long a response may be trusted: min(max-age minus
// Age, ttl), zero for no-store or no-cache, ttl when the server says nothing.
func jwksLifetime(h http.Header, ttl time.Duration) time.Duration {
	lifetime := ttl
	for _, line := range h.Values("Cache-Control") {
		for _, directive := range strings.Split(line, ",") {
			name, value, _ := strings.Cut(strings.TrimSpace(directive), "=")
			switch strings.ToLower(name) {
			case "no-store", "no-cache":
				lifetime = 0
			case "max-age":
				secs, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64)
				if err != nil || secs < 0 {
					continue
				}
				if age, err := strconv.ParseInt(h.Get("Age"), 10, 64); err == nil && age > 0 {
					secs -= age
				}
				// Durations above ttl do not matter; clamping first avoids overflow.
				lifetime = min(lifetime, time.Duration(min(max(secs, 0), int64(ttl/time.Second)+1))*time.Second)
			}
		}
	}
	return max(lifetime, 0)
}

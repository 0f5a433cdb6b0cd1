package main

import (
	"bytes"
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
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// One access token, and the rules it must pass: the compact form, the
// header, the signature by the key the verifier found, and the claims.
// verifier.go calls these in that order; every refusal is an *authError
// naming one of the rule* constants below.

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

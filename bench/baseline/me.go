package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"
)

// me answers GET /api/v1/me as zenspa does, plainly: the ES256 access token
// of Authorization: Bearer, its signature checked with crypto/ecdsa against
// the one key of the JWKS at jwksURL (fetched on first use), and the claims
// read with encoding/json. No cache, no claim rules beyond expiry: the
// yardstick of what a verification costs. Without a token, zenspa's 401.
func me(jwksURL string) http.Handler {
	key := sync.OnceValues(func() (*ecdsa.PublicKey, error) { return fetchKey(jwksURL) })
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeJSON(w, http.StatusUnauthorized, errorEnvelope(r, "UNAUTHORIZED", "An access token is required: send Authorization: Bearer <token>"))
			return
		}
		pub, err := key()
		var claims map[string]any
		if err == nil {
			claims, err = verifyES256(pub, token)
		}
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			writeJSON(w, http.StatusUnauthorized, errorEnvelope(r, "UNAUTHORIZED", "The access token is not valid"))
			return
		}
		exp, _ := claims["exp"].(float64)
		writeJSON(w, http.StatusOK, envelope{Status: "success", Data: map[string]any{
			"id": claims["sub"], "email": claims["email"], "phone": claims["phone"], "role": claims["role"],
			"aal": claims["aal"], "session_id": claims["session_id"], "is_anonymous": claims["is_anonymous"],
			"app_metadata": claims["app_metadata"], "expires_at": time.Unix(int64(exp), 0).UTC(),
		}})
	})
}

// errorEnvelope is zenspa's error body.
func errorEnvelope(r *http.Request, code, message string) map[string]any {
	return map[string]any{"status": "error", "timestamp": time.Now().UTC().Format(time.RFC3339),
		"error": map[string]any{"code": code, "message": message, "details": nil}, "request_id": r.Header.Get("X-Request-ID")}
}

// verifyES256 checks token's signature with pub and returns its claims.
func verifyES256(pub *ecdsa.PublicKey, token string) (map[string]any, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("not three parts")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, errors.New("bad signature")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return nil, errors.New("signature does not verify")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, err
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, err
	}
	if exp, _ := claims["exp"].(float64); time.Now().Unix() >= int64(exp) {
		return nil, errors.New("expired")
	}
	return claims, nil
}

// fetchKey reads the first key of the JWKS at url, a P-256 public key.
func fetchKey(url string) (*ecdsa.PublicKey, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct{ X, Y string } `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil || len(set.Keys) == 0 {
		return nil, errors.New("no key in the JWKS")
	}
	x, err1 := base64.RawURLEncoding.DecodeString(set.Keys[0].X)
	y, err2 := base64.RawURLEncoding.DecodeString(set.Keys[0].Y)
	if err1 != nil || err2 != nil {
		return nil, errors.New("bad key coordinates")
	}
	return &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}, nil
}

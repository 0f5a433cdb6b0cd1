package main

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Who is calling: the routes that require a signed-in user, and the
// transactions that run as that user. A token is checked by the verifier
// (verifier.go, with jwt.go and jwks.go); this file is what handlers see of it.

// access is what a route asks of its caller.
type access struct {
	roles []string // the token's role must be one of these; none: "authenticated"
	// claim, when set, is a member of app_metadata (which only the server
	// side of Supabase writes) that must hold one of values. user_metadata,
	// which users edit themselves, is never asked.
	claim  string
	values []string
}

// The callers routes ask for.
var (
	signedIn = access{}                                                           // any signed-in user, anonymous sign-ins included
	managers = access{claim: "zenspa_role", values: []string{"admin", "manager"}} // may change the treatment menu
)

// identityKey is the context key of the caller's verified identity.
type identityKey struct{}

// userFrom returns the verified identity of the request's caller, which
// require put in the context.
func userFrom(ctx context.Context) (*identity, bool) {
	id, ok := ctx.Value(identityKey{}).(*identity)
	return id, ok
}

// require serves h only to a caller with a valid access token that a allows:
// 401 without one or with one that fails any check, 403 when the token is
// valid but a does not allow its holder, 503 when authentication is not
// configured or the signing keys cannot be had. The identity goes into the
// request's context (userFrom) and its sub into the access log.
func (s *server) require(a access, h apiHandler) apiHandler {
	roles := a.roles
	if len(roles) == 0 {
		roles = []string{"authenticated"} // the role of every user's token
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		if s.auth == nil {
			return newError(codeServiceUnavailable, "Authentication is not configured")
		}
		token, err := bearerToken(r)
		if err != nil {
			return err
		}
		id, err := s.verifyToken(w, r, token)
		var refused *authError
		switch {
		case errors.As(err, &refused):
			return unauthorized(`Bearer error="invalid_token"`, "The access token is not valid")
		case err != nil: // the verifier has logged it, at most every few seconds
			return newError(codeServiceUnavailable, "The access token cannot be checked now, try again later")
		}
		recorder(w).user = id.Subject
		if !slices.Contains(roles, id.Role) || a.claim != "" && !slices.Contains(a.values, appMetadataString(id, a.claim)) {
			w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_scope"`)
			return newError(codeForbidden, "You are not allowed to do this")
		}
		return h(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, id)))
	}
}

// tokenCheck is the verifier's answer about one token, kept for the rest
// of the request on its responseRecorder.
type tokenCheck struct {
	token string
	id    *identity
	err   error
}

// verifyToken is s.auth.verify once per request: the rate limit, which
// needs the caller's sub before any route runs, leaves its answer for
// require, so that a token is counted and its refusal logged only once.
func (s *server) verifyToken(w http.ResponseWriter, r *http.Request, token string) (*identity, error) {
	rec := recorder(w)
	if c := rec.token; c != nil && c.token == token {
		return c.id, c.err
	}
	id, err := s.auth.verify(r.Context(), token)
	rec.token = &tokenCheck{token: token, id: id, err: err}
	return id, err
}

// bearerToken is the token of the request's one Authorization header, which
// must use the Bearer scheme (RFC 6750); a token anywhere else is ignored.
func bearerToken(r *http.Request) (string, error) {
	values := r.Header.Values("Authorization")
	if len(values) == 0 {
		return "", unauthorized("Bearer", "An access token is required: send it as Authorization: Bearer TOKEN")
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if len(values) > 1 || !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", unauthorized(`Bearer error="invalid_request"`, "Send exactly one Authorization: Bearer TOKEN header")
	}
	return token, nil
}

// unauthorized is the 401 envelope with its WWW-Authenticate challenge.
func unauthorized(challenge, message string) error {
	return &apiError{Code: codeUnauthorized, Message: message, challenge: challenge}
}

// appMetadataString is app_metadata[name] when it is a string.
func appMetadataString(id *identity, name string) string {
	v, _ := id.AppMetadata[name].(string)
	return v
}

// me is what GET /api/v1/me tells the caller about itself: the verified
// identity, never the token.
type me struct {
	ID          string         `json:"id"`
	Email       string         `json:"email"`
	Phone       string         `json:"phone"`
	Role        string         `json:"role"`
	AAL         string         `json:"aal"`
	SessionID   string         `json:"session_id"`
	IsAnonymous bool           `json:"is_anonymous"`
	AppMetadata map[string]any `json:"app_metadata"`
	ExpiresAt   time.Time      `json:"expires_at"`
}

// handleMe answers GET /api/v1/me.
func (s *server) handleMe(w http.ResponseWriter, r *http.Request) error {
	id, _ := userFrom(r.Context())
	metadata := id.AppMetadata
	if metadata == nil {
		metadata = map[string]any{}
	}
	writeSuccess(w, http.StatusOK, me{
		ID: id.Subject, Email: id.Email, Phone: id.Phone, Role: id.Role, AAL: id.AAL,
		SessionID: id.SessionID, IsAnonymous: id.IsAnonymous, AppMetadata: metadata, ExpiresAt: id.Expires.UTC(),
	}, "")
	return nil
}

// databaseRoles maps a token's role to the PostgreSQL role its queries run
// as. The role is taken from this fixed list, never from the token: a name
// outside it runs nothing, and service_role is never reachable from a user's
// token.
var databaseRoles = map[string]string{"authenticated": "authenticated"}

// withUserTx is withTx run as the caller, for Supabase's row-level
// security: the transaction sets request.jwt.claims to the verified claims
// and takes the caller's database role, both with SET LOCAL semantics, so
// that nothing outlives the transaction on a pooled connection (also
// behind a transaction-mode pooler).
func (d *database) withUserTx(ctx context.Context, id *identity, fn func(tx statements) error) error {
	role, ok := databaseRoles[id.Role]
	if !ok {
		return newError(codeForbidden, "You are not allowed to do this")
	}
	return d.withTx(ctx, func(tx statements) error {
		if _, err := tx.exec(ctx, "SELECT set_config('request.jwt.claims', $1, true)", string(id.Claims)); err != nil {
			return err
		}
		if _, err := tx.exec(ctx, "SET LOCAL ROLE "+role); err != nil { // a name from databaseRoles, never input
			return err
		}
		return fn(tx)
	})
}

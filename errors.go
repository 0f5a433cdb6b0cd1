package main

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// errorCode is the machine-readable code in every error envelope.
type errorCode string

// The error vocabulary every module shares; statusOf maps each to HTTP.
const (
	codeValidation         errorCode = "VALIDATION_ERROR"
	codeNotFound           errorCode = "NOT_FOUND"
	codeMethodNotAllowed   errorCode = "METHOD_NOT_ALLOWED"
	codeUnauthorized       errorCode = "UNAUTHORIZED"
	codeForbidden          errorCode = "FORBIDDEN"
	codeConflict           errorCode = "CONFLICT"
	codePreconditionFailed errorCode = "PRECONDITION_FAILED"
	codePayloadTooLarge    errorCode = "PAYLOAD_TOO_LARGE"
	codeUnsupportedMedia   errorCode = "UNSUPPORTED_MEDIA_TYPE"
	codeRateLimited        errorCode = "RATE_LIMITED"
	codeDatabase           errorCode = "DATABASE_ERROR"
	codeCache              errorCode = "CACHE_ERROR"
	codeServiceUnavailable errorCode = "SERVICE_UNAVAILABLE"
	codeInternal           errorCode = "INTERNAL_ERROR"
)

// statusOf is the one table from error code to HTTP status.
var statusOf = map[errorCode]int{
	codeValidation:         http.StatusUnprocessableEntity,
	codeNotFound:           http.StatusNotFound,
	codeMethodNotAllowed:   http.StatusMethodNotAllowed,
	codeUnauthorized:       http.StatusUnauthorized,
	codeForbidden:          http.StatusForbidden,
	codeConflict:           http.StatusConflict,
	codePreconditionFailed: http.StatusPreconditionFailed,
	codePayloadTooLarge:    http.StatusRequestEntityTooLarge,
	codeUnsupportedMedia:   http.StatusUnsupportedMediaType,
	codeRateLimited:        http.StatusTooManyRequests,
	codeDatabase:           http.StatusServiceUnavailable,
	codeCache:              http.StatusServiceUnavailable,
	codeServiceUnavailable: http.StatusServiceUnavailable,
	codeInternal:           http.StatusInternalServerError,
}

// genericInternalMessage is all a client learns about an unexpected failure.
const genericInternalMessage = "An unexpected error occurred"

// apiError is an error a client may see: a code, a message safe to show and
// optional details. Cause is the underlying error; it is logged, never sent.
type apiError struct {
	Code    errorCode
	Message string
	Details any
	Cause   error

	challenge string // a 401's WWW-Authenticate (auth.go)
}

func (e *apiError) Error() string {
	if e.Cause != nil {
		return string(e.Code) + ": " + e.Message + ": " + e.Cause.Error()
	}
	return string(e.Code) + ": " + e.Message
}

func (e *apiError) Unwrap() error { return e.Cause }

// newError returns an *apiError with a client-safe message.
func newError(code errorCode, message string) *apiError {
	return &apiError{Code: code, Message: message}
}

// errorEnvelope is the body of every error response.
type errorEnvelope struct {
	Status    string      `json:"status"`
	Error     errorDetail `json:"error"`
	Timestamp string      `json:"timestamp"`
	RequestID string      `json:"request_id"`
}

type errorDetail struct {
	Code    errorCode `json:"code"`
	Message string    `json:"message"`
	Details any       `json:"details"`
}

// writeError sends err as the error envelope. Anything that is not an
// *apiError becomes INTERNAL_ERROR with a generic message; the real error is
// only logged, with the request's ID.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{Code: codeInternal, Message: genericInternalMessage, Cause: err}
	}
	status, ok := statusOf[ae.Code]
	if !ok || status == http.StatusInternalServerError {
		status = http.StatusInternalServerError
		if ae.Code != codeInternal || ae.Message != genericInternalMessage || ae.Details != nil {
			// A 500 always says the same thing; what was meant is logged.
			ae = &apiError{Code: codeInternal, Message: genericInternalMessage, Cause: err}
		}
	}
	if ae.challenge != "" {
		w.Header().Set("WWW-Authenticate", ae.challenge)
	}
	if ae.Cause != nil {
		level := slog.LevelWarn
		if status >= 500 {
			level = slog.LevelError
		}
		s.log.Log(r.Context(), level, "request failed", "code", ae.Code, "error", ae.Cause)
	}
	writeJSON(w, status, errorEnvelope{
		Status:    "error",
		Error:     errorDetail{Code: ae.Code, Message: ae.Message, Details: ae.Details},
		Timestamp: now(),
		RequestID: w.Header().Get(headerRequestID),
	})
}

// successEnvelope is the body of every successful API answer; a list's
// answer adds its pagination.
type successEnvelope struct {
	Status     string      `json:"status"`
	Data       any         `json:"data"`
	Message    string      `json:"message,omitempty"`
	Pagination *pagination `json:"pagination,omitempty"`
}

// pagination says how large a page was asked for and where the next one
// starts: pass next_cursor back as ?cursor=, until it is null.
type pagination struct {
	Limit      int     `json:"limit"`
	NextCursor *string `json:"next_cursor"`
}

// writeSuccess sends data in the success envelope.
func writeSuccess(w http.ResponseWriter, status int, data any, message string) {
	writeJSON(w, status, successEnvelope{Status: "success", Data: data, Message: message})
}

// writeJSON is the one writer of JSON response bodies. It marshals before
// touching the headers, so a value that cannot be encoded becomes a clean 500.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body, _ = json.Marshal(errorEnvelope{ // cannot fail: strings only
			Status:    "error",
			Error:     errorDetail{Code: codeInternal, Message: genericInternalMessage},
			Timestamp: now(),
			RequestID: w.Header().Get(headerRequestID),
		})
	}
	writeBody(w, status, "application/json", append(body, '\n'))
}

// writeBody sends a whole body with its type and length: JSON through
// writeJSON, and the rest (the docs pages and scripts, the metrics).
func writeBody(w http.ResponseWriter, status int, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body) // the client may be gone; nothing to do about it
}

// now is the response timestamp: RFC 3339 in UTC.
func now() string {
	return time.Now().UTC().Format(time.RFC3339)
}

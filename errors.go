package main

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
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
	codePayloadTooLarge    errorCode = "PAYLOAD_TOO_LARGE"
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
	codePayloadTooLarge:    http.StatusRequestEntityTooLarge,
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
		Timestamp: s.clock.now(),
		RequestID: w.Header().Get(headerRequestID),
	})
}

// successEnvelope is the body later modules answer with.
type successEnvelope struct {
	Status  string `json:"status"`
	Data    any    `json:"data"`
	Message string `json:"message,omitempty"`
}

// writeSuccess sends data in the success envelope.
func writeSuccess(w http.ResponseWriter, status int, data any, message string) {
	writeJSON(w, status, successEnvelope{Status: "success", Data: data, Message: message})
}

// writeJSON is the one writer of response bodies. It marshals before touching
// the headers, so a value that cannot be encoded becomes a clean 500.
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
	writeJSONBody(w, status, append(body, '\n'))
}

// jsonContentType is the Content-Type of every JSON answer. It is assigned to
// the header map as it is, a shared read-only value: Header.Set would
// canonicalize the name and allocate a slice on every response.
var jsonContentType = []string{"application/json"}

// writeJSONBody sends body, encoded JSON with its final newline, and its
// headers. writeJSON ends here; so do the health routes, which encode their
// fixed-shape bodies themselves.
func writeJSONBody(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, _ = w.Write(body) // the client may be gone; nothing to do about it
}

// smallBodyMax is the largest body writeSmallJSONBody leaves to net/http to
// measure: net/http holds up to 2 KiB of a response until the handler
// returns, then sends it with a Content-Length of its own making.
const smallBodyMax = 1 << 10

// writeSmallJSONBody is writeJSONBody for the health probes, the hottest
// path, minus the Content-Length header when net/http can add it itself. On
// the wire the response is the same; the header map has one entry fewer for
// net/http to clone and sort, and the length's string and slice are not
// allocated.
func writeSmallJSONBody(w http.ResponseWriter, status int, body []byte) {
	if len(body) > smallBodyMax {
		writeJSONBody(w, status, body)
		return
	}
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	_, _ = w.Write(body) // the client may be gone; nothing to do about it
}

// now is the response timestamp: RFC 3339 in UTC.
func now() string {
	return time.Now().UTC().Format(time.RFC3339)
}

// clock hands out the response timestamp, formatting it once per second:
// every response within one second shares the string. Its zero value is
// ready to use.
type clock struct {
	last atomic.Pointer[timestamp]
}

// timestamp is the formatted time of one Unix second.
type timestamp struct {
	unix int64
	text string
}

// now returns what the package function now would.
func (c *clock) now() string {
	t := time.Now()
	if last := c.last.Load(); last != nil && last.unix == t.Unix() {
		return last.text
	}
	ts := &timestamp{unix: t.Unix(), text: t.UTC().Format(time.RFC3339)}
	c.last.Store(ts)
	return ts.text
}

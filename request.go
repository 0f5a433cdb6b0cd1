package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Reading what a client sends: a JSON body, query parameters, path values
// and page cursors. Every problem found is collected, so that one 422 lists
// them all; a message never quotes the input and never names a Go type.

// problem is one thing wrong with a request: the JSON name of a field or
// parameter ("" for the body as a whole) and what is wrong with it.
type problem struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// problems collects what is wrong with a request.
type problems []problem

// add records a problem of field.
func (p *problems) add(field, message string) {
	*p = append(*p, problem{Field: field, Message: message})
}

// check records message for field unless ok.
func (p *problems) check(field string, ok bool, message string) {
	if !ok {
		p.add(field, message)
	}
}

// err is the 422 VALIDATION_ERROR listing every problem, or nil if there is
// none.
func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return &apiError{Code: codeValidation, Message: "The request is not valid", Details: []problem(p)}
}

// bodyProblem is a 422 about the body as a whole.
func bodyProblem(message string) error {
	return problems{{Field: "", Message: message}}.err()
}

// jsonBody is a request body's members, read one field at a time. Each
// reader records what is wrong with its field; err adds the fields nobody
// read and returns them all.
type jsonBody struct {
	members map[string]json.RawMessage
	read    map[string]bool
	problems
}

// readJSON reads r's body: Content-Type application/json, UTF-8, exactly one
// JSON object, each field named once. A body over the limit has already met
// the body-limit middleware's 413.
func readJSON(r *http.Request) (*jsonBody, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, newError(codeUnsupportedMedia, "The body must be JSON, sent with Content-Type: application/json")
	}
	data, err := io.ReadAll(r.Body)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, newError(codePayloadTooLarge, "Request body must not exceed 1 MiB")
	case err != nil:
		return nil, newError(codeValidation, "Request body could not be read")
	case len(bytes.TrimSpace(data)) == 0:
		return nil, bodyProblem("is empty: send a JSON object")
	case !utf8.Valid(data):
		return nil, bodyProblem("must be UTF-8")
	case !json.Valid(data):
		return nil, bodyProblem("is not valid JSON, or holds more than one JSON value")
	}

	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return nil, bodyProblem("must be a JSON object")
	}
	b := &jsonBody{members: map[string]json.RawMessage{}, read: map[string]bool{}}
	for dec.More() {
		tok, _ := dec.Token() // valid JSON: a member name
		var value json.RawMessage
		_ = dec.Decode(&value)
		name := tok.(string)
		if _, twice := b.members[name]; twice {
			return nil, bodyProblem("names a field more than once")
		}
		b.members[name] = value
	}
	return b, nil
}

// member returns the raw value of field, recording it as read. It records
// a problem, and reports false, when the field is required but absent, or
// null.
func (b *jsonBody) member(field string, required bool) (json.RawMessage, bool) {
	b.read[field] = true
	raw, ok := b.members[field]
	switch {
	case !ok && required:
		b.add(field, "is required")
	case ok && string(raw) == "null":
		b.add(field, "must not be null")
		return nil, false
	}
	return raw, ok
}

// text reads a string field; nil when it is absent or wrong. PostgreSQL
// refuses the NUL character, so a string holding one is refused here.
func (b *jsonBody) text(field string, required bool) *string {
	raw, ok := b.member(field, required)
	if !ok {
		return nil
	}
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		b.add(field, "must be a string")
		return nil
	}
	if strings.ContainsRune(s, 0) {
		b.add(field, "must not contain the NUL character")
		return nil
	}
	// encoding/json turns an escaped lone surrogate ("\ud800") into U+FFFD:
	// the text would not be stored as sent.
	if strings.Count(s, "\uFFFD") > bytes.Count(raw, []byte("\uFFFD"))+strings.Count(strings.ToLower(string(raw)), `\ufffd`) {
		b.add(field, "must be valid Unicode: a \\u escape names half a character")
		return nil
	}
	return &s
}

// integer reads a whole-number field; nil when it is absent or wrong. A
// fraction, an exponent or a number beyond 64 bits is refused.
func (b *jsonBody) integer(field string, required bool) *int64 {
	raw, ok := b.member(field, required)
	if !ok {
		return nil
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	switch {
	case err == nil:
		return &n
	case errors.Is(err, strconv.ErrRange):
		b.add(field, "is out of range")
	default:
		b.add(field, "must be a whole number")
	}
	return nil
}

// boolean reads a true/false field; nil when it is absent or wrong.
func (b *jsonBody) boolean(field string, required bool) *bool {
	raw, ok := b.member(field, required)
	if !ok {
		return nil
	}
	if s := string(raw); s != "true" && s != "false" {
		b.add(field, "must be true or false")
		return nil
	}
	v := string(raw) == "true"
	return &v
}

// err adds a problem for fields that no reader asked for, naming the fields
// the request takes instead, and returns every problem as one 422.
func (b *jsonBody) err() error {
	for name := range b.members {
		if !b.read[name] {
			fields := make([]string, 0, len(b.read))
			for f := range b.read {
				fields = append(fields, f)
			}
			slices.Sort(fields)
			b.add("", "holds a field this request does not take; it takes "+strings.Join(fields, ", "))
			break
		}
	}
	return b.problems.err()
}

// queryParams are a request's query parameters, read like a body's fields.
type queryParams struct {
	values url.Values
	problems
}

// query returns the query parameters of r. A query that cannot be parsed
// is a problem of its own.
func query(r *http.Request) *queryParams {
	values, err := url.ParseQuery(r.URL.RawQuery)
	q := &queryParams{values: values}
	if err != nil {
		q.add("", "the query string is not valid")
	}
	return q
}

// get returns the parameter's one value, "" when it is absent.
func (q *queryParams) get(name string) string {
	v := q.values[name]
	if len(v) > 1 {
		q.add(name, "must be given once")
	}
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// integer reads a whole number from lo to hi, def when absent.
func (q *queryParams) integer(name string, def, lo, hi int) int {
	v := q.get(name)
	if v == "" {
		return def
	}
	n, ok := wholeNumber(v, lo, hi)
	if !ok {
		q.add(name, "must be a whole number from "+strconv.Itoa(lo)+" to "+strconv.Itoa(hi))
		return def
	}
	return n
}

// boolean reads true or false; nil when absent.
func (q *queryParams) boolean(name string) *bool {
	switch q.get(name) {
	case "":
		return nil
	case "true":
		v := true
		return &v
	case "false":
		v := false
		return &v
	}
	q.add(name, "must be true or false")
	return nil
}

// pathUUID reads the path value name as a UUID, in the lower-case form
// PostgreSQL prints; a value that is not one is a 422 naming it.
func pathUUID(r *http.Request, name string) (string, error) {
	id, ok := parseUUID(r.PathValue(name))
	if !ok {
		return "", problems{{Field: name, Message: "must be a UUID"}}.err()
	}
	return id, nil
}

// parseUUID accepts the 8-4-4-4-12 hexadecimal form in either case.
func parseUUID(s string) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return "", false
			}
		case !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'):
			return "", false
		}
	}
	return strings.ToLower(s), true
}

// newUUID returns a random UUID version 4.
func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never fails
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:])
}

// etag is the strong entity tag of v's JSON: it changes whenever v does.
func etag(v any) string {
	b, _ := json.Marshal(v) // what the handlers tag always encodes
	sum := sha256.Sum256(b)
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`
}

// notModified reports whether If-None-Match names tag or is "*": a GET then
// answers 304. The comparison is weak (W/ ignored), as RFC 9110 has it.
func notModified(r *http.Request, tag string) bool {
	for _, t := range entityTags(r.Header.Values("If-None-Match")) {
		if t == "*" || strings.TrimPrefix(t, "W/") == tag {
			return true
		}
	}
	return false
}

// checkIfMatch is the 412 of a write whose If-Match names neither tag nor
// "*" (strong comparison); without If-Match the write goes ahead.
func checkIfMatch(r *http.Request, tag string) error {
	values := r.Header.Values("If-Match")
	if len(values) == 0 {
		return nil
	}
	for _, t := range entityTags(values) {
		if t == "*" || t == tag {
			return nil
		}
	}
	return newError(codePreconditionFailed, "The resource changed since you read it: read it again and send its new ETag")
}

// entityTags splits If-Match or If-None-Match values into their tags.
func entityTags(values []string) []string {
	var tags []string
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				tags = append(tags, t)
			}
		}
	}
	return tags
}

// cursors sign the position a page of a list ends at, so that the next
// request can start there. A cursor is opaque to clients: one that was
// changed, or that belongs to another list or filter, is refused.
type cursors struct {
	key []byte
}

// encode returns the cursor of list (its name and filter, as in "treatments
// active=true") after the row whose sort key is position.
func (c cursors) encode(list string, position []string) string {
	payload, _ := json.Marshal(append([]string{list}, position...)) // strings always encode
	return base64.RawURLEncoding.EncodeToString(payload) + "." + base64.RawURLEncoding.EncodeToString(c.sign(payload))
}

// decode returns the position, of size fields, of a cursor that encode
// made for the same list; false for anything else.
func (c cursors) decode(list, cursor string, size int) ([]string, bool) {
	data, mac, ok := strings.Cut(cursor, ".")
	payload, err1 := base64.RawURLEncoding.Strict().DecodeString(data)
	sum, err2 := base64.RawURLEncoding.Strict().DecodeString(mac)
	if !ok || err1 != nil || err2 != nil || !hmac.Equal(sum, c.sign(payload)) {
		return nil, false
	}
	var fields []string
	if json.Unmarshal(payload, &fields) != nil || len(fields) != size+1 || fields[0] != list {
		return nil, false
	}
	return fields[1:], true
}

// sign is the first 16 bytes of payload's HMAC-SHA256.
func (c cursors) sign(payload []byte) []byte {
	h := hmac.New(sha256.New, c.key)
	h.Write(payload)
	return h.Sum(nil)[:16]
}

// newCursors signs with a key that every instance sharing the database
// derives alike, so that a client may page through one list across them: a
// hash of DATABASE_URL, which holds the database password.
func newCursors(cfg config) cursors {
	key := sha256.Sum256([]byte("zenspa page cursors\n" + cfg.DatabaseURL))
	return cursors{key: key[:]}
}

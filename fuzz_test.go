package main

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz targets. `go test` runs their seeds; explore with, for example,
//
//	go test -run='^$' -fuzz='^FuzzParseDotenv$' -fuzztime=60s .

// fuzzEnvName is the file name FuzzParseDotenv passes to parseDotenv.
const fuzzEnvName = "fuzz.env"

// dotenvErrorLine matches the file:line prefix of a parseDotenv error.
var dotenvErrorLine = regexp.MustCompile(`^` + regexp.QuoteMeta(fuzzEnvName) + `:([0-9]+): `)

// secretLikeToken matches a long run of letters and digits: in a failing line
// it stands for a secret that the error must not repeat.
var secretLikeToken = regexp.MustCompile(`[A-Za-z0-9]{16,}`)

func FuzzParseDotenv(f *testing.F) {
	seeds := []string{
		"",
		"A=1",
		"A=1\nB=2\n",
		"# comment\n\n  \nexport A=v\nexport\tB=w\n",
		"export=1\n",
		`A='a#b $c \n'`,
		`A="x\ny \"q\" \\ \tz \r"`,
		`A=" a # b "`,
		"URL=postgres://a:b@h/d?x=1&y=2\n",
		"A=value # comment\nB=val#ue\n",
		`A="v" # c` + "\nB='w'  # c\n",
		"A=\nB=   \nC=''\nD=\"\"\n",
		"A = v\n  B\t=\tw  \n",
		"A=1\r\nB='2'\r\nC=\"3\"\r\n",
		"\ufeffA=1\nB=2",
		"A=1\rB=2\n",
		"A=\"\\\"\n",
		"A=\"a\\",
		// Malformed lines holding something secret-looking.
		"A=1\nZx9Qw7Er5Ty3Ui1Op2\n",
		"A=1\nB=\"Zx9Qw7Er5Ty3Ui1Op2\n",
		"B='Zx9Qw7Er5Ty3Ui1Op2\n",
		"1ABC=Zx9Qw7Er5Ty3Ui1Op2\n",
		"A-B=Zx9Qw7Er5Ty3Ui1Op2\n",
		"B=\"x\" Zx9Qw7Er5Ty3Ui1Op2\n",
		"B='x'Zx9Qw7Er5Ty3Ui1Op2\n",
		"Zx9Qw7Er5Ty3Ui1Op2=\"Zx9Qw7Er5Ty3Ui1Op2\n",
		"export Zx9Qw7Er5Ty3Ui1Op2\n",
		"=Zx9Qw7Er5Ty3Ui1Op2\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		vars, err := parseDotenv(fuzzEnvName, data)
		if err != nil {
			checkDotenvError(t, data, err)
			return
		}
		// Rendering the result with every value double-quoted and escaped
		// must parse back to the same variables.
		rendered := renderDotenv(vars)
		again, err := parseDotenv(fuzzEnvName, []byte(rendered))
		if err != nil {
			t.Fatalf("parseDotenv(render(parseDotenv(%q))) = %v, want no error; rendered %q", data, err, rendered)
		}
		if !maps.Equal(again, vars) {
			t.Fatalf("parseDotenv(render(parseDotenv(%q))) = %q, want %q", data, again, vars)
		}
	})
}

// checkDotenvError checks what must hold of a parseDotenv error: it names the
// file and the first line that fails, and does not repeat a secret-looking
// token from that line's value.
func checkDotenvError(t *testing.T, data []byte, err error) {
	t.Helper()
	msg := err.Error()
	m := dotenvErrorLine.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("parseDotenv(%q) = %q, want it to start with %s:LINE:", data, msg, fuzzEnvName)
	}
	n, _ := strconv.Atoi(m[1])
	lines := dotenvLines(data)
	if n < 1 || n > len(lines) {
		t.Fatalf("parseDotenv(%q) = %q, line %d out of 1..%d", data, msg, n, len(lines))
	}
	for i := range n - 1 {
		if _, _, _, err := parseDotenvLine(lines[i]); err != nil {
			t.Fatalf("parseDotenv(%q) = %q, but line %d already fails: %v", data, msg, i+1, err)
		}
	}
	line := lines[n-1]
	if len(line) < 1<<20-1 { // a longer line fails because of its length
		if _, _, _, err := parseDotenvLine(line); err == nil {
			t.Fatalf("parseDotenv(%q) = %q, but line %d parses", data, msg, n)
		}
	}
	// The part before the first "=" may be named as the key; the rest is the
	// value, which must not appear.
	keyPart, value, found := strings.Cut(line, "=")
	if !found {
		keyPart, value = "", line
	}
	for _, tok := range secretLikeToken.FindAllString(value, -1) {
		if !strings.ContainsAny(tok, "0123456789") || strings.Trim(tok, "0123456789") == "" {
			continue // not random-looking: all letters or all digits
		}
		if strings.Contains(keyPart, tok) || strings.Contains(fuzzEnvName, tok) {
			continue // may legitimately appear as the key
		}
		if strings.Contains(msg, tok) {
			t.Fatalf("parseDotenv(%q) = %q, repeats %q from line %d", data, msg, tok, n)
		}
	}
}

// dotenvLines splits data into lines the way bufio.ScanLines does.
func dotenvLines(data []byte) []string {
	s := string(data)
	s = strings.TrimSuffix(s, "\n")
	if s == "" && len(data) == 0 {
		return nil
	}
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(l, "\r")
	}
	return lines
}

// renderDotenv writes vars as KEY="value" lines, escaping \, ", CR and LF.
func renderDotenv(vars map[string]string) string {
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	escape := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + `="` + escape.Replace(vars[k]) + "\"\n")
	}
	return b.String()
}

// Sentinel passwords for FuzzLoadConfig. The underscore cannot be part of a
// URL scheme, the only piece of DATABASE_URL an error may quote.
const (
	fuzzDBPassword    = "SENTINEL_DB_PW_7f3a9c"
	fuzzRedisPassword = "SENTINEL_REDIS_PW_2b8e41"
)

func FuzzLoadConfig(f *testing.F) {
	envFile := filepath.Join(f.TempDir(), "empty.env")
	if err := os.WriteFile(envFile, nil, 0o600); err != nil {
		f.Fatal(err)
	}
	type seed struct{ port, cors, dbPrefix, dbSuffix, ttl, level string }
	seeds := []seed{
		{"8000", "http://localhost:3000", "postgres://u:", "@h:5432/db?sslmode=disable", "1s", "INFO"},
		{"", "", "postgresql://u:", "@h/db", "", ""},
		{"0", "*", "postgresql+asyncpg://u:", "@h/db", "-1s", "verbose"},
		{"65536", "http://a.com/x", "postgres://u:", "%zz@h/db", "abc", "debug"},
		{"abc", "ftp://a.com, http://", "postgres://u:", "@h:99999x/db", "0", "critical"},
		{"1", "HTTPS://A.COM:8443,http://[::1]:80", "mysql://u:", "@h/db", "0.5", "Warning"},
		{"65535", ",", "postgres:/u:", "@h/db?sslrootcert=file:///x", "1e300", "error"},
		{" 80 ", "http://a.com,*", "u:", "@h/db", "NaN", "warn"},
		{"8000", "http://localhost:3000", "postgres://h/db?password=", "&sslmode=disable", "500ms", "INFO"},
		{"8000", "http://localhost:3000", "postgres://", "@h/db", "2s", "INFO"},
		{"8000", "http://localhost:3000", "postgres://u:", "@/db", "2s", "INFO"},
		{"8000", "http://localhost:3000", "postgres:///db?host=/tmp&password=", "", "2s", "INFO"},
	}
	for _, s := range seeds {
		f.Add(s.port, s.cors, s.dbPrefix, s.dbSuffix, s.ttl, s.level)
	}
	f.Fuzz(func(t *testing.T, port, cors, dbPrefix, dbSuffix, ttl, level string) {
		dbURL := dbPrefix + fuzzDBPassword + dbSuffix
		env := map[string]string{
			"ENV_FILE":         envFile,
			"PORT":             port,
			"CORS_ORIGINS":     cors,
			"DATABASE_URL":     dbURL,
			"HEALTH_CACHE_TTL": ttl,
			"LOG_LEVEL":        level,
			"REDIS_PASSWORD":   fuzzRedisPassword,
		}
		cfg, err := loadConfig(mapLookupEnv(env))
		if err != nil {
			var ce *configError
			if !errors.As(err, &ce) || exitCode(err) != 2 {
				t.Fatalf("loadConfig(%q) = %v (%T), want a *configError", env, err, err)
			}
			// An error may quote PORT, CORS_ORIGINS, HEALTH_CACHE_TTL,
			// LOG_LEVEL (upper-cased) and the scheme of DATABASE_URL.
			scheme, _, _ := strings.Cut(strings.TrimSpace(dbURL), "://")
			quotable := strings.Join([]string{port, cors, ttl, level, scheme}, "\x00")
			checkNoSecret(t, "loadConfig error", err.Error(), quotable)
			return
		}

		if cfg.Port < 1 || cfg.Port > 65535 {
			t.Errorf("loadConfig(PORT=%q).Port = %d, want 1..65535", port, cfg.Port)
		}
		if cfg.HealthCacheTTL < 0 {
			t.Errorf("loadConfig(HEALTH_CACHE_TTL=%q).HealthCacheTTL = %v, want >= 0", ttl, cfg.HealthCacheTTL)
		}
		if len(cfg.CORSOrigins) == 0 {
			t.Errorf("loadConfig(CORS_ORIGINS=%q).CORSOrigins is empty", cors)
		}
		for _, o := range cfg.CORSOrigins {
			if n, err := normalizeOrigin(o); err != nil || n != o {
				t.Errorf("loadConfig(CORS_ORIGINS=%q) kept %q, which normalizes to %q, %v", cors, o, n, err)
			}
		}
		if !slices.Contains([]slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError, logLevelCritical}, cfg.LogLevel) {
			t.Errorf("loadConfig(LOG_LEVEL=%q).LogLevel = %v, want one of the five levels", level, cfg.LogLevel)
		}
		if cfg.DatabaseURL != strings.TrimSpace(dbURL) || cfg.RedisPassword != fuzzRedisPassword {
			t.Errorf("loadConfig changed DATABASE_URL or REDIS_PASSWORD")
		}

		// Logging the config shows the secrets masked. The sentinel may
		// appear only where it is not a password: in the origins, or in
		// the user, host, path, query or fragment of DATABASE_URL.
		var buf bytes.Buffer
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "config", cfg)
		u, err := url.Parse(cfg.DatabaseURL)
		if err != nil {
			t.Fatalf("loadConfig accepted DATABASE_URL %q that url.Parse refuses: %v", maskDatabaseURL(cfg.DatabaseURL), err)
		}
		quotable := []string{cors, strings.Join(cfg.CORSOrigins, ","), u.Scheme, u.Opaque, u.Host, u.Path, u.RawPath, u.Fragment, u.RawFragment}
		if u.User != nil {
			quotable = append(quotable, u.User.Username())
		}
		if q := u.Query(); q.Has("password") {
			// maskDatabaseURL rebuilds the query from its parsed pairs.
			for k, vs := range q {
				if k != "password" {
					quotable = append(quotable, k, strings.Join(vs, "\x00"))
				}
			}
		} else {
			quotable = append(quotable, u.RawQuery)
		}
		checkNoSecret(t, "logged config", buf.String(), strings.Join(quotable, "\x00"))
	})
}

// checkNoSecret fails when out contains a sentinel password, unless the
// sentinel was already in quotable, text that out may legitimately repeat
// (upper-cased or not).
func checkNoSecret(t *testing.T, what, out, quotable string) {
	t.Helper()
	for _, s := range []string{fuzzDBPassword, fuzzRedisPassword} {
		if strings.Contains(quotable, s) || strings.Contains(strings.ToUpper(quotable), s) {
			continue
		}
		if strings.Contains(out, s) {
			t.Fatalf("%s = %q, contains the secret %s", what, out, s)
		}
	}
}

// requestIDPattern is the rule of validRequestID, written independently.
var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

func FuzzValidRequestID(f *testing.F) {
	for _, s := range []string{
		"", "a", "req-123", "b684f544-73fa-4818-95bd-8252b27be49c", "trace.id:part_1",
		strings.Repeat("a", 128), strings.Repeat("a", 129), "a b", "a\nb", "é", "a/b", "<script>",
		"x\x00", "\xff", "-", ".", ":", "_", "A-Z.0:9_",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validRequestID(s), requestIDPattern.MatchString(s); got != want {
			t.Errorf("validRequestID(%q) = %v, want %v", s, got, want)
		}
		id := newUUID()
		if len(id) != 36 || !uuidV4.MatchString(id) || !validRequestID(id) {
			t.Errorf("newUUID() = %q, want a valid 36-character UUID v4", id)
		}
	})
}

func FuzzNormalizeOrigin(f *testing.F) {
	for _, s := range []string{
		"http://localhost:3000", "https://example.com", "HTTPS://App.Example.COM:8443", "http://[::1]:8080",
		"http://127.0.0.1", "*", "http://a.com/", "http://a.com/x", "http://a.com?x", "http://a.com?",
		"http://a.com#f", "http://u:p@a.com", "ftp://a.com", "http://", "http://:80", "a.com", "//a.com",
		"http:a.com", "http://a.com:0", "http://a.com:65536", "http://a.com:", "http://%c3%a9.com",
		"http://[fe80::1%25en0]:80", "http://[fe80::1%25a%2fb]", "http://a.com\\x", "http://xn--bcher-kva.example",
		"http://a.com:08080", "http://\xff.com",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := normalizeOrigin(s)
		if err != nil {
			return
		}
		if got != strings.ToLower(got) {
			t.Errorf("normalizeOrigin(%q) = %q, want lower case", s, got)
		}
		rest, ok := strings.CutPrefix(got, "http://")
		if !ok {
			rest, ok = strings.CutPrefix(got, "https://")
		}
		if !ok || rest == "" {
			t.Fatalf("normalizeOrigin(%q) = %q, want http:// or https:// and a host", s, got)
		}
		if strings.ContainsAny(rest, "/?#@") {
			t.Errorf("normalizeOrigin(%q) = %q, want no path, query, fragment or user info", s, got)
		}
		u, err := url.Parse(got)
		if err != nil {
			t.Fatalf("normalizeOrigin(%q) = %q, which url.Parse refuses: %v", s, got, err)
		}
		if u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.User != nil || u.Opaque != "" {
			t.Errorf("normalizeOrigin(%q) = %q, parses with path %q, query %q, fragment %q or user info", s, got, u.Path, u.RawQuery, u.Fragment)
		}
		if again, err := normalizeOrigin(got); err != nil || again != got {
			t.Errorf("normalizeOrigin(%q) = %q, %v, want %q (idempotent)", got, again, err, got)
		}
	})
}

// FuzzReadTreatmentInput: whatever the body, reading it never panics, a
// refusal is a 4xx *apiError, and what is accepted keeps every rule the
// database would otherwise enforce.
func FuzzReadTreatmentInput(f *testing.F) {
	for _, seed := range []string{
		`{"name":"Massage đá nóng 90 phút","duration_minutes":90,"price":650000}`,
		`{"name":" x ","description":"","duration_minutes":5,"price":0,"currency":"USD","active":false}`,
		`{"name":"\ud800","duration_minutes":60,"price":1}`, `{"price":1.5}`, `{}`, `[]`, `{"a":1} x`, "",
	} {
		f.Add([]byte(seed), false)
		f.Add([]byte(seed), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, partial bool) {
		r := httptest.NewRequest(http.MethodPost, "/api/v1/treatments", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		in, err := readTreatmentInput(r, partial)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || statusOf[ae.Code] < 400 || statusOf[ae.Code] > 499 {
				t.Fatalf("readTreatmentInput(%q) = %v, want a 4xx *apiError", body, err)
			}
			return
		}
		if !partial && (in.Name == nil || in.DurationMinutes == nil || in.Price == nil) {
			t.Fatalf("readTreatmentInput(%q) accepted a POST without its required fields: %+v", body, in)
		}
		for _, s := range []*string{in.Name, in.Description, in.Currency} {
			if s != nil && (!utf8.ValidString(*s) || strings.ContainsRune(*s, 0)) {
				t.Fatalf("readTreatmentInput(%q) accepted %q", body, *s)
			}
		}
		if in.Name != nil && (*in.Name != strings.TrimSpace(*in.Name) || *in.Name == "" || utf8.RuneCountInString(*in.Name) > 120) {
			t.Fatalf("readTreatmentInput(%q) accepted the name %q", body, *in.Name)
		}
		if d := in.DurationMinutes; d != nil && (*d < 5 || *d > 480 || *d%5 != 0) {
			t.Fatalf("readTreatmentInput(%q) accepted duration %d", body, *d)
		}
		if p := in.Price; p != nil && *p < 0 {
			t.Fatalf("readTreatmentInput(%q) accepted price %d", body, *p)
		}
	})
}

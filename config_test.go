package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Tests of config.go: defaults, precedence between the environment and the
// .env file, every validation rule, and that no secret ever reaches an error
// message or a log line. None of them needs PostgreSQL or Redis.

// configTestURL is a valid DATABASE_URL; nothing connects to it.
const configTestURL = "postgres://zuser:zpass@db.example:5432/zenspa?sslmode=disable"

// mapLookupEnv returns a lookupEnv over m.
func mapLookupEnv(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// writeConfigFile writes content to a new file called name in a temporary
// directory and returns its path.
func writeConfigFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// problemLine returns the line of err's text that reports key ("KEY: ..."),
// failing the test when err is not a *configError with such a line.
func problemLine(t *testing.T, err error, key string) string {
	t.Helper()
	var ce *configError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a *configError", err, err)
	}
	if got := exitCode(err); got != 2 {
		t.Errorf("exitCode(%v) = %d, want 2", err, got)
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), key+": ") {
			return line
		}
	}
	t.Fatalf("error %q has no line naming %s", err, key)
	return ""
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"DATABASE_URL": configTestURL,
		"ENV_FILE":     writeConfigFile(t, "empty.env", ""),
	}
	cfg, err := loadConfig(mapLookupEnv(env))
	if err != nil {
		t.Fatalf("loadConfig(only DATABASE_URL) = %v, want no error", err)
	}
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"APP_NAME", cfg.AppName, "ZenSpa Backend"},
		{"APP_VERSION", cfg.AppVersion, "0.1.0"},
		{"DEBUG", cfg.Debug, false},
		{"ENVIRONMENT", cfg.Environment, "development"},
		{"HOST", cfg.Host, "0.0.0.0"},
		{"PORT", cfg.Port, 8000},
		{"CORS_ORIGINS", cfg.CORSOrigins, []string{"http://localhost:3000"}},
		{"DATABASE_URL", cfg.DatabaseURL, configTestURL},
		{"DB_POOL_SIZE", cfg.DBPoolSize, 10},
		{"DB_MAX_OVERFLOW", cfg.DBMaxOverflow, 10},
		{"DB_POOL_TIMEOUT", cfg.DBPoolTimeout, 30 * time.Second},
		{"DB_ECHO", cfg.DBEcho, false},
		{"DB_CONNECT_ATTEMPTS", cfg.DBConnectAttempts, 3},
		{"DB_CONNECT_BACKOFF", cfg.DBConnectBackoff, 2 * time.Second},
		{"DB_CONNECT_TIMEOUT", cfg.DBConnectTimeout, 5 * time.Second},
		{"REDIS_HOST", cfg.RedisHost, "localhost"},
		{"REDIS_PORT", cfg.RedisPort, 6379},
		{"REDIS_DB", cfg.RedisDB, 0},
		{"REDIS_PASSWORD", cfg.RedisPassword, ""},
		{"REDIS_POOL_SIZE", cfg.RedisPoolSize, 10},
		{"REDIS_DECODE_RESPONSES", cfg.RedisDecodeResponses, true},
		{"HEALTH_CHECK_TIMEOUT", cfg.HealthCheckTimeout, 2 * time.Second},
		{"HEALTH_CACHE_TTL", cfg.HealthCacheTTL, time.Second},
		{"SHUTDOWN_DRAIN_DELAY", cfg.ShutdownDrainDelay, time.Duration(0)},
		{"SHUTDOWN_TIMEOUT", cfg.ShutdownTimeout, 15 * time.Second},
		{"LOG_LEVEL", cfg.LogLevel, slog.LevelInfo},
		{"TRUSTED_PROXIES", cfg.TrustedProxies, []netip.Prefix(nil)},
		{"RATE_LIMIT", cfg.RateLimit, 300},
		{"RATE_LIMIT_WINDOW", cfg.RateLimitWindow, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("loadConfig(defaults).%s = %#v, want %#v", tt.name, tt.got, tt.want)
			}
		})
	}
}

// TestConfigEmptyMeansDefault checks that a variable set to the empty string
// (or only spaces) takes its default rather than failing validation.
func TestConfigEmptyMeansDefault(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"DATABASE_URL": configTestURL,
		"ENV_FILE":     writeConfigFile(t, "empty.env", ""),
	}
	for _, k := range []string{"APP_NAME", "DEBUG", "ENVIRONMENT", "PORT", "CORS_ORIGINS", "DB_POOL_TIMEOUT",
		"HEALTH_CACHE_TTL", "SHUTDOWN_DRAIN_DELAY", "LOG_LEVEL", "REDIS_DECODE_RESPONSES"} {
		env[k] = " "
	}
	cfg, err := loadConfig(mapLookupEnv(env))
	if err != nil {
		t.Fatalf("loadConfig(empty values) = %v, want no error", err)
	}
	if cfg.Port != 8000 || cfg.AppName != "ZenSpa Backend" || cfg.HealthCacheTTL != time.Second ||
		!cfg.RedisDecodeResponses || cfg.LogLevel != slog.LevelInfo ||
		!reflect.DeepEqual(cfg.CORSOrigins, []string{"http://localhost:3000"}) {
		t.Errorf("loadConfig(empty values) = %+v, want the defaults", cfg.LogValue())
	}
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	file := strings.Join([]string{
		"APP_NAME=From File",
		"HOST=10.1.2.3",
		"PORT=9000",
		"LOG_LEVEL=ERROR",
		"DATABASE_URL=postgres://fileuser:filepw@filehost/filedb",
		"REDIS_DB=7",
	}, "\n") + "\n"
	tests := []struct {
		name  string
		env   map[string]string // ENV_FILE is added
		check func(config) (got, want any)
	}{
		{"env beats file", map[string]string{"APP_NAME": "From Env"},
			func(c config) (any, any) { return c.AppName, "From Env" }},
		{"env beats file for DATABASE_URL", map[string]string{"DATABASE_URL": configTestURL},
			func(c config) (any, any) { return c.DatabaseURL, configTestURL }},
		{"empty env beats file with the default", map[string]string{"PORT": ""},
			func(c config) (any, any) { return c.Port, 8000 }},
		{"empty env beats file for a string", map[string]string{"APP_NAME": ""},
			func(c config) (any, any) { return c.AppName, "ZenSpa Backend" }},
		{"empty env beats file for LOG_LEVEL", map[string]string{"LOG_LEVEL": ""},
			func(c config) (any, any) { return c.LogLevel, slog.LevelInfo }},
		{"key only in file is used", map[string]string{},
			func(c config) (any, any) { return c.Host, "10.1.2.3" }},
		{"DATABASE_URL only in file is used", map[string]string{},
			func(c config) (any, any) { return c.DatabaseURL, "postgres://fileuser:filepw@filehost/filedb" }},
		{"key in neither takes the default", map[string]string{},
			func(c config) (any, any) { return c.RedisPort, 6379 }},
		{"file value parsed", map[string]string{},
			func(c config) (any, any) { return c.RedisDB, 7 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"ENV_FILE": writeConfigFile(t, "custom.env", file)}
			for k, v := range tt.env {
				env[k] = v
			}
			cfg, err := loadConfig(mapLookupEnv(env))
			if err != nil {
				t.Fatalf("loadConfig(%v) = %v, want no error", tt.env, err)
			}
			if got, want := tt.check(cfg); !reflect.DeepEqual(got, want) {
				t.Errorf("loadConfig(%v) = %v, want %v", tt.env, got, want)
			}
			if cfg.configFileDescription != env["ENV_FILE"] {
				t.Errorf("loadConfig(%v).configFileDescription = %q, want %q", tt.env, cfg.configFileDescription, env["ENV_FILE"])
			}
		})
	}
}

func TestConfigEnvFileMissing(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "nope.env")
	_, err := loadConfig(mapLookupEnv(map[string]string{"ENV_FILE": missing, "DATABASE_URL": configTestURL}))
	if err == nil {
		t.Fatalf("loadConfig(ENV_FILE=%s) = nil error, want one", missing)
	}
	line := problemLine(t, err, "ENV_FILE")
	if !strings.Contains(line, missing) {
		t.Errorf("loadConfig(ENV_FILE=%s) error line = %q, want it to name the file", missing, line)
	}
}

// TestConfigDefaultEnvFile changes the working directory, so it and its
// subtests do not run in parallel.
func TestConfigDefaultEnvFile(t *testing.T) {
	t.Run("missing .env is fine", func(t *testing.T) {
		t.Chdir(t.TempDir())
		cfg, err := loadConfig(mapLookupEnv(map[string]string{"DATABASE_URL": configTestURL}))
		if err != nil {
			t.Fatalf("loadConfig(no .env) = %v, want no error", err)
		}
		if cfg.Port != 8000 || cfg.configFileDescription != "none" {
			t.Errorf("loadConfig(no .env) = port %d, file %q, want 8000, \"none\"", cfg.Port, cfg.configFileDescription)
		}
	})
	t.Run(".env in the working directory is read", func(t *testing.T) {
		t.Chdir(t.TempDir())
		if err := os.WriteFile(".env", []byte("PORT=9001\nDATABASE_URL="+configTestURL+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := loadConfig(mapLookupEnv(map[string]string{}))
		if err != nil {
			t.Fatalf("loadConfig(.env) = %v, want no error", err)
		}
		if cfg.Port != 9001 || cfg.DatabaseURL != configTestURL || cfg.configFileDescription != ".env" {
			t.Errorf("loadConfig(.env) = port %d, url %q, file %q, want 9001, %q, \".env\"",
				cfg.Port, maskDatabaseURL(cfg.DatabaseURL), cfg.configFileDescription, maskDatabaseURL(configTestURL))
		}
	})
	t.Run("empty ENV_FILE means .env", func(t *testing.T) {
		t.Chdir(t.TempDir())
		if err := os.WriteFile(".env", []byte("PORT=9002\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := loadConfig(mapLookupEnv(map[string]string{"ENV_FILE": "", "DATABASE_URL": configTestURL}))
		if err != nil {
			t.Fatalf("loadConfig(ENV_FILE=\"\") = %v, want no error", err)
		}
		if cfg.Port != 9002 {
			t.Errorf("loadConfig(ENV_FILE=\"\").Port = %d, want 9002 from .env", cfg.Port)
		}
	})
	t.Run("malformed default .env is an error", func(t *testing.T) {
		t.Chdir(t.TempDir())
		if err := os.WriteFile(".env", []byte("PORT=9003\nSENTINEL_NOEQUALS_93\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := loadConfig(mapLookupEnv(map[string]string{"DATABASE_URL": configTestURL}))
		if err == nil {
			t.Fatal("loadConfig(malformed .env) = nil error, want one")
		}
		if got := exitCode(err); got != 2 {
			t.Errorf("exitCode(%v) = %d, want 2", err, got)
		}
		if msg := err.Error(); !strings.Contains(msg, ".env:2:") || strings.Contains(msg, "SENTINEL_NOEQUALS_93") {
			t.Errorf("loadConfig(malformed .env) = %q, want .env:2 and no line content", msg)
		}
	})
}

// configRefused marks a table case whose value must be refused.
type configRefused struct{}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	field := map[string]func(config) any{
		"DEBUG":                  func(c config) any { return c.Debug },
		"DB_ECHO":                func(c config) any { return c.DBEcho },
		"REDIS_DECODE_RESPONSES": func(c config) any { return c.RedisDecodeResponses },
		"ENVIRONMENT":            func(c config) any { return c.Environment },
		"PORT":                   func(c config) any { return c.Port },
		"REDIS_PORT":             func(c config) any { return c.RedisPort },
		"DB_POOL_SIZE":           func(c config) any { return c.DBPoolSize },
		"DB_CONNECT_ATTEMPTS":    func(c config) any { return c.DBConnectAttempts },
		"DB_POOL_TIMEOUT":        func(c config) any { return c.DBPoolTimeout },
		"DB_CONNECT_BACKOFF":     func(c config) any { return c.DBConnectBackoff },
		"DB_CONNECT_TIMEOUT":     func(c config) any { return c.DBConnectTimeout },
		"HEALTH_CHECK_TIMEOUT":   func(c config) any { return c.HealthCheckTimeout },
		"HEALTH_CACHE_TTL":       func(c config) any { return c.HealthCacheTTL },
		"SHUTDOWN_DRAIN_DELAY":   func(c config) any { return c.ShutdownDrainDelay },
		"SHUTDOWN_TIMEOUT":       func(c config) any { return c.ShutdownTimeout },
		"LOG_LEVEL":              func(c config) any { return c.LogLevel },
		"CORS_ORIGINS":           func(c config) any { return c.CORSOrigins },
		"DATABASE_URL":           func(c config) any { return c.DatabaseURL },
		"TRUSTED_PROXIES":        func(c config) any { return c.TrustedProxies },
		"RATE_LIMIT":             func(c config) any { return c.RateLimit },
		"RATE_LIMIT_WINDOW":      func(c config) any { return c.RateLimitWindow },
	}
	prefixes := func(ps ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range ps {
			out = append(out, netip.MustParsePrefix(p))
		}
		return out
	}
	tests := []struct {
		key, value string
		want       any // configRefused{} when the value must be refused
	}{
		// Booleans: true/false, 1/0, yes/no in any case.
		{"DEBUG", "true", true},
		{"DEBUG", "TRUE", true},
		{"DEBUG", "False", false},
		{"DEBUG", "1", true},
		{"DEBUG", "0", false},
		{"DEBUG", "yes", true},
		{"DEBUG", "YES", true},
		{"DEBUG", "No", false},
		{"DEBUG", "maybe", configRefused{}},
		{"DEBUG", "2", configRefused{}},
		{"DEBUG", "on", configRefused{}},
		{"DEBUG", "y", configRefused{}},
		{"DB_ECHO", "Yes", true},
		{"DB_ECHO", "off", configRefused{}},
		{"REDIS_DECODE_RESPONSES", "0", false},
		{"REDIS_DECODE_RESPONSES", "nope", configRefused{}},

		// ENVIRONMENT: one of three.
		{"ENVIRONMENT", "development", "development"},
		{"ENVIRONMENT", "staging", "staging"},
		{"ENVIRONMENT", "production", "production"},
		{"ENVIRONMENT", "prod", configRefused{}},
		{"ENVIRONMENT", "test", configRefused{}},

		// Ports: 1-65535.
		{"PORT", "1", 1},
		{"PORT", "65535", 65535},
		{"PORT", "8080", 8080},
		{"PORT", "0", configRefused{}},
		{"PORT", "65536", configRefused{}},
		{"PORT", "-1", configRefused{}},
		{"PORT", "abc", configRefused{}},
		{"PORT", "80.5", configRefused{}},
		{"REDIS_PORT", "6380", 6380},
		{"REDIS_PORT", "0", configRefused{}},
		{"REDIS_PORT", "x", configRefused{}},
		{"DB_POOL_SIZE", "abc", configRefused{}},
		{"DB_CONNECT_ATTEMPTS", "5", 5},
		{"DB_CONNECT_ATTEMPTS", "many", configRefused{}},

		// Durations: Go syntax or bare seconds.
		{"DB_POOL_TIMEOUT", "500ms", 500 * time.Millisecond},
		{"DB_POOL_TIMEOUT", "2s", 2 * time.Second},
		{"DB_POOL_TIMEOUT", "30", 30 * time.Second},
		{"DB_POOL_TIMEOUT", "0.5", 500 * time.Millisecond},
		{"DB_POOL_TIMEOUT", "1m30s", 90 * time.Second},
		{"DB_POOL_TIMEOUT", "abc", configRefused{}},
		{"DB_POOL_TIMEOUT", "-1s", configRefused{}},
		{"DB_POOL_TIMEOUT", "-5", configRefused{}},
		{"DB_POOL_TIMEOUT", "0", configRefused{}},
		{"DB_POOL_TIMEOUT", "10 s", configRefused{}},
		{"DB_CONNECT_BACKOFF", "250ms", 250 * time.Millisecond},
		{"DB_CONNECT_BACKOFF", "abc", configRefused{}},
		{"DB_CONNECT_TIMEOUT", "-1s", configRefused{}},
		{"SHUTDOWN_TIMEOUT", "0", configRefused{}},
		{"SHUTDOWN_TIMEOUT", "20", 20 * time.Second},
		{"HEALTH_CHECK_TIMEOUT", "0", configRefused{}},
		{"HEALTH_CHECK_TIMEOUT", "0s", configRefused{}},
		{"HEALTH_CHECK_TIMEOUT", "1.5", 1500 * time.Millisecond},
		{"HEALTH_CACHE_TTL", "0", time.Duration(0)},
		{"HEALTH_CACHE_TTL", "0s", time.Duration(0)},
		{"HEALTH_CACHE_TTL", "500ms", 500 * time.Millisecond},
		{"HEALTH_CACHE_TTL", "-1s", configRefused{}},
		{"HEALTH_CACHE_TTL", "abc", configRefused{}},
		{"SHUTDOWN_DRAIN_DELAY", "0", time.Duration(0)},
		{"SHUTDOWN_DRAIN_DELAY", "5s", 5 * time.Second},
		{"SHUTDOWN_DRAIN_DELAY", "-1s", configRefused{}},
		{"SHUTDOWN_DRAIN_DELAY", "abc", configRefused{}},

		// LOG_LEVEL: five names in any case.
		{"LOG_LEVEL", "DEBUG", slog.LevelDebug},
		{"LOG_LEVEL", "debug", slog.LevelDebug},
		{"LOG_LEVEL", "Info", slog.LevelInfo},
		{"LOG_LEVEL", "WARNING", slog.LevelWarn},
		{"LOG_LEVEL", "warning", slog.LevelWarn},
		{"LOG_LEVEL", "ERROR", slog.LevelError},
		{"LOG_LEVEL", "critical", logLevelCritical},
		{"LOG_LEVEL", "CRITICAL", logLevelCritical},
		{"LOG_LEVEL", "verbose", configRefused{}},
		{"LOG_LEVEL", "TRACE", configRefused{}},

		// CORS_ORIGINS: exact origins only.
		{"CORS_ORIGINS", "http://a.com", []string{"http://a.com"}},
		{"CORS_ORIGINS", "http://a.com, https://b.org:8443", []string{"http://a.com", "https://b.org:8443"}},
		{"CORS_ORIGINS", "http://a.com,https://b.org,http://localhost:3000", []string{"http://a.com", "https://b.org", "http://localhost:3000"}},
		{"CORS_ORIGINS", "HTTPS://App.Example.COM", []string{"https://app.example.com"}},
		{"CORS_ORIGINS", "*", configRefused{}},
		{"CORS_ORIGINS", "http://a.com,*", configRefused{}},
		{"CORS_ORIGINS", "http://a.com/x", configRefused{}},
		{"CORS_ORIGINS", "http://a.com/", configRefused{}},
		{"CORS_ORIGINS", "http://a.com?x=1", configRefused{}},
		{"CORS_ORIGINS", "ftp://a.com", configRefused{}},
		{"CORS_ORIGINS", "http://", configRefused{}},
		{"CORS_ORIGINS", "http://:8080", configRefused{}},
		{"CORS_ORIGINS", "a.com", configRefused{}},
		{"CORS_ORIGINS", ",", configRefused{}},

		// DATABASE_URL: required, postgres:// or postgresql:// only.
		{"DATABASE_URL", "postgres://u:p@h:5432/db", "postgres://u:p@h:5432/db"},
		{"DATABASE_URL", "postgresql://u:p@h/db?sslmode=disable", "postgresql://u:p@h/db?sslmode=disable"},
		{"DATABASE_URL", "postgres:///db?host=/var/run/postgresql", "postgres:///db?host=/var/run/postgresql"},
		{"DATABASE_URL", "", configRefused{}},
		{"DATABASE_URL", "postgresql+asyncpg://u:p@h/db", configRefused{}},
		{"DATABASE_URL", "mysql://u:p@h/db", configRefused{}},
		{"DATABASE_URL", "h:5432/db", configRefused{}},
		{"DATABASE_URL", "postgres:///db", configRefused{}},

		// TRUSTED_PROXIES: CIDRs and bare addresses, IPv4-mapped ones unmapped.
		{"TRUSTED_PROXIES", "10.0.0.0/8", prefixes("10.0.0.0/8")},
		{"TRUSTED_PROXIES", " 10.0.0.0/8 , 192.168.1.7,2001:db8::/32,::1 ", prefixes("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32", "::1/128")},
		{"TRUSTED_PROXIES", "10.1.2.3/8", prefixes("10.0.0.0/8")},
		{"TRUSTED_PROXIES", "::ffff:10.0.0.0/104", prefixes("10.0.0.0/8")},
		{"TRUSTED_PROXIES", "::ffff:10.0.0.5", prefixes("10.0.0.5/32")},
		{"TRUSTED_PROXIES", ",", []netip.Prefix(nil)},
		{"TRUSTED_PROXIES", "10.0.0.0/33", configRefused{}},
		{"TRUSTED_PROXIES", "10.0.0/8", configRefused{}},
		{"TRUSTED_PROXIES", "10.0.0.256", configRefused{}},
		{"TRUSTED_PROXIES", "lb.example.com", configRefused{}},
		{"TRUSTED_PROXIES", "fe80::1%eth0", configRefused{}},
		{"TRUSTED_PROXIES", "10.0.0.0/8;10.1.0.0/16", configRefused{}},
		{"TRUSTED_PROXIES", "0.0.0.0/0", configRefused{}},
		{"TRUSTED_PROXIES", "::/0", configRefused{}},
		{"TRUSTED_PROXIES", "10.0.0.1, *", configRefused{}},

		// The rate limit: 0 turns it off; the window is 1s to 24h.
		{"RATE_LIMIT", "0", 0},
		{"RATE_LIMIT", "1", 1},
		{"RATE_LIMIT", "1000000", 1000000},
		{"RATE_LIMIT", "-1", configRefused{}},
		{"RATE_LIMIT", "1000001", configRefused{}},
		{"RATE_LIMIT", "10.5", configRefused{}},
		{"RATE_LIMIT", "lots", configRefused{}},
		{"RATE_LIMIT_WINDOW", "1s", time.Second},
		{"RATE_LIMIT_WINDOW", "90", 90 * time.Second},
		{"RATE_LIMIT_WINDOW", "24h", 24 * time.Hour},
		{"RATE_LIMIT_WINDOW", "0", configRefused{}},
		{"RATE_LIMIT_WINDOW", "0s", configRefused{}},
		{"RATE_LIMIT_WINDOW", "-1m", configRefused{}},
		{"RATE_LIMIT_WINDOW", "999ms", configRefused{}},
		{"RATE_LIMIT_WINDOW", "25h", configRefused{}},
		{"RATE_LIMIT_WINDOW", "soon", configRefused{}},
	}
	for _, tt := range tests {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			t.Parallel()
			cfg, err := loadConfig(testEnv(t, configTestURL, tt.key+"="+tt.value))
			if _, refuse := tt.want.(configRefused); refuse {
				if err == nil {
					t.Fatalf("loadConfig(%s=%q) = nil error, want one naming %s", tt.key, tt.value, tt.key)
				}
				problemLine(t, err, tt.key)
				return
			}
			if err != nil {
				t.Fatalf("loadConfig(%s=%q) = %v, want no error", tt.key, tt.value, err)
			}
			if got := field[tt.key](cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("loadConfig(%s=%q).%s = %#v, want %#v", tt.key, tt.value, tt.key, got, tt.want)
			}
		})
	}
}

func TestConfigDatabaseURLMessages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		value string
		want  string // in the DATABASE_URL line
	}{
		{"", "required"},
		{"postgresql+asyncpg://u:p@h/db", "change it to postgresql://"},
		{"postgres+psycopg2://u:p@h/db", "change it to postgresql://"},
		{"mysql://u:p@h/db", "postgres:// or postgresql://"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(testEnv(t, tt.value))
			if err == nil {
				t.Fatalf("loadConfig(DATABASE_URL=%q) = nil error, want one", tt.value)
			}
			if line := problemLine(t, err, "DATABASE_URL"); !strings.Contains(line, tt.want) {
				t.Errorf("loadConfig(DATABASE_URL=%q) = %q, want it to say %q", tt.value, line, tt.want)
			}
		})
	}
}

func TestConfigAllErrorsAtOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		kv   []string
		keys []string
	}{
		{"five bad variables",
			[]string{"PORT=0", "DEBUG=maybe", "ENVIRONMENT=prod", "LOG_LEVEL=verbose", "HEALTH_CHECK_TIMEOUT=0"},
			[]string{"PORT", "DEBUG", "ENVIRONMENT", "LOG_LEVEL", "HEALTH_CHECK_TIMEOUT"}},
		{"five others, DATABASE_URL among them",
			[]string{"DATABASE_URL=", "CORS_ORIGINS=*", "REDIS_PORT=x", "SHUTDOWN_DRAIN_DELAY=-1s", "DB_ECHO=sure"},
			[]string{"DATABASE_URL", "CORS_ORIGINS", "REDIS_PORT", "SHUTDOWN_DRAIN_DELAY", "DB_ECHO"}},
		// An empty origin list must be reported even when an earlier
		// variable already failed.
		{"empty CORS_ORIGINS after another error",
			[]string{"DEBUG=maybe", "CORS_ORIGINS=,"},
			[]string{"DEBUG", "CORS_ORIGINS"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(testEnv(t, configTestURL, tt.kv...))
			if err == nil {
				t.Fatalf("loadConfig(%v) = nil error, want one", tt.kv)
			}
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("loadConfig(%v) = %T, want *configError", tt.kv, err)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != 1+len(tt.keys) {
				t.Errorf("loadConfig(%v) = %q: %d lines, want a header and %d problems", tt.kv, err, len(lines), len(tt.keys))
			}
			for _, k := range tt.keys {
				problemLine(t, err, k)
			}
		})
	}
}

func TestConfigNoSecretInErrors(t *testing.T) {
	t.Parallel()
	const dbSecret, redisSecret = "SENTINEL_PW_1", "SENTINEL_PW_2"
	tests := []struct {
		name string
		kv   []string
	}{
		{"asyncpg scheme", []string{"DATABASE_URL=postgresql+asyncpg://u:" + dbSecret + "@h/db"}},
		{"bad percent escape in password", []string{"DATABASE_URL=postgres://u:" + dbSecret + "%zz@h/db"}},
		{"bad port", []string{"DATABASE_URL=postgres://u:" + dbSecret + "@h:99999x/db"}},
		{"non-numeric port", []string{"DATABASE_URL=postgres://u:" + dbSecret + "@h:abc/db"}},
		{"mysql", []string{"DATABASE_URL=mysql://u:" + dbSecret + "@h/db"}},
		{"no scheme", []string{"DATABASE_URL=u:" + dbSecret + "@h/db"}},
		{"no host", []string{"DATABASE_URL=postgres://u:" + dbSecret + "@/db"}},
		// A mistyped scheme separator makes the first "://" appear later:
		// the text before it holds the password and must not be echoed.
		{"one slash, later ://", []string{"DATABASE_URL=postgres:/u:" + dbSecret + "@h/db?sslrootcert=file:///x"}},
		{"space in URL", []string{"DATABASE_URL=postgres://u:" + dbSecret + "@h /db"}},
		{"redis password with other errors", []string{
			"REDIS_PASSWORD=" + redisSecret, "PORT=0", "DEBUG=maybe", "REDIS_PORT=x",
			"DATABASE_URL=postgresql+asyncpg://u:" + dbSecret + "@h/db"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(testEnv(t, configTestURL, tt.kv...))
			if err == nil {
				t.Fatalf("loadConfig(%s) = nil error, want one", tt.name)
			}
			problemLine(t, err, "DATABASE_URL")
			for _, s := range []string{dbSecret, redisSecret} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("loadConfig(%s) = %q, contains the secret %s", tt.name, err, s)
				}
			}
		})
	}
}

func TestConfigLogValueMasksSecrets(t *testing.T) {
	t.Parallel()
	const dbSecret, redisSecret = "SENTINEL_PW_1", "SENTINEL_PW_2"
	tests := []struct {
		name, url string
	}{
		{"password in user info", "postgres://zuser:" + dbSecret + "@db.example:5432/zenspa?sslmode=disable"},
		{"password parameter", "postgres://zuser@db.example:5432/zenspa?password=" + dbSecret + "&sslmode=disable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t, tt.url, "REDIS_PASSWORD="+redisSecret)
			if cfg.RedisPassword != redisSecret || cfg.DatabaseURL != tt.url {
				t.Fatalf("loadConfig did not keep the secrets: %q, %q", cfg.RedisPassword, maskDatabaseURL(cfg.DatabaseURL))
			}
			var jsonBuf, textBuf bytes.Buffer
			slog.New(slog.NewJSONHandler(&jsonBuf, nil)).Info("x", "config", cfg)
			slog.New(slog.NewTextHandler(&textBuf, nil)).Info("x", "config", cfg)
			outputs := map[string]string{
				"JSON log":          jsonBuf.String(),
				"text log":          textBuf.String(),
				"fmt.Sprint(value)": fmt.Sprint(cfg.LogValue()),
			}
			for name, out := range outputs {
				for _, s := range []string{dbSecret, redisSecret} {
					if strings.Contains(out, s) {
						t.Errorf("%s = %s, contains the secret %s", name, out, s)
					}
				}
				for _, want := range []string{maskedPassword, "zuser", "db.example", "redis_password"} {
					if !strings.Contains(out, want) {
						t.Errorf("%s = %s, want it to contain %q", name, out, want)
					}
				}
			}
		})
	}
}

func TestMaskDatabaseURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
	}{
		{"postgres://u:secret@h:5432/db?sslmode=disable", "postgres://u:xxxxx@h:5432/db?sslmode=disable"},
		{"postgres://u@h/db", "postgres://u@h/db"},
		{"postgres://h/db", "postgres://h/db"},
		{"postgres://u:@h/db", "postgres://u:xxxxx@h/db"},
		{"postgres://h/db?password=secret&sslmode=disable", "postgres://h/db?password=xxxxx&sslmode=disable"},
		{"postgres://u:s1@h/db?password=s2&password=s3", "postgres://u:xxxxx@h/db?password=xxxxx"},
		{"postgres://u:p%40ss@h/db", "postgres://u:xxxxx@h/db"},
		{"postgres://h/db?Password=secret&PASSWORD=s2", "postgres://h/db?PASSWORD=xxxxx&Password=xxxxx"},
		{"postgres://u:secret%zz@h/db", "(unparsable URL)"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			if got := maskDatabaseURL(tt.in); got != tt.want {
				t.Errorf("maskDatabaseURL(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"500ms", 500 * time.Millisecond, false},
		{"2s", 2 * time.Second, false},
		{"1m30s", 90 * time.Second, false},
		{"30", 30 * time.Second, false},
		{"0.5", 500 * time.Millisecond, false},
		{"0", 0, false},
		{"-1s", -time.Second, false}, // parsed; the caller refuses negatives
		{"abc", 0, true},
		{"", 0, true},
		{"10 s", 0, true},
		{"NaN", 0, true},
		{"Inf", 0, true},
		{"1e300", 0, true},
		{"-1e300", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := parseDuration(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Errorf("parseDuration(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("parseDuration(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestNormalizeOrigin(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string // want "" when in must be refused
	}{
		{"http://localhost:3000", "http://localhost:3000"},
		{"https://example.com", "https://example.com"},
		{"HTTPS://App.Example.COM:8443", "https://app.example.com:8443"},
		{"http://127.0.0.1", "http://127.0.0.1"},
		{"http://[::1]:8080", "http://[::1]:8080"},
		{"*", ""},
		{"http://a.com/", ""},
		{"http://a.com/x", ""},
		{"http://a.com?x=1", ""},
		{"http://a.com?", ""},
		{"http://a.com#f", ""},
		{"http://u:p@a.com", ""},
		{"ftp://a.com", ""},
		{"ws://a.com", ""},
		{"http://", ""},
		{"http://:8080", ""},
		{"a.com", ""},
		{"//a.com", ""},
		{"http:a.com", ""},
		{"http://a.com:0", ""},
		{"http://a.com:65536", ""},
		{"http://a.com:x", ""},
		{"http://a b.com", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := normalizeOrigin(tt.in)
			if tt.want == "" {
				if err == nil {
					t.Errorf("normalizeOrigin(%q) = %q, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("normalizeOrigin(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseDotenv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
		want     map[string]string
	}{
		{"empty file", "", map[string]string{}},
		{"comments and blank lines", "# comment\n\n   \n  # indented comment\nA=1\n\n", map[string]string{"A": "1"}},
		{"export", "export A=v\nexport\tB=w\n", map[string]string{"A": "v", "B": "w"}},
		{"key named export", "export=1\n", map[string]string{"export": "1"}},
		{"single quotes are literal", `A='a#b $c \n "q"'`, map[string]string{"A": `a#b $c \n "q"`}},
		{"double quote escapes", `A="x\ny \"q\" \\ \tz"`, map[string]string{"A": "x\ny \"q\" \\ \tz"}},
		{"double quotes keep # and spaces", `A=" a # b "`, map[string]string{"A": " a # b "}},
		{"equals inside the value", "URL=postgres://a:b@h/d?x=1&y=2", map[string]string{"URL": "postgres://a:b@h/d?x=1&y=2"}},
		{"unquoted comment stripped", "A=value # comment\nB=val#ue\n", map[string]string{"A": "value", "B": "val#ue"}},
		{"empty value then comment", "REDIS_PASSWORD= # none\nB=\t#x\n", map[string]string{"REDIS_PASSWORD": "", "B": ""}},
		{"comment after quotes", `A="v" # c` + "\n" + `B='w'   # c`, map[string]string{"A": "v", "B": "w"}},
		{"empty values", "A=\nB=   \nC=''\nD=\"\"\n", map[string]string{"A": "", "B": "", "C": "", "D": ""}},
		{"spaces around =", "A = v\n  B\t=\tw  \n", map[string]string{"A": "v", "B": "w"}},
		{"CRLF line endings", "A=1\r\nB='2'\r\nC=\"3\"\r\n# c\r\n", map[string]string{"A": "1", "B": "2", "C": "3"}},
		{"UTF-8 BOM", "\ufeffA=1\nB=2\n", map[string]string{"A": "1", "B": "2"}},
		{"no final newline", "A=1\nB=2", map[string]string{"A": "1", "B": "2"}},
		{"later line wins", "A=1\nA=2\n", map[string]string{"A": "2"}},
		{"lower-case and digits in key", "lower_key1=x\n_U=y\n", map[string]string{"lower_key1": "x", "_U": "y"}},
		{"unicode value", "APP_NAME=Zen Spa ✿\n", map[string]string{"APP_NAME": "Zen Spa ✿"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseDotenv("test.env", []byte(tt.in))
			if err != nil {
				t.Fatalf("parseDotenv(%q) = %v, want no error", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseDotenv(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseDotenvErrors(t *testing.T) {
	t.Parallel()
	const secret = "SENTINEL_DOTENV_7c1e"
	tests := []struct {
		name, in string
		line     int
	}{
		{"no equals sign", "A=1\n# comment\n" + secret + "\n", 3},
		{"export without equals", "export " + secret + "\n", 1},
		{"key starting with a digit", "A=1\n1ABC=" + secret + "\n", 2},
		{"dash in key", "\nA-B=" + secret + "\n", 2},
		{"space in key", "A B=" + secret + "\n", 1},
		{"empty key", "=" + secret + "\n", 1},
		{"unterminated single quote", "A=1\nB='" + secret + "\n", 2},
		{"unterminated double quote", "A=1\n\nB=\"" + secret + "\n", 3},
		{"escaped closing quote", `B="` + secret + `\"`, 1},
		{"quote closed on the next line", "B=\"" + secret + "\nmore\"\n", 1},
		{"text after double quote", "A=1\nB=\"x\" " + secret + "\n", 2},
		{"text after single quote", "B='x'" + secret + "\n", 1},
		{"CRLF file", "A=1\r\nB=2\r\n" + secret + "\r\n", 3},
		{"after a BOM", "\ufeffA=1\nB='" + secret + "\n", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseDotenv("test.env", []byte(tt.in))
			if err == nil {
				t.Fatalf("parseDotenv(%q) = %q, want an error", tt.in, got)
			}
			prefix := fmt.Sprintf("test.env:%d: ", tt.line)
			if msg := err.Error(); !strings.HasPrefix(msg, prefix) {
				t.Errorf("parseDotenv(%q) = %q, want it to start with %q", tt.in, msg, prefix)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("parseDotenv(%q) = %q, contains the line's content", tt.in, err)
			}
		})
	}
}

// TestParseDotenvLongLine checks that a line too long to read still gets its
// file:line in the error.
func TestParseDotenvLongLine(t *testing.T) {
	t.Parallel()
	in := "A=1\nB=" + strings.Repeat("x", 1<<20+10) + "\nC=3\n"
	_, err := parseDotenv("big.env", []byte(in))
	if err == nil {
		t.Fatal("parseDotenv(a 1 MiB line) = nil error, want one")
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "big.env:2: ") || strings.Contains(msg, "xxxxxxxx") {
		t.Errorf("parseDotenv(a 1 MiB line) = %q, want big.env:2 and no content", msg)
	}
}

func TestConfigMalformedEnvFile(t *testing.T) {
	t.Parallel()
	const secret = "SENTINEL_DOTENV_5d2a"
	tests := []struct {
		name, content string
		line          int
	}{
		{"no equals", "PORT=9000\n" + secret + "\n", 2},
		{"unterminated password", "PORT=9000\n\nREDIS_PASSWORD=\"" + secret + "\n", 3},
		{"unterminated database URL", "DATABASE_URL='postgres://u:" + secret + "@h/db\n", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeConfigFile(t, "bad.env", tt.content)
			_, err := loadConfig(mapLookupEnv(map[string]string{"ENV_FILE": path, "DATABASE_URL": configTestURL}))
			if err == nil {
				t.Fatalf("loadConfig(%s) = nil error, want one", tt.name)
			}
			if got := exitCode(err); got != 2 {
				t.Errorf("exitCode(%v) = %d, want 2", err, got)
			}
			want := fmt.Sprintf("%s:%d:", path, tt.line)
			if msg := err.Error(); !strings.Contains(msg, want) || strings.Contains(msg, secret) {
				t.Errorf("loadConfig(%s) = %q, want %q and no line content", tt.name, msg, want)
			}
		})
	}
}

func TestConfigUnknownKeysIgnored(t *testing.T) {
	t.Parallel()
	path := writeConfigFile(t, "extra.env", "SOMETHING_ELSE=1\nlower=2\nPORT=9000\nOLD_SETTING=not a number\n")
	cfg, err := loadConfig(mapLookupEnv(map[string]string{"ENV_FILE": path, "DATABASE_URL": configTestURL}))
	if err != nil {
		t.Fatalf("loadConfig(unknown keys) = %v, want no error", err)
	}
	if cfg.Port != 9000 {
		t.Errorf("loadConfig(unknown keys).Port = %d, want 9000", cfg.Port)
	}
}

// TestEnvExampleMatchesConfig keeps .env.example, the one table of the
// configuration, true: it names exactly the variables loadConfig reads, and
// every value it sets is that variable's default (but DATABASE_URL's, which
// has none: the file holds the local development database there).
func TestEnvExampleMatchesConfig(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(".env.example")
	mustf(t, err, "read .env.example")
	set, err := parseDotenv(".env.example", data)
	mustf(t, err, "parse .env.example")
	unset := map[string]bool{} // the #KEY=example lines
	for _, line := range strings.Split(string(data), "\n") {
		if key, _, ok := strings.Cut(strings.TrimPrefix(line, "#"), "="); ok && line != "" && line[0] == '#' && validEnvKey(key) {
			unset[key] = true
			if _, both := set[key]; both {
				t.Errorf(".env.example sets %s and shows it unset too", key)
			}
		}
	}

	// The variables loadConfig asks for, read off its lookups.
	empty := writeConfigFile(t, "empty.env", "")
	lookupOnly := func(kv map[string]string, asked map[string]bool) func(string) (string, bool) {
		return func(key string) (string, bool) {
			if asked != nil {
				asked[key] = true
			}
			v, ok := kv[key]
			return v, ok
		}
	}
	asked := map[string]bool{}
	_, _ = loadConfig(lookupOnly(map[string]string{"ENV_FILE": empty}, asked))
	for key := range asked {
		if _, ok := set[key]; !ok && !unset[key] {
			t.Errorf("config.go reads %s, which .env.example does not list", key)
		}
	}
	for key := range set {
		if !asked[key] {
			t.Errorf(".env.example sets %s, which config.go does not read", key)
		}
	}
	for key := range unset {
		if !asked[key] {
			t.Errorf(".env.example lists %s, which config.go does not read", key)
		}
	}

	// Each value set must change nothing against the defaults.
	base := map[string]string{"ENV_FILE": empty, "DATABASE_URL": set["DATABASE_URL"]}
	defaults, err := loadConfig(lookupOnly(base, nil))
	mustf(t, err, "loadConfig with only DATABASE_URL")
	for key, value := range set {
		if key == "DATABASE_URL" {
			continue
		}
		env := map[string]string{key: value}
		for k, v := range base {
			env[k] = v
		}
		cfg, err := loadConfig(lookupOnly(env, nil))
		if err != nil {
			t.Errorf(".env.example's %s=%s is refused: %v", key, value, err)
			continue
		}
		if !reflect.DeepEqual(cfg, defaults) {
			t.Errorf(".env.example's %s=%s is not the default config.go uses", key, value)
		}
	}
}

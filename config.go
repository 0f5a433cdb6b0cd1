package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// config is everything zenspa reads from its environment. It is built once by
// loadConfig and never changed afterwards.
type config struct {
	AppName     string
	AppVersion  string
	Debug       bool
	Environment string
	Host        string
	Port        int
	CORSOrigins []string

	DatabaseURL       string
	DBPoolSize        int
	DBMaxOverflow     int
	DBPoolTimeout     time.Duration
	DBEcho            bool
	DBConnectAttempts int
	DBConnectBackoff  time.Duration
	DBConnectTimeout  time.Duration

	RedisHost            string
	RedisPort            int
	RedisDB              int
	RedisPassword        string
	RedisPoolSize        int
	RedisDecodeResponses bool          // accepted for compatibility; has no effect
	RequestTimeout       time.Duration // bounds an API request's database and cache work
	CacheTTL             time.Duration // how long a cached read lives in Redis; 0: no caching
	HealthCheckTimeout   time.Duration
	HealthCacheTTL       time.Duration
	ShutdownDrainDelay   time.Duration
	ShutdownTimeout      time.Duration
	LogLevel             slog.Level
	LogFile              string
	MigrateOnStart       bool
	MigrateLockTimeout   time.Duration
	MetricsEnabled       bool   // count requests and serve /metrics
	MetricsAddr          string // host:port of the private /metrics and pprof listener; empty: /metrics on the main one
	DocsEnabled          bool   // serve /openapi.json, /docs and /redoc
	DocsAssetBaseURL     string // where the docs pages load Swagger UI and ReDoc from, no trailing slash
	NotifySocket         string // systemd's sd_notify socket; empty when not under Type=notify

	// Who the client is, and how much it may ask (clientaddr.go, ratelimit.go).
	TrustedProxies  []netip.Prefix // peers whose X-Forwarded-For names the client
	RateLimit       int            // requests per RateLimitWindow per client; 0: no limit
	RateLimitWindow time.Duration

	// Authentication: on when SUPABASE_URL is set (auth.go).
	SupabaseURL           string
	AuthIssuer            string // the exact iss of access tokens
	AuthJWKSURL           string // where the public keys are; "" with only a legacy secret
	SupabaseJWTSecret     string // the legacy HS256 secret; empty: HS256 refused
	AuthAudience          string
	AuthLeeway            time.Duration
	AuthJWKSTTL           time.Duration
	configFileDescription string // which .env file was read, for the startup log
}

// defaultEnvFile is read when ENV_FILE is not set; it may be missing.
const defaultEnvFile = ".env"

// loadConfig builds the config from the process environment (lookupEnv) and
// the .env file, the environment winning even when a variable is set to the
// empty string. It reports every problem at once, one line each, and never
// puts a secret into an error message.
func loadConfig(lookupEnv func(string) (string, bool)) (config, error) {
	get, source, err := envGetter(lookupEnv)
	if err != nil {
		return config{}, err
	}
	p := parser{get: get}
	cfg := config{
		AppName:     p.str("APP_NAME", "ZenSpa Backend"),
		AppVersion:  p.str("APP_VERSION", buildVersion),
		Debug:       p.boolean("DEBUG", false),
		Environment: p.oneOf("ENVIRONMENT", "development", "development", "staging", "production"),
		Host:        p.str("HOST", "0.0.0.0"),
		Port:        p.integer("PORT", 8000, 1, 65535),
		CORSOrigins: p.origins("CORS_ORIGINS", "http://localhost:3000"),

		DatabaseURL:       p.databaseURL("DATABASE_URL", p.secret("DATABASE_URL")),
		DBPoolSize:        p.integer("DB_POOL_SIZE", 10, 1, 10000),
		DBMaxOverflow:     p.integer("DB_MAX_OVERFLOW", 10, 0, 10000),
		DBPoolTimeout:     p.duration("DB_POOL_TIMEOUT", 30*time.Second, false),
		DBEcho:            p.boolean("DB_ECHO", false),
		DBConnectAttempts: p.integer("DB_CONNECT_ATTEMPTS", 3, 1, 1000),
		DBConnectBackoff:  p.duration("DB_CONNECT_BACKOFF", 2*time.Second, false),
		DBConnectTimeout:  p.duration("DB_CONNECT_TIMEOUT", 5*time.Second, false),

		RedisHost:            p.str("REDIS_HOST", "localhost"),
		RedisPort:            p.integer("REDIS_PORT", 6379, 1, 65535),
		RedisDB:              p.integer("REDIS_DB", 0, 0, 1<<20),
		RedisPassword:        p.secret("REDIS_PASSWORD"),
		RedisPoolSize:        p.integer("REDIS_POOL_SIZE", 10, 1, 10000),
		RedisDecodeResponses: p.boolean("REDIS_DECODE_RESPONSES", true),
		RequestTimeout:       p.duration("REQUEST_TIMEOUT", 10*time.Second, false),
		CacheTTL:             p.duration("CACHE_TTL", time.Minute, true),
		HealthCheckTimeout:   p.duration("HEALTH_CHECK_TIMEOUT", 2*time.Second, false),
		HealthCacheTTL:       p.duration("HEALTH_CACHE_TTL", time.Second, true),
		ShutdownDrainDelay:   p.duration("SHUTDOWN_DRAIN_DELAY", 0, true),
		ShutdownTimeout:      p.duration("SHUTDOWN_TIMEOUT", 15*time.Second, false),
		LogLevel:             p.logLevel("LOG_LEVEL", slog.LevelInfo),
		LogFile:              get("LOG_FILE"),
		MigrateOnStart:       p.boolean("MIGRATE_ON_START", false),
		MigrateLockTimeout:   p.duration("MIGRATE_LOCK_TIMEOUT", 60*time.Second, false),
		MetricsEnabled:       p.boolean("METRICS_ENABLED", true),
		MetricsAddr:          p.listenAddress("METRICS_ADDR"),
		NotifySocket:         get("NOTIFY_SOCKET"),

		TrustedProxies:  p.trustedProxies("TRUSTED_PROXIES"),
		RateLimit:       p.integer("RATE_LIMIT", 300, 0, maxRateLimit),
		RateLimitWindow: p.duration("RATE_LIMIT_WINDOW", time.Minute, false),

		configFileDescription: source,
	}
	// Interactive API docs help everywhere but in production, where they
	// would show the whole surface to anyone: there they are opt-in.
	cfg.DocsEnabled = p.boolean("DOCS_ENABLED", cfg.Environment != "production")
	cfg.DocsAssetBaseURL = p.assetBaseURL("DOCS_ASSET_BASE_URL", defaultDocsAssetBaseURL)
	if w := cfg.RateLimitWindow; w < time.Second || w > 24*time.Hour {
		p.fail("RATE_LIMIT_WINDOW", "must be from 1s to 24h, got %s", w)
	}
	p.auth(&cfg)
	if len(p.problems) > 0 {
		return config{}, &configError{problems: p.problems}
	}
	return cfg, nil
}

// auth reads the authentication variables. The issuer and the JWKS URL
// derive from SUPABASE_URL unless AUTH_ISSUER and AUTH_JWKS_URL (a
// self-hosted Supabase) say otherwise; nothing of it may be set without
// SUPABASE_URL, which turns authentication on.
func (p *parser) auth(cfg *config) {
	cfg.SupabaseURL = strings.TrimRight(p.get("SUPABASE_URL"), "/")
	cfg.AuthIssuer = p.str("AUTH_ISSUER", cfg.SupabaseURL+"/auth/v1")
	cfg.AuthJWKSURL = p.str("AUTH_JWKS_URL", cfg.SupabaseURL+"/auth/v1/.well-known/jwks.json")
	cfg.SupabaseJWTSecret = p.secret("SUPABASE_JWT_SECRET")
	cfg.AuthAudience = p.str("AUTH_AUDIENCE", defaultAuthAudience)
	cfg.AuthLeeway = p.duration("AUTH_LEEWAY", defaultAuthLeeway, true)
	cfg.AuthJWKSTTL = p.duration("AUTH_JWKS_TTL", defaultJWKSTTL, false)
	if cfg.AuthLeeway > 5*time.Minute {
		p.fail("AUTH_LEEWAY", "must be at most 5m, got %s", cfg.AuthLeeway)
	}
	if cfg.AuthJWKSTTL > 20*time.Minute {
		p.fail("AUTH_JWKS_TTL", "must be at most 20m: Supabase asks that keys be fetched again within about 10 minutes, got %s", cfg.AuthJWKSTTL)
	}
	if cfg.SupabaseURL == "" {
		for _, key := range []string{"AUTH_ISSUER", "AUTH_JWKS_URL", "SUPABASE_JWT_SECRET", "SUPABASE_JWT_SECRET_FILE"} {
			if p.get(key) != "" {
				p.fail(key, "is set but SUPABASE_URL, which turns authentication on, is not")
			}
		}
		cfg.AuthIssuer, cfg.AuthJWKSURL = "", ""
		return
	}
	if u, err := url.Parse(cfg.SupabaseURL); err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		p.fail("SUPABASE_URL", "must be the project's URL, such as https://PROJECT.supabase.co, without credentials, query or fragment")
	}
	if err := validJWKSURL(cfg.AuthJWKSURL); err != nil {
		p.fail(p.nameOf("AUTH_JWKS_URL", "SUPABASE_URL"), "%v", err)
	}
	if n := len(cfg.SupabaseJWTSecret); n > 0 && n < 32 {
		p.fail("SUPABASE_JWT_SECRET", "must be at least 32 bytes, got %d", n) // the length only: it is a secret
	}
}

// nameOf is key when it is set, else the variable its default derives from.
func (p *parser) nameOf(key, from string) string {
	if p.get(key) != "" {
		return key
	}
	return from
}

// loadProbeAddr reads only HOST and PORT, for commands that must work
// without the rest of the configuration (zenspa healthcheck needs no
// DATABASE_URL), and returns where a local client reaches the server.
func loadProbeAddr(lookupEnv func(string) (string, bool)) (string, error) {
	get, _, err := envGetter(lookupEnv)
	if err != nil {
		return "", err
	}
	p := parser{get: get}
	host := p.str("HOST", "0.0.0.0")
	port := p.integer("PORT", 8000, 1, 65535)
	if len(p.problems) > 0 {
		return "", &configError{problems: p.problems}
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1" // listening everywhere: loopback is one of them
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// configError lists every problem found in the configuration, one per line.
type configError struct {
	problems []string
}

func (e *configError) Error() string {
	return "invalid configuration:\n  " + strings.Join(e.problems, "\n  ")
}

// parser reads typed values, collecting a problem per bad variable instead of
// stopping at the first.
type parser struct {
	get      func(string) string
	problems []string
}

func (p *parser) fail(key, format string, args ...any) {
	p.problems = append(p.problems, key+": "+fmt.Sprintf(format, args...))
}

func (p *parser) str(key, def string) string {
	if v := p.get(key); v != "" {
		return v
	}
	return def
}

func (p *parser) boolean(key string, def bool) bool {
	v := p.get(key)
	if v == "" {
		return def
	}
	switch strings.ToLower(v) {
	case "true", "1", "yes":
		return true
	case "false", "0", "no":
		return false
	}
	p.fail(key, "must be true/false, 1/0 or yes/no, got %q", v)
	return def
}

func (p *parser) integer(key string, def, lo, hi int) int {
	v := p.get(key)
	if v == "" {
		return def
	}
	n, ok := wholeNumber(v, lo, hi)
	if !ok {
		p.fail(key, "must be a whole number from %d to %d, got %q", lo, hi, v)
		return def
	}
	return n
}

// wholeNumber parses v as a whole number from lo to hi.
func wholeNumber(v string, lo, hi int) (int, bool) {
	n, err := strconv.Atoi(v)
	return n, err == nil && n >= lo && n <= hi
}

// duration accepts Go syntax ("500ms", "2s") or a bare number of seconds.
func (p *parser) duration(key string, def time.Duration, zeroOK bool) time.Duration {
	v := p.get(key)
	if v == "" {
		return def
	}
	d, err := parseDuration(v)
	if err != nil || d < 0 || (d == 0 && !zeroOK) {
		want := "a positive duration"
		if zeroOK {
			want = "a duration of zero or more"
		}
		p.fail(key, "must be %s such as 500ms, 2s or 30 (seconds), got %q", want, v)
		return def
	}
	return d
}

// parseDuration parses "1.5s"-style durations and bare seconds ("30", "0.5").
func parseDuration(v string) (time.Duration, error) {
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		// Out of range, the float-to-Duration conversion is implementation-defined.
		if secs > float64(1<<62)/float64(time.Second) || secs < -float64(1<<62)/float64(time.Second) || secs != secs {
			return 0, errors.New("out of range")
		}
		return time.Duration(secs * float64(time.Second)), nil
	}
	return time.ParseDuration(v)
}

func (p *parser) oneOf(key, def string, allowed ...string) string {
	v := strings.ToLower(p.get(key))
	if v == "" {
		return def
	}
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	p.fail(key, "must be one of %s, got %q", strings.Join(allowed, ", "), v)
	return def
}

// logLevelCritical sits above slog.LevelError for LOG_LEVEL=CRITICAL.
const logLevelCritical = slog.Level(12)

func (p *parser) logLevel(key string, def slog.Level) slog.Level {
	v := strings.ToUpper(p.get(key))
	switch v {
	case "":
		return def
	case "DEBUG":
		return slog.LevelDebug
	case "INFO":
		return slog.LevelInfo
	case "WARNING", "WARN":
		return slog.LevelWarn
	case "ERROR":
		return slog.LevelError
	case "CRITICAL":
		return logLevelCritical
	}
	p.fail(key, "must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got %q", v)
	return def
}

// origins parses a comma-separated list of exact origins.
func (p *parser) origins(key, def string) []string {
	v := p.get(key)
	if v == "" {
		v = def
	}
	before := len(p.problems) // problems of earlier variables must not hide an empty list
	out := listOf(p, key, v, normalizeOrigin)
	if len(out) == 0 && len(p.problems) == before {
		p.fail(key, "must list at least one origin")
	}
	return out
}

// normalizeOrigin checks that o is scheme://host[:port] with nothing else and
// returns it lower-cased, the form browsers send.
func normalizeOrigin(o string) (string, error) {
	if o == "*" {
		return "", errors.New("a wildcard is not allowed: list each origin (credentials are allowed, so browsers reject *)")
	}
	u, err := url.Parse(o)
	if err != nil || u.Opaque != "" {
		return "", errors.New("not a valid origin (want scheme://host[:port])")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", errors.New("scheme must be http or https")
	case u.Host == "" || u.Hostname() == "":
		return "", errors.New("host is missing")
	case u.User != nil:
		return "", errors.New("must not contain user information")
	case u.Path != "" || u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(o[len(u.Scheme)+3:], "/?#"):
		return "", errors.New("must not have a path, query or fragment (want scheme://host[:port])")
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", errors.New("port must be from 1 to 65535")
		}
	}
	// The authority as written: u.Host is unescaped, and "%25" or "%2f" in an
	// IPv6 zone would come back as "%" or "/".
	return strings.ToLower(u.Scheme + "://" + o[len(u.Scheme)+3:]), nil
}

// secret returns key's value, or the content of the file named by key_FILE
// (systemd LoadCredential=, Docker secrets) with its trailing newline
// trimmed. Setting both is an error: one of them would be silently ignored.
func (p *parser) secret(key string) string {
	v, file := p.get(key), p.get(key+"_FILE")
	switch {
	case file == "":
		return v
	case v != "":
		p.fail(key, "is set together with %s_FILE: set only one of them", key)
		return ""
	}
	b, err := os.ReadFile(file)
	if err != nil {
		p.fail(key+"_FILE", "cannot read %q: %v", file, unwrapPathError(err))
		return ""
	}
	s := strings.TrimSuffix(string(b), "\n")
	return strings.TrimSuffix(s, "\r")
}

// databaseURL checks the DATABASE_URL value v without ever echoing it: it
// may hold a password.
func (p *parser) databaseURL(key, v string) string {
	if v == "" {
		p.fail(key, "is required, or DATABASE_URL_FILE naming a file that holds it (for example postgres://user:password@127.0.0.1:5432/zenspa?sslmode=disable)")
		return ""
	}
	scheme, _, found := strings.Cut(v, "://")
	// Only a well-formed scheme is ever quoted: when the first "://" comes
	// late (postgres:/u:pw@h/db?x=file://), the text before it holds the password.
	if !found || strings.TrimLeft(strings.ToLower(scheme), "abcdefghijklmnopqrstuvwxyz0123456789+-.") != "" {
		p.fail(key, "must be a URL starting with postgres:// or postgresql://")
		return ""
	}
	switch s := strings.ToLower(scheme); {
	case s == "postgres" || s == "postgresql":
	case strings.HasPrefix(s, "postgresql+") || strings.HasPrefix(s, "postgres+"):
		p.fail(key, "uses the SQLAlchemy driver scheme %q: change it to postgresql:// (drop %q)", scheme, scheme[strings.IndexByte(scheme, '+'):])
		return ""
	default:
		p.fail(key, "scheme must be postgres:// or postgresql://, got %q", scheme)
		return ""
	}
	u, err := url.Parse(v)
	if err != nil {
		// url.Parse's message quotes the whole URL, password included.
		p.fail(key, "is not a valid URL (check that special characters in the password are percent-encoded)")
		return ""
	}
	if u.Hostname() == "" && u.Query().Get("host") == "" {
		p.fail(key, "has no host")
		return ""
	}
	return v
}

// listenAddress reads a host:port to listen on, such as METRICS_ADDR; empty
// stays empty. An empty host means every interface.
func (p *parser) listenAddress(key string) string {
	v := p.get(key)
	if v == "" {
		return ""
	}
	_, port, err := net.SplitHostPort(v)
	n, perr := strconv.Atoi(port)
	if err != nil || perr != nil || n < 1 || n > 65535 {
		p.fail(key, "must be host:port with a port from 1 to 65535, such as 127.0.0.1:9100, got %q", v)
		return ""
	}
	return v
}

// trustedProxies reads a comma-separated list of CIDRs and bare addresses
// (a bare address is a /32 or /128). An IPv4-mapped IPv6 prefix
// (::ffff:10.0.0.0/104) becomes the IPv4 prefix it maps, since clientAddr
// compares unmapped addresses. A prefix of every address is refused: with
// it, any client could name itself in X-Forwarded-For.
func (p *parser) trustedProxies(key string) []netip.Prefix {
	return listOf(p, key, p.get(key), parseTrustedProxy)
}

// listOf parses each item of the comma-separated value of key, skipping
// empty ones and failing, quoted, each that parse refuses.
func listOf[T any](p *parser, key, value string, parse func(string) (T, error)) []T {
	var out []T
	for _, item := range strings.Split(value, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		v, err := parse(item)
		if err != nil {
			p.fail(key, "%q: %v", item, err)
			continue
		}
		out = append(out, v)
	}
	return out
}

// parseTrustedProxy parses one entry of TRUSTED_PROXIES.
func parseTrustedProxy(v string) (netip.Prefix, error) {
	var prefix netip.Prefix
	if strings.Contains(v, "/") {
		pr, err := netip.ParsePrefix(v) // refuses a zone
		if err != nil {
			return netip.Prefix{}, errors.New("not a CIDR such as 10.0.0.0/8 or 2001:db8::/32")
		}
		prefix = pr.Masked()
	} else {
		a, err := netip.ParseAddr(v)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, errors.New("not an IP address or a CIDR such as 10.0.0.0/8")
		}
		prefix = netip.PrefixFrom(a, a.BitLen())
	}
	if a := prefix.Addr(); a.Is4In6() && prefix.Bits() >= 96 {
		prefix = netip.PrefixFrom(a.Unmap(), prefix.Bits()-96)
	}
	if prefix.Bits() == 0 {
		return netip.Prefix{}, errors.New("trusts every address, so any client could name itself: list the proxies")
	}
	return prefix, nil
}

// assetBaseURL reads DOCS_ASSET_BASE_URL: an http or https URL with no query,
// fragment or credentials, and none of the characters that would end a
// source in the pages' Content-Security-Policy. It is returned without its
// trailing slash.
func (p *parser) assetBaseURL(key, def string) string {
	v := strings.TrimRight(p.str(key, def), "/")
	u, err := url.Parse(v)
	switch {
	// These two are not quoted: the value may hold a password.
	case err != nil:
		p.fail(key, "is not a valid URL")
	case u.User != nil:
		p.fail(key, "must not hold credentials")
	case u.Scheme != "http" && u.Scheme != "https":
		p.fail(key, "must start with http:// or https://, got %q", v)
	case u.Host == "":
		p.fail(key, "has no host, got %q", v)
	case u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(v, "?#"):
		p.fail(key, "must not have a query or a fragment, got %q", v)
	case strings.ContainsAny(v, ";,'\" \t\r\n"):
		p.fail(key, "must not contain ; , quotes or spaces, got %q", v)
	default:
		return v
	}
	return def
}

// maskedPassword replaces secrets wherever they are shown.
const maskedPassword = "xxxxx"

// maskDatabaseURL returns raw with the password (in the user info or in a
// password= parameter) replaced by a mask.
func maskDatabaseURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), maskedPassword)
		}
	}
	// libpq reads parameter names case-insensitively: so does the mask.
	q, masked := u.Query(), false
	for k := range q {
		if strings.EqualFold(k, "password") {
			q[k] = []string{maskedPassword}
			masked = true
		}
	}
	if masked {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// LogValue makes logging a config safe: secrets are masked.
func (c config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("app_name", c.AppName),
		slog.String("app_version", c.AppVersion),
		slog.String("environment", c.Environment),
		slog.Bool("debug", c.Debug),
		slog.String("listen", c.listenAddr()),
		slog.Any("cors_origins", c.CORSOrigins),
		slog.String("database_url", maskDatabaseURL(c.DatabaseURL)),
		slog.Int("db_pool_size", c.DBPoolSize),
		slog.Int("db_max_overflow", c.DBMaxOverflow),
		slog.Duration("db_pool_timeout", c.DBPoolTimeout),
		slog.String("redis", c.redisAddr()),
		slog.Int("redis_db", c.RedisDB),
		slog.String("redis_password", mask(c.RedisPassword)),
		slog.Duration("request_timeout", c.RequestTimeout),
		slog.Duration("cache_ttl", c.CacheTTL),
		slog.Duration("health_check_timeout", c.HealthCheckTimeout),
		slog.Duration("health_cache_ttl", c.HealthCacheTTL),
		slog.Bool("docs_enabled", c.DocsEnabled),
		slog.String("docs_asset_base_url", c.DocsAssetBaseURL),
		slog.Bool("metrics_enabled", c.MetricsEnabled),
		slog.String("metrics_addr", c.MetricsAddr),
		slog.Any("trusted_proxies", c.TrustedProxies),
		slog.Int("rate_limit", c.RateLimit),
		slog.Duration("rate_limit_window", c.RateLimitWindow),
		slog.String("supabase_url", c.SupabaseURL),
		slog.String("auth_issuer", c.AuthIssuer),
		slog.String("auth_jwks_url", c.AuthJWKSURL),
		slog.String("supabase_jwt_secret", mask(c.SupabaseJWTSecret)),
		slog.String("env_file", c.configFileDescription),
	)
}

// mask hides a secret: "" stays "", anything else is shown as xxxxx.
func mask(secret string) string {
	if secret == "" {
		return ""
	}
	return maskedPassword
}

// String masks secrets like LogValue, so that printing a config with fmt is
// as safe as logging it.
func (c config) String() string { return c.LogValue().String() }

// GoString does the same for %#v.
func (c config) GoString() string { return c.String() }

func (c config) listenAddr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }
func (c config) redisAddr() string  { return net.JoinHostPort(c.RedisHost, strconv.Itoa(c.RedisPort)) }

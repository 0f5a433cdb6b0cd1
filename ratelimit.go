package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// The rate limit every instance shares: RATE_LIMIT requests per
// RATE_LIMIT_WINDOW for each client, kept in Redis so that a fleet of N
// instances enforces one limit, not N.
//
// The algorithm is GCRA, the generic cell rate algorithm (a leaky bucket
// written as one timestamp). A budget is one key holding its theoretical
// arrival time (TAT): each admitted request pushes it one emission interval
// (window / limit) later, and the budget is whole again once it has passed.
// A request is admitted when, counting it, the TAT lies at most one window
// ahead of now: so a fresh client may send the whole limit in a burst, and
// then one request per interval. Unlike fixed windows, which admit twice the
// limit across a window's edge, no span of time ever sees more than the
// limit plus what refilled meanwhile; unlike a sliding log, the state is one
// number per client whatever its rate. The key expires when the TAT passes,
// that is when the budget is whole again, so an idle client costs nothing.
//
// One Lua script reads, decides and writes in one step, so concurrent
// requests on any instance cannot both take the last unit, and it reads the
// time from Redis, so the instances' clocks need not agree. A refused
// request does not move the TAT: a client that keeps asking while refused
// is not pushed further back.
//
// Whose budget: a request whose bearer token verifies counts against its
// user (the token's sub) only, not against its address, so that the
// receptionists of one spa behind one office NAT each have their own. Any
// other request, one with an invalid token included, counts against its
// client address (clientaddr.go); IPv6 clients by their /64, which one host
// can rotate through at will.
//
// Redis down or slower than rateLimitTimeout: the request passes unchecked
// (fail open: the limit protects the service, and Redis being away must not
// take the service with it), a warning is logged at most every few seconds
// and rate_limit_fail_open_total counts it.
//
// The answers of every limited route carry RateLimit-Limit,
// RateLimit-Remaining and RateLimit-Reset as draft-ietf-httpapi-ratelimit-
// headers-06 defines them (the last revision with these three fields; -07
// replaced them with RateLimit and RateLimit-Policy). Reset is in
// delta-seconds: how long until the budget is whole again, or on a 429, as
// the draft asks of an answer that also has Retry-After, how long until the
// next request is admitted.

const (
	// maxRateLimit bounds RATE_LIMIT: with a window of at least a second,
	// the emission interval is then at least the microsecond the script
	// counts in.
	maxRateLimit = 1_000_000
	// rateLimitTimeout bounds a check, the wait for a pooled connection
	// included: past it the request passes unchecked.
	rateLimitTimeout = 50 * time.Millisecond
	// rateLimitKeyPrefix namespaces the budgets in Redis.
	rateLimitKeyPrefix = "zenspa:rl:"
)

// gcraScript is the whole check. KEYS[1] is the budget; ARGV[1] the
// emission interval and ARGV[2] the limit. Times are microseconds of the
// Redis clock, which fit a Lua number exactly; string.format writes the TAT
// as a whole number (tostring would round it to 14 digits). It answers
// {admitted (1 or 0), remaining, retry after, reset}, the last two in
// microseconds.
const gcraScript = `
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local ahead = tat + interval - now
if ahead > capacity then
  local wait = ahead - capacity
  return {0, 0, wait, wait}
end
redis.call('SET', KEYS[1], string.format('%d', now + ahead), 'PX', math.ceil(ahead / 1000))
return {1, math.floor((capacity - ahead) / interval), 0, ahead}
`

// rateLimiter checks requests against the shared budgets. It is nil when
// RATE_LIMIT is 0.
type rateLimiter struct {
	cache    *cache
	log      *slog.Logger
	script   *redis.Script
	limit    int
	interval time.Duration // the window divided by the limit
	prefix   string        // rateLimitKeyPrefix; tests take one of their own
	timeout  time.Duration
	warn     every

	allowed, limited, failedOpen atomic.Uint64
}

// newRateLimiter returns the limiter RATE_LIMIT and RATE_LIMIT_WINDOW ask
// for, or nil when RATE_LIMIT is 0.
func newRateLimiter(cfg config, c *cache, log *slog.Logger) *rateLimiter {
	if cfg.RateLimit <= 0 {
		return nil
	}
	return &rateLimiter{
		cache:    c,
		log:      log,
		script:   redis.NewScript(1, gcraScript),
		limit:    cfg.RateLimit,
		interval: cfg.RateLimitWindow / time.Duration(cfg.RateLimit),
		prefix:   rateLimitKeyPrefix,
		timeout:  rateLimitTimeout,
		warn:     every{interval: 5 * time.Second},
	}
}

// rateDecision is the script's answer for one request.
type rateDecision struct {
	allowed    bool
	remaining  int
	retryAfter time.Duration // until the next request is admitted; 0 when this one was
	reset      time.Duration // until the budget is whole again; retryAfter when limited
}

// take spends one request of budget key, or says how long to wait.
func (l *rateLimiter) take(ctx context.Context, key string) (rateDecision, error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	conn, err := l.cache.pool.GetContext(ctx)
	if err != nil {
		return rateDecision{}, err
	}
	defer conn.Close()
	reply, err := redis.Int64s(l.script.DoContext(ctx, conn, l.prefix+key, l.interval.Microseconds(), l.limit))
	if err != nil {
		return rateDecision{}, err
	}
	if len(reply) != 4 {
		return rateDecision{}, fmt.Errorf("rate limit script answered %d values, want 4", len(reply))
	}
	return rateDecision{
		allowed:    reply[0] == 1,
		remaining:  int(reply[1]),
		retryAfter: time.Duration(reply[2]) * time.Microsecond,
		reset:      time.Duration(reply[3]) * time.Microsecond,
	}, nil
}

// rateLimitStats is a snapshot of the limiter's counters for /metrics.
type rateLimitStats struct {
	Allowed, Limited, FailedOpen uint64
}

// stats reads the counters.
func (l *rateLimiter) stats() rateLimitStats {
	return rateLimitStats{Allowed: l.allowed.Load(), Limited: l.limited.Load(), FailedOpen: l.failedOpen.Load()}
}

// rateLimit answers 429 RATE_LIMITED to a client over its budget and puts
// the RateLimit fields on every answer of a limited route. Health probes,
// /metrics and the docs are never limited (rateLimitExempt), and neither
// are CORS preflights, which cors answers before this runs. It must not
// replace the request: recordMetrics reads the route pattern from it.
func (s *server) rateLimit(next http.Handler) http.Handler {
	l := s.limiter
	if l == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rateLimitExempt(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		key := s.rateLimitKey(w, r)
		d, err := l.take(r.Context(), key)
		if err != nil {
			l.failedOpen.Add(1)
			if l.warn.allow() {
				l.log.WarnContext(r.Context(), "rate limit not checked, request let through",
					"redis", l.cache.addr, "error", err)
			}
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Set("RateLimit-Limit", strconv.Itoa(l.limit))
		h.Set("RateLimit-Remaining", strconv.Itoa(d.remaining))
		h.Set("RateLimit-Reset", strconv.FormatInt(wholeSeconds(d.reset), 10))
		if !d.allowed {
			l.limited.Add(1)
			wait := wholeSeconds(d.retryAfter)
			h.Set("Retry-After", strconv.FormatInt(wait, 10))
			s.writeError(w, r, newError(codeRateLimited, fmt.Sprintf("Too many requests: try again in %d seconds", wait)))
			return
		}
		l.allowed.Add(1)
		next.ServeHTTP(w, r)
	})
}

// rateLimitKey names the budget r counts against: its user's when it
// carries a bearer token that verifies, its client address's otherwise.
// The verification is left for require, so a token is checked once.
func (s *server) rateLimitKey(w http.ResponseWriter, r *http.Request) string {
	if s.auth != nil && len(r.Header.Values("Authorization")) > 0 {
		if token, err := bearerToken(r); err == nil {
			if id, err := s.verifyToken(w, r, token); err == nil {
				recorder(w).user = id.Subject
				return "user:" + id.Subject // a UUID: the verifier refuses any other sub
			}
		}
	}
	return "ip:" + addrBudget(s.clientAddr(r))
}

// addrBudget is the part of a client address that names its budget: an
// IPv4 address whole, an IPv6 address by its /64.
func addrBudget(a netip.Addr) string {
	switch {
	case a.Is4():
		return a.String()
	case a.Is6():
		return netip.PrefixFrom(a, 64).Masked().String()
	}
	return "unknown" // no address at all: RemoteAddr was not one
}

// rateLimitExempt reports whether path is one that is never limited: the
// health probes (which the balancer must always reach), /metrics, and the
// API documentation.
func rateLimitExempt(path string) bool {
	switch path {
	case metricsPath, "/openapi.json":
		return true
	}
	for _, base := range []string{"/health", "/api/v1/health", "/docs", "/redoc"} {
		if rest, ok := strings.CutPrefix(path, base); ok && (rest == "" || rest[0] == '/') {
			return true
		}
	}
	return false
}

// wholeSeconds rounds d up to whole seconds, at least one: a client told 0
// would retry at once.
func wholeSeconds(d time.Duration) int64 {
	return max(1, int64((d+time.Second-1)/time.Second))
}

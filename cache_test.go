package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Tests of cache.go against the shared Redis (each test under its own key
// prefix), a private redis-server the test stops and starts, a port where
// nothing listens and a listener that never answers.

// unusedDatabaseURL satisfies the configuration in tests that never touch
// PostgreSQL; nothing listens on port 1.
const unusedDatabaseURL = "postgres://zenspa@127.0.0.1:1/unused?sslmode=disable"

// newTestCache builds a cache from testEnv plus kv, closed at cleanup, and
// returns it with its log.
func newTestCache(t testing.TB, kv ...string) (*cache, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg := testConfig(t, unusedDatabaseURL, kv...)
	c := newCache(cfg, newLogger(logs, cfg.Environment, cfg.LogLevel))
	t.Cleanup(func() { c.close() })
	return c, logs
}

// redisAt is the configuration that points the cache at addr.
func redisAt(t testing.TB, addr string) []string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return []string{"REDIS_HOST=" + host, "REDIS_PORT=" + port}
}

// testKeyPrefix returns a fresh key prefix on the shared Redis; every key
// under it is deleted at cleanup.
func testKeyPrefix(t testing.TB) string {
	t.Helper()
	requireRedis(t)
	prefix := randomName("zenspa_test_") + ":"
	t.Cleanup(func() {
		conn, err := redis.Dial("tcp", testRedisAddr, redis.DialConnectTimeout(2*time.Second))
		if err != nil {
			t.Errorf("clean up %s*: %v", prefix, err)
			return
		}
		defer conn.Close()
		keys, err := redis.Strings(conn.Do("KEYS", prefix+"*"))
		if err != nil {
			t.Errorf("KEYS %s*: %v", prefix, err)
			return
		}
		for _, k := range keys {
			if _, err := conn.Do("DEL", k); err != nil {
				t.Errorf("DEL %s: %v", k, err)
			}
		}
	})
	return prefix
}

// within fails the test when fn took longer than limit; what names the call.
func within(t testing.TB, limit time.Duration, what string, fn func()) {
	t.Helper()
	start := time.Now()
	fn()
	if elapsed := time.Since(start); elapsed > limit {
		t.Errorf("%s took %v, want <= %v", what, elapsed, limit)
	}
}

// appointment is a struct value of the kind later modules cache.
type appointment struct {
	ID       int       `json:"id"`
	Client   string    `json:"client"`
	Services []string  `json:"services"`
	At       time.Time `json:"at"`
}

// TestCacheRoundTrip checks JSON values through set and get on the shared Redis.
func TestCacheRoundTrip(t *testing.T) {
	t.Parallel()
	prefix := testKeyPrefix(t)
	c, _ := newTestCache(t)
	ctx := context.Background()

	t.Run("struct", func(t *testing.T) {
		in := appointment{ID: 7, Client: "Ada", Services: []string{"massage", "sauna"}, At: time.Date(2026, 11, 22, 10, 30, 0, 0, time.UTC)}
		if !c.set(ctx, prefix+"struct", in, time.Minute) {
			t.Fatalf("set(struct) = false, want true")
		}
		var out appointment
		if !c.get(ctx, prefix+"struct", &out) {
			t.Fatalf("get(struct) = false, want true")
		}
		if out.ID != in.ID || out.Client != in.Client || strings.Join(out.Services, ",") != "massage,sauna" || !out.At.Equal(in.At) {
			t.Errorf("get(struct) = %+v, want %+v", out, in)
		}
	})
	t.Run("map", func(t *testing.T) {
		in := map[string]int{"a": 1, "b": 2}
		if !c.set(ctx, prefix+"map", in, 0) {
			t.Fatalf("set(map) = false, want true")
		}
		var out map[string]int
		if !c.get(ctx, prefix+"map", &out) || len(out) != 2 || out["a"] != 1 || out["b"] != 2 {
			t.Errorf("get(map) = %v, want %v", out, in)
		}
	})
	t.Run("string", func(t *testing.T) {
		in := `quotes " and ünïcode`
		if !c.set(ctx, prefix+"string", in, time.Minute) {
			t.Fatalf("set(string) = false, want true")
		}
		var out string
		if !c.get(ctx, prefix+"string", &out) || out != in {
			t.Errorf("get(string) = %q, want %q", out, in)
		}
	})
	t.Run("absent key", func(t *testing.T) {
		var out string
		if c.get(ctx, prefix+"absent", &out) {
			t.Errorf("get(absent key) = true (%q), want false", out)
		}
	})
	t.Run("delete", func(t *testing.T) {
		if !c.set(ctx, prefix+"doomed", 1, time.Minute) {
			t.Fatalf("set(doomed) = false, want true")
		}
		if !c.delete(ctx, prefix+"doomed") {
			t.Fatalf("delete(doomed) = false, want true")
		}
		var out int
		if c.get(ctx, prefix+"doomed", &out) {
			t.Errorf("get(deleted key) = true, want false")
		}
		if !c.delete(ctx, prefix+"never-was") {
			t.Errorf("delete(missing key) = false, want true (Redis answered)")
		}
	})
	t.Run("not JSON for dest", func(t *testing.T) {
		if !c.set(ctx, prefix+"word", "not a number", time.Minute) {
			t.Fatalf("set(word) = false, want true")
		}
		var n int
		if c.get(ctx, prefix+"word", &n) {
			t.Errorf("get(string into *int) = true (%d), want false", n)
		}
		if _, err := c.do(ctx, "SET", prefix+"garbage", "{not json"); err != nil {
			t.Fatalf("SET garbage: %v", err)
		}
		var m map[string]any
		if c.get(ctx, prefix+"garbage", &m) {
			t.Errorf("get(invalid JSON) = true (%v), want false", m)
		}
	})
}

// TestCacheTTL checks that set applies its ttl, or none.
func TestCacheTTL(t *testing.T) {
	t.Parallel()
	prefix := testKeyPrefix(t)
	c, _ := newTestCache(t)
	ctx := context.Background()

	t.Run("no expiry", func(t *testing.T) {
		if !c.set(ctx, prefix+"forever", "x", 0) {
			t.Fatalf("set(ttl 0) = false, want true")
		}
		if ttl, err := redis.Int64(c.do(ctx, "PTTL", prefix+"forever")); err != nil || ttl != -1 {
			t.Errorf("PTTL after set(ttl 0) = %d, %v, want -1 (no expiry)", ttl, err)
		}
	})
	t.Run("expires", func(t *testing.T) {
		key := prefix + "brief"
		if !c.set(ctx, key, "x", 200*time.Millisecond) {
			t.Fatalf("set(ttl 200ms) = false, want true")
		}
		var out string
		if !c.get(ctx, key, &out) || out != "x" {
			t.Fatalf("get right after set(ttl 200ms) = false, want true")
		}
		if ttl, err := redis.Int64(c.do(ctx, "PTTL", key)); err != nil || ttl <= 0 || ttl > 200 {
			t.Errorf("PTTL after set(ttl 200ms) = %d, %v, want 1..200", ttl, err)
		}
		if !waitFor(2*time.Second, func() bool { return !c.get(ctx, key, &out) }) {
			t.Errorf("get(key with ttl 200ms) still true after 2s, want false")
		}
	})
}

// TestCacheFallbackWhenRedisIsDown checks fast misses and rate-limited warnings
// when nothing listens.
func TestCacheFallbackWhenRedisIsDown(t *testing.T) {
	t.Parallel()
	c, logs := newTestCache(t, redisAt(t, deadAddr(t))...)
	ctx := context.Background()

	var out string
	within(t, 1500*time.Millisecond, "get(Redis down)", func() {
		if c.get(ctx, "k", &out) {
			t.Errorf("get(Redis down) = true, want false")
		}
	})
	within(t, 1500*time.Millisecond, "set(Redis down)", func() {
		if c.set(ctx, "k", "v", time.Minute) {
			t.Errorf("set(Redis down) = true, want false")
		}
	})
	within(t, 1500*time.Millisecond, "delete(Redis down)", func() {
		if c.delete(ctx, "k") {
			t.Errorf("delete(Redis down) = true, want false")
		}
	})

	// A flood of misses is a handful of warnings, not one per call.
	within(t, 5*time.Second, "200 get(Redis down)", func() {
		for range 200 {
			if c.get(ctx, "k", &out) {
				t.Fatalf("get(Redis down) = true, want false")
			}
		}
	})
	warnings := logLines(logs.String(), "level=WARNING", "msg=\"cache ")
	if len(warnings) < 1 || len(warnings) > 3 {
		t.Errorf("cache warnings after 203 failed calls = %d, want 1..3 (rate limited)\n%s", len(warnings), strings.Join(warnings, "\n"))
	}
}

// TestCacheFallbackWhenRedisIsSilent checks that a stalled Redis costs a call
// about redisTimeout.
func TestCacheFallbackWhenRedisIsSilent(t *testing.T) {
	t.Parallel()
	c, _ := newTestCache(t, redisAt(t, silentListener(t))...)
	ctx := context.Background()

	var out string
	within(t, redisTimeout+time.Second, "get(Redis silent)", func() {
		if c.get(ctx, "k", &out) {
			t.Errorf("get(Redis silent) = true, want false")
		}
	})
	within(t, redisTimeout+time.Second, "set(Redis silent)", func() {
		if c.set(ctx, "k", "v", time.Minute) {
			t.Errorf("set(Redis silent) = true, want false")
		}
	})
}

// TestCachePoolWaitIsBounded checks that a call gives up on an exhausted pool
// after redisTimeout.
func TestCachePoolWaitIsBounded(t *testing.T) {
	t.Parallel()
	prefix := testKeyPrefix(t)
	c, logs := newTestCache(t, "REDIS_POOL_SIZE=1")
	ctx := context.Background()
	if !c.set(ctx, prefix+"k", "v", time.Minute) {
		t.Fatalf("set(k) = false, want true")
	}

	// Hold the only connection: the next call must give up, not queue.
	held, err := c.pool.GetContext(ctx)
	mustf(t, err, "take the only Redis connection")
	defer held.Close()
	var out string
	within(t, redisTimeout+time.Second, "get(Redis pool exhausted)", func() {
		if c.get(ctx, prefix+"k", &out) {
			t.Errorf("get(Redis pool exhausted) = true, want false")
		}
	})
	if len(logLines(logs.String(), "level=WARNING", `msg="cache get failed"`)) != 1 {
		t.Errorf("logs = %s, want one \"cache get failed\" warning", logs)
	}

	held.Close()
	if !c.get(ctx, prefix+"k", &out) || out != "v" {
		t.Errorf("get(k) after the connection was released = %q, want \"v\"", out)
	}
}

// TestCacheRecoversWhenRedisReturns stops and restarts a private Redis: misses
// while it is down, hits again as soon as it is back, no restart of ours.
func TestCacheRecoversWhenRedisReturns(t *testing.T) {
	t.Parallel()
	const password = "SENTINEL_redis_pw"
	r := startPrivateRedis(t, password)
	s, logs := newTestServer(t, testConfig(t, unusedDatabaseURL,
		append(redisAt(t, r.addr()), "REDIS_PASSWORD="+password, "HEALTH_CACHE_TTL=0")...))
	ts := startTestServer(t, s)
	c := s.cache
	ctx := context.Background()
	var bodies []string
	healthRedis := func(want int) {
		t.Helper()
		status, _, body := get(t, ts.URL, "/health/redis")
		bodies = append(bodies, string(body))
		if status != want {
			t.Errorf("GET /health/redis = %d %s, want %d", status, body, want)
		}
	}

	var out string
	if !c.set(ctx, "k", "up", 0) || !c.get(ctx, "k", &out) || out != "up" {
		t.Fatalf("set/get with Redis up = %q, want \"up\"", out)
	}
	healthRedis(http.StatusOK)

	r.stop()
	within(t, 1500*time.Millisecond, "get(Redis stopped)", func() {
		if c.get(ctx, "k", &out) {
			t.Errorf("get(Redis stopped) = true, want false")
		}
	})
	healthRedis(http.StatusServiceUnavailable)

	r.start()
	back := waitFor(redisTimeout+time.Second, func() bool {
		return c.set(ctx, "k", "again", 0) && c.get(ctx, "k", &out) && out == "again"
	})
	if !back {
		t.Errorf("set/get after Redis restarted on %s did not work within %v", r.addr(), redisTimeout+time.Second)
	}
	healthRedis(http.StatusOK)

	if all := logs.String() + strings.Join(bodies, ""); strings.Contains(all, password) {
		t.Errorf("the Redis password appears in logs or responses:\n%s", all)
	}
}

// TestCacheWrongPassword checks that a refused password reads as Redis down
// and is never shown.
func TestCacheWrongPassword(t *testing.T) {
	t.Parallel()
	const right, wrong = "SENTINEL_right_pw", "SENTINEL_wrong_pw"
	r := startPrivateRedis(t, right)
	s, logs := newTestServer(t, testConfig(t, unusedDatabaseURL,
		append(redisAt(t, r.addr()), "REDIS_PASSWORD="+wrong, "HEALTH_CACHE_TTL=0")...))
	ts := startTestServer(t, s)

	status, _, body := get(t, ts.URL, "/health/redis")
	if status != http.StatusServiceUnavailable || jsonObject(t, body)["connected"] != false {
		t.Errorf("GET /health/redis (wrong password) = %d %s, want 503 connected false", status, body)
	}
	var out string
	if s.cache.get(context.Background(), "k", &out) {
		t.Errorf("get(wrong password) = true, want false")
	}
	if s.cache.set(context.Background(), "k", "v", 0) {
		t.Errorf("set(wrong password) = true, want false")
	}
	all := logs.String() + string(body)
	if !strings.Contains(logs.String(), "dependency check failed") {
		t.Errorf("logs = %s, want the failed Redis check logged", logs)
	}
	for _, secret := range []string{right, wrong} {
		if strings.Contains(all, secret) {
			t.Errorf("password %q appears in logs or responses:\n%s", secret, all)
		}
	}
}

// TestReadThroughCallerDeadline: a caller whose deadline ends while the
// shared load it waits for still runs gets the 503 DATABASE_ERROR a load of
// its own would have given, not its context's bare error (a 500).
func TestReadThroughCallerDeadline(t *testing.T) {
	t.Parallel()
	c, _ := newTestCache(t, "REQUEST_TIMEOUT=5s", "CACHE_TTL=1m")
	key := testKeyPrefix(t) + "slow"
	release := make(chan struct{})
	defer close(release) // ends the shared load
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := readThrough(ctx, c, key, func(ctx context.Context) (int, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return 0, translateDBError(ctx.Err())
	})
	var ae *apiError
	if !errors.As(err, &ae) || ae.Code != codeDatabase {
		t.Errorf("readThrough whose caller's deadline ends first = %v, want an *apiError %s", err, codeDatabase)
	}
}

// TestCacheTombstoneIsAQuietMiss: a key that invalidate replaced is a miss
// that logs nothing, so that the rate-limited warning stays free for a real
// failure of Redis.
func TestCacheTombstoneIsAQuietMiss(t *testing.T) {
	t.Parallel()
	c, logs := newTestCache(t)
	ctx := context.Background()
	key := testKeyPrefix(t) + "written"
	c.invalidate(ctx, key)
	var v string
	if c.get(ctx, key, &v) {
		t.Errorf("get(%s) after invalidate = hit %q, want a miss", key, v)
	}
	if warned := logLines(logs.String(), "level=WARN"); len(warned) > 0 {
		t.Errorf("get(%s) after invalidate logged %q, want nothing: a tombstone is no failure", key, warned)
	}
}

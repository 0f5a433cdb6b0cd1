package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"runtime/debug"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"
)

// redisTimeout bounds dialing Redis, each read and write, and the wait for a
// pooled connection: the cache is optional, so it must fail fast.
const redisTimeout = time.Second

// cache is the Redis pool and the JSON helpers later modules use. Redis is
// optional: when it is down every helper reports a miss quickly and logs a
// rate-limited warning, and nothing fails the request. The pool dials again
// on demand, so the cache works again as soon as Redis is back.
type cache struct {
	pool    *redis.Pool
	log     *slog.Logger
	addr    string
	warn    every
	ttl     time.Duration // CACHE_TTL: how long readThrough keeps a value; 0: it keeps none
	timeout time.Duration // REQUEST_TIMEOUT: bounds a shared load, and so sizes a tombstone
	flights flights
	shapes  sync.Map // reflect.Type → its shapeOf, worked out once per type
}

// newCache builds the pool; it does not connect.
func newCache(cfg config, log *slog.Logger) *cache {
	addr := cfg.redisAddr()
	opts := []redis.DialOption{
		redis.DialConnectTimeout(redisTimeout),
		redis.DialReadTimeout(redisTimeout),
		redis.DialWriteTimeout(redisTimeout),
		redis.DialDatabase(cfg.RedisDB),
	}
	if cfg.RedisPassword != "" {
		opts = append(opts, redis.DialPassword(cfg.RedisPassword))
	}
	c := &cache{log: log, addr: addr, warn: every{interval: 5 * time.Second}, ttl: cfg.CacheTTL, timeout: cfg.RequestTimeout}
	c.pool = &redis.Pool{
		MaxIdle:     cfg.RedisPoolSize,
		MaxActive:   cfg.RedisPoolSize,
		IdleTimeout: 5 * time.Minute,
		Wait:        true, // bounded by the context given to GetContext
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialContext(ctx, "tcp", addr, opts...)
		},
		// A connection idle for a while may have died with a Redis restart.
		TestOnBorrowContext: func(ctx context.Context, conn redis.Conn, lastUsed time.Time) error {
			if time.Since(lastUsed) < 5*time.Second {
				return nil
			}
			_, err := redis.DoContext(conn, ctx, "PING")
			return err
		},
	}
	return c
}

// do runs one command with the cache's bound on the wait and the round trip.
func (c *cache) do(ctx context.Context, cmd string, args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	conn, err := c.pool.GetContext(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return redis.DoContext(conn, ctx, cmd, args...)
}

// get reads key into dest. It reports false on a miss (a tombstone is one),
// when Redis is down and when the stored value is not valid JSON for dest.
func (c *cache) get(ctx context.Context, key string, dest any) bool {
	b, err := redis.Bytes(c.do(ctx, "GET", key))
	if errors.Is(err, redis.ErrNil) || (err == nil && string(b) == tombstone) {
		return false
	}
	if err != nil {
		c.warnf(ctx, "cache get failed", key, err)
		return false
	}
	if err := json.Unmarshal(b, dest); err != nil {
		c.warnf(ctx, "cache value is not valid JSON", key, err)
		return false
	}
	return true
}

// set stores v as JSON under key for ttl (0: no expiry) and reports success.
func (c *cache) set(ctx context.Context, key string, v any, ttl time.Duration) bool {
	b, err := json.Marshal(v)
	if err != nil {
		c.warnf(ctx, "cache value cannot be encoded", key, err)
		return false
	}
	args := []any{key, b}
	if ttl > 0 {
		args = append(args, "PX", max(ttl.Milliseconds(), 1))
	}
	if _, err := c.do(ctx, "SET", args...); err != nil {
		c.warnf(ctx, "cache set failed", key, err)
		return false
	}
	return true
}

// delete removes key and reports whether Redis answered (a missing key is
// fine).
func (c *cache) delete(ctx context.Context, key string) bool {
	if _, err := c.do(ctx, "DEL", key); err != nil {
		c.warnf(ctx, "cache delete failed", key, err)
		return false
	}
	return true
}

// warnf logs a cache failure, at most once every few seconds.
func (c *cache) warnf(ctx context.Context, msg, key string, err error) {
	if c.warn.allow() {
		c.log.WarnContext(ctx, msg, "redis", c.addr, "key", key, "error", err)
	}
}

// ping checks Redis. A connection broken by a restart is retried once on a
// fresh one, so a single stale socket does not read as an outage.
func (c *cache) ping(ctx context.Context) error {
	_, err := c.do(ctx, "PING")
	if err != nil && ctx.Err() == nil && !isTimeout(err) {
		_, err = c.do(ctx, "PING")
	}
	return err
}

// close closes the pool.
func (c *cache) close() error { return c.pool.Close() }

// Cache-aside, for reads that may be a little stale but never wrong after a
// write: readThrough fills the cache from the database, and every write
// calls invalidate once it has committed. A reader that loaded the old row
// just before the write could otherwise store it just after the write's
// invalidation. So invalidate leaves a tombstone that lives longer than any
// load may take (twice REQUEST_TIMEOUT), and readThrough only fills a key
// that holds nothing (SET NX). While Redis is down every read goes to the
// database; what Redis held when it went away is at most CACHE_TTL old.

// tombstone is what invalidate stores in place of a value.
const tombstone = "invalidated"

// cacheEntry is a cached value with the fingerprint of its type's shape: an
// entry written by a build whose type differs (a rolling upgrade) is a miss.
type cacheEntry[T any] struct {
	Shape string `json:"shape"`
	Value T      `json:"value"`
}

// readThrough returns the value cached under key, or else load's, which it
// then caches for CACHE_TTL. Concurrent misses of a key on this instance
// share one load, which ends at REQUEST_TIMEOUT whoever waits for it.
func readThrough[T any](ctx context.Context, c *cache, key string, load func(context.Context) (T, error)) (T, error) {
	if c.ttl <= 0 {
		return load(ctx)
	}
	shape := c.shape(reflect.TypeFor[T]())
	var entry cacheEntry[T]
	if c.get(ctx, key, &entry) && entry.Shape == shape {
		return entry.Value, nil
	}
	v, err := c.flights.do(ctx, key, c.timeout, func(ctx context.Context) (any, error) {
		v, err := load(ctx)
		if err == nil {
			c.fill(ctx, key, cacheEntry[T]{Shape: shape, Value: v})
		}
		return v, err
	})
	if err != nil {
		// A caller whose deadline ends before the shared load's gets its
		// context's error here, which load would have answered with: a
		// 503 DATABASE_ERROR, not a 500.
		var zero T
		return zero, translateDBError(err) // the caller's deadline, ending its wait: a 503
	}
	return v.(T), nil
}

// fill stores v under key for CACHE_TTL unless the key holds anything, a
// tombstone above all.
func (c *cache) fill(ctx context.Context, key string, v any) {
	b, err := json.Marshal(v)
	if err == nil {
		_, err = c.do(ctx, "SET", key, b, "NX", "PX", max(c.ttl.Milliseconds(), 1))
	}
	if err != nil {
		c.warnf(ctx, "cache fill failed", key, err)
	}
}

// invalidate replaces what key holds with a tombstone: no reader fills it
// with what it loaded before the write.
func (c *cache) invalidate(ctx context.Context, key string) {
	if _, err := c.do(ctx, "SET", key, tombstone, "PX", (2 * c.timeout).Milliseconds()); err != nil {
		c.warnf(ctx, "cache invalidate failed", key, err)
	}
}

// shape is shapeOf(t), remembered: a read should not walk a type.
func (c *cache) shape(t reflect.Type) string {
	if s, ok := c.shapes.Load(t); ok {
		return s.(string)
	}
	s := shapeOf(t)
	c.shapes.Store(t, s)
	return s
}

// shapeOf fingerprints t: its name and, for a struct that does not encode
// itself, its fields' names, tags and shapes.
func shapeOf(t reflect.Type) string {
	h := sha256.New()
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		fmt.Fprintf(h, "%s{", t)
		if t.Kind() == reflect.Struct && !t.Implements(reflect.TypeFor[json.Marshaler]()) {
			for i := range t.NumField() {
				f := t.Field(i)
				fmt.Fprintf(h, "%s %q ", f.Name, f.Tag)
				walk(f.Type)
			}
		}
		fmt.Fprint(h, "}")
	}
	walk(t)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// flights shares one call among the concurrent callers of a key, as the
// health checks share one probe.
type flights struct {
	mu    sync.Mutex
	calls map[string]*flight
}

// flight is a call in progress; done closes once value and err are set.
type flight struct {
	done  chan struct{}
	value any
	err   error
}

// do returns fn's result, joining the call in flight for key or starting
// one. The call runs with a context of its own, bounded by timeout, so that
// it does not end with the caller that happened to start it; a caller whose
// ctx ends stops waiting.
func (f *flights) do(ctx context.Context, key string, timeout time.Duration, fn func(context.Context) (any, error)) (any, error) {
	f.mu.Lock()
	call := f.calls[key]
	if call == nil {
		call = &flight{done: make(chan struct{})}
		if f.calls == nil {
			f.calls = map[string]*flight{}
		}
		f.calls[key] = call
		go func() {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
			defer func() {
				if v := recover(); v != nil { // no handler's recoverPanics runs here
					call.err = fmt.Errorf("panic in a shared load: %v\n\n%s", v, debug.Stack())
				}
				cancel()
				f.mu.Lock()
				delete(f.calls, key)
				f.mu.Unlock()
				close(call.done)
			}()
			call.value, call.err = fn(fctx)
		}()
	}
	f.mu.Unlock()
	select {
	case <-call.done:
		return call.value, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

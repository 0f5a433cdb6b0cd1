package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
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
	pool *redis.Pool
	log  *slog.Logger
	addr string
	warn every
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
	c := &cache{log: log, addr: addr, warn: every{interval: 5 * time.Second}}
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

// get reads key into dest. It reports false on a miss, when Redis is down and
// when the stored value is not valid JSON for dest.
func (c *cache) get(ctx context.Context, key string, dest any) bool {
	b, err := redis.Bytes(c.do(ctx, "GET", key))
	if errors.Is(err, redis.ErrNil) {
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

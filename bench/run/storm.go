package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// stormPath is the route the probe storm floods: the database check, which
// would cost PostgreSQL a query per probe if zenspa did not share and reuse
// its checks.
const stormPath = "/health/db"

// stormResult is what PostgreSQL saw of the probe storm: the transactions
// committed in zenspa's database over the life of the zenspa that took the
// storm, and over the life of one that only started and stopped.
type stormResult struct {
	lifetime, startup int64
	probes            int64 // stormPath requests answered
	seconds           float64
}

// perSecond is the storm's own queries per second.
func (s stormResult) perSecond() float64 { return float64(s.lifetime-s.startup) / s.seconds }

// probeStorm floods stormPath with o.stormConnections for o.duration and
// counts the transactions PostgreSQL commits in zenspa's database
// (pg_stat_database.xact_commit, read from another database so that reading
// adds nothing). A backend publishes its counters reliably only when it
// exits, so the storm gets a zenspa of its own, stopped before the count is
// read, and every other zenspa must be stopped already; a second one,
// started and stopped without a storm, measures what starting costs
// (connections, the startup SELECT 1, the readiness check), to subtract.
// Both zenspas are started from spec. It returns the count, zenspa's wrk run,
// and the start-to-ready time of both.
func probeStorm(ctx context.Context, o options, dir string, spec serverSpec, say func(string, ...any)) (stormResult, result, []time.Duration, error) {
	dbName, statsURL, err := statsTarget(o.databaseURL)
	if err != nil {
		return stormResult{}, result{}, nil, err
	}
	var (
		readies   []time.Duration
		lifetimes [2]int64
		zStorm    result
	)
	for i, storm := range []bool{false, true} {
		before, err := settledXactCommit(ctx, statsURL, dbName)
		if err != nil {
			return stormResult{}, result{}, nil, err
		}
		z, err := startServer(ctx, o, dir, spec)
		if err != nil {
			return stormResult{}, result{}, nil, err
		}
		readies = append(readies, z.ready)
		if storm {
			say("zenspa storm on %s, c=%d", stormPath, o.stormConnections)
			zStorm, err = z.measure(ctx, o, load{path: stormPath, connections: o.stormConnections}, o.duration)
			if err != nil {
				z.stop()
				return stormResult{}, result{}, nil, err
			}
		}
		z.stop()
		after, err := settledXactCommit(ctx, statsURL, dbName)
		if err != nil {
			return stormResult{}, result{}, nil, err
		}
		lifetimes[i] = after - before
	}
	s := stormResult{lifetime: lifetimes[1], startup: lifetimes[0], probes: zStorm.requests, seconds: zStorm.seconds}
	return s, zStorm, readies, nil
}

// statsTarget returns the database name of dsn and a URL for the same server
// and role on the postgres database, from which pg_stat_database is read
// without adding transactions to the one being counted.
func statsTarget(dsn string) (name, statsURL string, err error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", "", fmt.Errorf("database URL: %w", err)
	}
	name = strings.TrimPrefix(u.Path, "/")
	if name == "" {
		return "", "", errors.New("database URL names no database")
	}
	u.Path = "/postgres"
	return name, u.String(), nil
}

// xactCommit reads pg_stat_database.xact_commit of database name: every
// SELECT 1 of a health check is one committed transaction.
func xactCommit(ctx context.Context, statsURL, name string) (int64, error) {
	out, err := psql(ctx, statsURL, "SELECT xact_commit FROM pg_stat_database WHERE datname = :'db';\n", "db="+name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("psql: no xact_commit for database %q: %q", name, out)
	}
	return n, nil
}

// settledXactCommit reads xactCommit until two readings 500 ms apart agree:
// a backend that has just exited may still be publishing its counters.
func settledXactCommit(ctx context.Context, statsURL, name string) (int64, error) {
	last, err := xactCommit(ctx, statsURL, name)
	if err != nil {
		return 0, err
	}
	for range 20 {
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return 0, err
		}
		n, err := xactCommit(ctx, statsURL, name)
		if err != nil {
			return 0, err
		}
		if n == last {
			return n, nil
		}
		last = n
	}
	return last, nil
}

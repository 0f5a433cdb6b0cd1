package main

import (
	"context"
	"crypto/x509"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/lib/pq"
)

// dbIOTimeout is the longest a query may wait for PostgreSQL to send a byte.
// lib/pq cannot interrupt a read blocked on a silent server when a context
// ends, so every connection carries a read deadline instead; without it a
// stalled network would pin pooled connections forever.
const dbIOTimeout = time.Minute

// maxConnectBackoff caps the doubling wait between startup attempts.
const maxConnectBackoff = 10 * time.Second

// database is the PostgreSQL pool and the rules every query follows: a
// bounded wait for a connection, DB_ECHO logging and error translation.
type database struct {
	pool        *sql.DB
	probe       *sql.DB // one connection for health checks, deadline = HEALTH_CHECK_TIMEOUT
	log         *slog.Logger
	echo        bool
	poolTimeout time.Duration
	target      dbTarget
}

// openDatabase builds the pools; it does not connect (see connectWithRetry).
func openDatabase(cfg config, log *slog.Logger) (*database, error) {
	main, err := newConnector(cfg.DatabaseURL, cfg.DBConnectTimeout, dbIOTimeout)
	if err != nil {
		return nil, err
	}
	probe, err := newConnector(cfg.DatabaseURL, min(cfg.DBConnectTimeout, cfg.HealthCheckTimeout), cfg.HealthCheckTimeout)
	if err != nil {
		return nil, err
	}
	d := &database{
		pool:        sql.OpenDB(boundedConnector{main}),
		probe:       sql.OpenDB(probe),
		log:         log,
		echo:        cfg.DBEcho,
		poolTimeout: cfg.DBPoolTimeout,
		target:      parseDBTarget(cfg.DatabaseURL),
	}
	d.pool.SetMaxIdleConns(cfg.DBPoolSize)
	d.pool.SetMaxOpenConns(cfg.DBPoolSize + cfg.DBMaxOverflow)
	d.pool.SetConnMaxIdleTime(5 * time.Minute)
	d.pool.SetConnMaxLifetime(30 * time.Minute)
	d.probe.SetMaxOpenConns(1)
	d.probe.SetMaxIdleConns(1)
	return d, nil
}

// openMigrateDB opens a pool of the migrations' own and checks, in one
// attempt bounded by DB_CONNECT_TIMEOUT, that PostgreSQL answers. Its
// connections have no read deadline, unlike the server's: one statement of a
// migration (an index build) may rightly run for many minutes.
func openMigrateDB(ctx context.Context, cfg config) (*sql.DB, error) {
	c, err := newConnector(cfg.DatabaseURL, cfg.DBConnectTimeout, 0)
	if err != nil {
		return nil, err
	}
	// One attempt logs nothing: the error says it all.
	d := &database{pool: sql.OpenDB(c), log: slog.New(slog.DiscardHandler), target: parseDBTarget(cfg.DatabaseURL)}
	if err := d.connectWithRetry(ctx, 1, 0, cfg.DBConnectTimeout); err != nil {
		d.pool.Close()
		return nil, err
	}
	return d.pool, nil
}

// newConnector returns a lib/pq connector whose connections time out the
// handshake after connectTimeout and every read after ioTimeout (0: never).
func newConnector(dsn string, connectTimeout, ioTimeout time.Duration) (driver.Connector, error) {
	pqcfg, err := pq.NewConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %s", scrubSecret(err.Error(), dsn))
	}
	pqcfg.ConnectTimeout = connectTimeout
	// Send a parameterized query as one Parse/Bind/Execute batch instead of
	// preparing it in a separate round trip first: behind a transaction-mode
	// pooler (Supabase's, PgBouncer) the two round trips may reach different
	// server connections and fail with "unnamed prepared statement does not
	// exist". It also saves a round trip everywhere else.
	pqcfg.BinaryParameters = true
	c, err := pq.NewConnectorConfig(pqcfg)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %s", scrubSecret(err.Error(), dsn))
	}
	c.Dialer(deadlineDialer{ioTimeout: ioTimeout})
	return c, nil
}

// scrubSecret removes the password of dsn from a driver message, in case the
// driver quotes it.
func scrubSecret(msg, dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, maskedPassword)
		}
	}
	return msg
}

// boundedConnector gives up on a new connection when the caller's context
// ends. lib/pq bounds the TCP dial by the context but the startup handshake
// after it only by connect_timeout, so on a stalled network a request waiting
// for a pooled connection would wait DB_CONNECT_TIMEOUT instead of
// DB_POOL_TIMEOUT. The abandoned handshake still ends at connect_timeout, and
// a connection it completes late is closed.
type boundedConnector struct{ driver.Connector }

func (c boundedConnector) Connect(ctx context.Context) (driver.Conn, error) {
	type result struct {
		conn driver.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := c.Connector.Connect(ctx)
		done <- result{conn, err}
	}()
	select {
	case r := <-done:
		return r.conn, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.err == nil { // on failure lib/pq returns a typed nil
				r.conn.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// deadlineDialer hands lib/pq connections that bound every read.
type deadlineDialer struct {
	ioTimeout time.Duration
}

func (d deadlineDialer) Dial(network, addr string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, addr)
}

func (d deadlineDialer) DialTimeout(network, addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.DialContext(ctx, network, addr)
}

func (d deadlineDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	// Without a read deadline (the migrations' pool) keepalive probes are
	// what ends a read from a peer that vanished: about 30 s.
	nd := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}}
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil || d.ioTimeout <= 0 {
		return c, err
	}
	return &deadlineConn{Conn: c, ioTimeout: d.ioTimeout}, nil
}

// deadlineConn sets a read deadline before every read. A deadline the driver
// sets itself (connect_timeout during the handshake) still applies when it is
// sooner.
type deadlineConn struct {
	net.Conn
	ioTimeout time.Duration
	deadline  time.Time
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.deadline = t
	return c.Conn.SetDeadline(t)
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	d := time.Now().Add(c.ioTimeout)
	if !c.deadline.IsZero() && c.deadline.Before(d) {
		d = c.deadline
	}
	if err := c.Conn.SetReadDeadline(d); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

// connectWithRetry runs SELECT 1 until PostgreSQL answers, at most attempts
// times, each bounded by timeout, waiting backoff, 2×backoff, … (capped at
// maxConnectBackoff) in between. The error names the target, never the
// password.
func (d *database) connectWithRetry(ctx context.Context, attempts int, backoff, timeout time.Duration) error {
	wait := min(backoff, maxConnectBackoff)
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, timeout)
		err := d.selectOne(actx, d.pool)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt >= attempts {
			tries := ""
			if attempts > 1 {
				tries = fmt.Sprintf(" after %d attempts", attempts)
			}
			return fmt.Errorf("cannot connect to PostgreSQL at host %s port %s database %q%s: %w%s",
				d.target.Host, d.target.Port, d.target.Database, tries, err, tlsHint(err))
		}
		d.log.WarnContext(ctx, "database not reachable, retrying",
			"attempt", attempt, "attempts", attempts, "retry_in", wait.String(),
			"host", d.target.Host, "port", d.target.Port, "database", d.target.Database, "error", err)
		if err := sleep(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, maxConnectBackoff)
	}
}

// tlsHint explains a certificate failure in DATABASE_URL's terms.
func tlsHint(err error) string {
	var unknownAuthority x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostname x509.HostnameError
	if errors.As(err, &unknownAuthority) || errors.As(err, &invalid) || errors.As(err, &hostname) {
		return " (the server's TLS certificate does not verify: check sslmode and sslrootcert in DATABASE_URL)"
	}
	return ""
}

// sleep waits for d or until ctx ends, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ping checks PostgreSQL on the probe connection. A connection broken by a
// restart is retried once on a fresh one, so a single stale socket does not
// read as an outage.
func (d *database) ping(ctx context.Context) error {
	err := d.selectOne(ctx, d.probe)
	if err != nil && ctx.Err() == nil && !isTimeout(err) {
		err = d.selectOne(ctx, d.probe)
	}
	return err
}

func (d *database) selectOne(ctx context.Context, db *sql.DB) error {
	var one int
	start := time.Now()
	err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	d.logStatement(ctx, "SELECT 1", start, err)
	return err
}

// isTimeout reports whether err is a deadline, which retrying would repeat.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// withConn runs fn on a pooled connection, waiting at most DB_POOL_TIMEOUT
// for one: a request never hangs on an exhausted pool. It returns when ctx
// ends even if the driver does not (see bounded): fn then goes on in the
// background, so what fn writes may be read only when withConn returned
// nil, as with withTx and the queries built on them. A connection that died
// while idle (PostgreSQL restarted) fails fn with driver.ErrBadConn before
// anything took effect (lib/pq reads the FATAL the server sent as it shut
// down, or EOF, or cannot send at all): it is dropped, and fn runs again on
// another, so a restart fails no request. Writes belong in
// withTx, which never runs one twice. Errors come back translated for
// writeError.
func (d *database) withConn(ctx context.Context, fn func(*sql.Conn) error) error {
	for attempt := 0; ; attempt++ {
		conn, err := d.conn(ctx)
		if err != nil {
			return err
		}
		err = d.bounded(ctx, func() error {
			defer conn.Close()
			return fn(conn)
		})
		// Every idle connection may be dead: one more try than the pool holds.
		if !errors.Is(err, driver.ErrBadConn) || attempt > d.pool.Stats().MaxOpenConnections {
			return translateDBError(err)
		}
	}
}

// conn takes a pooled connection, waiting at most DB_POOL_TIMEOUT.
func (d *database) conn(ctx context.Context) (*sql.Conn, error) {
	wctx, cancel := context.WithTimeout(ctx, d.poolTimeout)
	defer cancel()
	conn, err := d.pool.Conn(wctx)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return nil, &apiError{Code: codeDatabase, Message: "The database is busy, try again later", Cause: fmt.Errorf("no pooled connection within %s: %w", d.poolTimeout, err)}
	}
	return conn, translateDBError(err)
}

// bounded runs fn and returns its error, or ctx's as soon as ctx ends. lib/pq
// does not interrupt a read blocked on a silent server when a context ends:
// fn then goes on in the background until the connection's read deadline
// (dbIOTimeout) frees it. Each such fn holds a pooled connection, so
// abandoned work never outgrows the pool. A panic in fn goes on in the
// caller, or is logged if the caller is gone.
func (d *database) bounded(ctx context.Context, fn func() error) error {
	type result struct {
		err   error
		panic any
	}
	done, gone := make(chan result), make(chan struct{})
	go func() {
		var res result
		defer func() {
			if v := recover(); v != nil {
				res.panic = fmt.Sprintf("%v\n\n%s", v, debug.Stack())
			}
			select {
			case done <- res:
			case <-gone:
				if res.panic != nil {
					d.log.Error("panic in abandoned database work", "panic", res.panic)
				}
			}
		}()
		res.err = fn()
	}()
	select {
	case res := <-done:
		if res.panic != nil {
			panic(res.panic)
		}
		return res.err
	case <-ctx.Done():
		close(gone)
		return ctx.Err()
	}
}

// Retrying a transaction that PostgreSQL gave up on: at most txAttempts
// runs, the waits between them jittered around txBackoff, doubling.
const (
	txAttempts = 4
	txBackoff  = 10 * time.Millisecond
)

// withTx runs fn in a transaction and commits when fn returns nil. An error
// or a panic in fn rolls back (the panic goes on after). When PostgreSQL
// aborts the transaction for a serialization failure or a deadlock
// (SQLSTATE 40001, 40P01), none of it happened, so the whole of fn runs
// again, a bounded number of times: fn must do nothing but database work
// that can be repeated. Any other failure, a connection lost at COMMIT above
// all, is never retried: a write is never applied twice.
func (d *database) withTx(ctx context.Context, fn func(tx statements) error) error {
	wait := txBackoff
	for attempt := 1; ; attempt++ {
		err := d.withConn(ctx, func(conn *sql.Conn) error { return d.runTx(ctx, conn, fn) })
		if !retryable(err) || attempt == txAttempts {
			return err
		}
		d.log.DebugContext(ctx, "transaction retried", "attempt", attempt, "error", err)
		if err := sleep(ctx, wait/2+rand.N(wait)); err != nil {
			return translateDBError(err)
		}
		wait *= 2
	}
}

// errConnLost is a connection that broke after BEGIN: whether COMMIT took
// effect is unknown, so the transaction must not run again.
var errConnLost = errors.New("the connection broke during a transaction")

// runTx is one run of withTx's transaction on conn.
func (d *database) runTx(ctx context.Context, conn *sql.Conn, fn func(tx statements) error) (err error) {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err // driver.ErrBadConn here: withConn tries another connection
	}
	defer func() {
		if v := recover(); v != nil {
			tx.Rollback()
			panic(v)
		}
		if err != nil {
			tx.Rollback()
		}
		if errors.Is(err, driver.ErrBadConn) {
			err = fmt.Errorf("%w: %w", errConnLost, err)
		}
	}()
	if err := fn(statements{q: tx, d: d}); err != nil {
		return err
	}
	return tx.Commit()
}

// retryable reports whether err is PostgreSQL giving up on a transaction
// that may succeed when run again.
func retryable(err error) bool {
	pqErr := pq.As(err)
	return pqErr != nil && (pqErr.Code == "40001" || pqErr.Code == "40P01")
}

// queryer is what statements run on: a pooled connection or a transaction.
type queryer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// statements runs SQL on a connection or in a transaction, logging each
// statement when DB_ECHO is on. Errors come back untranslated: withConn and
// withTx translate them once.
type statements struct {
	q queryer
	d *database
}

// exec runs a statement that returns no rows.
func (s statements) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	start := time.Now()
	res, err := s.q.ExecContext(ctx, query, args...)
	s.d.logStatement(ctx, query, start, err)
	return res, err
}

// queryRow scans the one row query returns into dest; no row is
// sql.ErrNoRows, which translates to NOT_FOUND.
func (s statements) queryRow(ctx context.Context, query string, args []any, dest ...any) error {
	start := time.Now()
	err := s.q.QueryRowContext(ctx, query, args...).Scan(dest...)
	s.d.logStatement(ctx, query, start, err)
	return err
}

// query calls each for every row query returns.
func (s statements) query(ctx context.Context, query string, args []any, each func(*sql.Rows) error) error {
	start := time.Now()
	rows, err := s.q.QueryContext(ctx, query, args...)
	if err == nil {
		for rows.Next() && err == nil {
			err = each(rows)
		}
		err = errors.Join(err, rows.Close(), rows.Err())
	}
	s.d.logStatement(ctx, query, start, err)
	return err
}

// exec runs a statement that returns no rows, in a transaction of its own:
// like every write, it is never applied twice.
func (d *database) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := d.withTx(ctx, func(tx statements) error {
		var err error
		res, err = tx.exec(ctx, query, args...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// queryRow runs a read expected to return one row on a pooled connection
// and scans it into dest; no row is NOT_FOUND. A write goes in withTx.
func (d *database) queryRow(ctx context.Context, query string, args []any, dest ...any) error {
	return d.withConn(ctx, func(c *sql.Conn) error {
		return statements{q: c, d: d}.queryRow(ctx, query, args, dest...)
	})
}

// query calls each for every row a read returns, on a pooled connection.
func (d *database) query(ctx context.Context, query string, args []any, each func(*sql.Rows) error) error {
	return d.withConn(ctx, func(c *sql.Conn) error {
		return statements{q: c, d: d}.query(ctx, query, args, each)
	})
}

// logStatement logs a statement and its duration when DB_ECHO is on.
// Arguments are not logged: they may be personal data.
func (d *database) logStatement(ctx context.Context, query string, start time.Time, err error) {
	if !d.echo {
		return
	}
	attrs := []any{"statement", query, "duration_ms", float64(time.Since(start).Microseconds()) / 1000}
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		attrs = append(attrs, "error", err)
	}
	d.log.InfoContext(ctx, "sql", attrs...)
}

// translateDBError turns driver errors into client-safe *apiErrors at this
// boundary: what the client did wrong is a 4xx naming the field, an outage
// is a 503, and anything else stays an error that writeError answers with a
// 500. The driver's own message, with its SQL, constraint names and values,
// is only ever the logged cause.
func translateDBError(err error) error {
	var ae *apiError
	switch {
	case err == nil, errors.As(err, &ae):
		return err
	case errors.Is(err, sql.ErrNoRows):
		return &apiError{Code: codeNotFound, Message: "The requested resource was not found"}
	}
	if pqErr := pq.As(err); pqErr != nil {
		invalid := func(message string) error {
			return &apiError{Code: codeValidation, Message: "The request is not valid", Cause: err,
				Details: []problem{{Field: fieldOf(pqErr), Message: message}}}
		}
		switch code := string(pqErr.Code); {
		case code == "23505": // unique_violation
			return &apiError{Code: codeConflict, Message: "A record with this value already exists", Cause: err,
				Details: []problem{{Field: fieldOf(pqErr), Message: "is already taken"}}}
		case code == "23503": // foreign_key_violation
			return invalid("refers to a record that does not exist")
		case code == "23502": // not_null_violation
			return invalid("is required")
		case strings.HasPrefix(code, "23"), strings.HasPrefix(code, "22"): // check, data exception
			return invalid("holds a value that is not allowed")
		case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"), strings.HasPrefix(code, "57"),
			strings.HasPrefix(code, "40"):
			return &apiError{Code: codeDatabase, Message: "The database is unavailable, try again later", Cause: err}
		}
		return err // a bug in a query: INTERNAL_ERROR
	}
	var ne net.Error
	// "sql: database is closed" has no sentinel: it is what a request cut by
	// SHUTDOWN_TIMEOUT meets once the pools close under it.
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, errConnLost) ||
		errors.Is(err, sql.ErrConnDone) || err.Error() == "sql: database is closed" ||
		errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.As(err, &ne) {
		return &apiError{Code: codeDatabase, Message: "The database is unavailable, try again later", Cause: err}
	}
	return err
}

// fieldOf names the field a constraint violation is about: the column, or
// the COLUMN of a constraint named TABLE_COLUMN_KIND (key, check, fkey), as
// migrations name theirs. Columns are named like the JSON fields. It is ""
// (the body as a whole) when neither says.
func fieldOf(e *pq.Error) string {
	if e.Column != "" {
		return e.Column
	}
	name, ok := strings.CutPrefix(e.Constraint, e.Table+"_")
	if !ok || e.Table == "" {
		return ""
	}
	if i := strings.LastIndexByte(name, '_'); i > 0 {
		return name[:i]
	}
	return ""
}

// close closes both pools.
func (d *database) close() error {
	return errors.Join(d.pool.Close(), d.probe.Close())
}

// dbTarget describes where DATABASE_URL points, without credentials.
type dbTarget struct {
	Host, Port, Database, User string
}

// parseDBTarget extracts host, port, database and user for messages.
func parseDBTarget(raw string) dbTarget {
	u, err := url.Parse(raw)
	if err != nil {
		return dbTarget{}
	}
	t := dbTarget{Host: u.Hostname(), Port: u.Port(), Database: strings.TrimPrefix(u.Path, "/"), User: u.User.Username()}
	if t.Port == "" {
		t.Port = "5432"
	}
	return t
}

func (t dbTarget) String() string {
	return fmt.Sprintf("%s@%s/%s", t.User, net.JoinHostPort(t.Host, t.Port), t.Database)
}

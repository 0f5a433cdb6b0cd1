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
	"net"
	"net/url"
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

// withConn runs fn on a pooled connection, waiting at most DB_POOL_TIMEOUT for
// one: a request never hangs on an exhausted pool. Errors come back
// translated for writeError.
func (d *database) withConn(ctx context.Context, fn func(*sql.Conn) error) error {
	wctx, cancel := context.WithTimeout(ctx, d.poolTimeout)
	conn, err := d.pool.Conn(wctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return &apiError{Code: codeDatabase, Message: "The database is busy, try again later", Cause: fmt.Errorf("no pooled connection within %s: %w", d.poolTimeout, err)}
		}
		return translateDBError(err)
	}
	defer conn.Close()
	return translateDBError(fn(conn))
}

// exec runs a statement that returns no rows.
func (d *database) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := d.withConn(ctx, func(c *sql.Conn) error {
		start := time.Now()
		var err error
		res, err = c.ExecContext(ctx, query, args...)
		d.logStatement(ctx, query, start, err)
		return err
	})
	return res, err
}

// queryRow runs a query expected to return one row and scans it into dest; no
// row is NOT_FOUND.
func (d *database) queryRow(ctx context.Context, query string, args []any, dest ...any) error {
	return d.withConn(ctx, func(c *sql.Conn) error {
		start := time.Now()
		err := c.QueryRowContext(ctx, query, args...).Scan(dest...)
		d.logStatement(ctx, query, start, err)
		return err
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
// boundary; the driver's own message is kept only as the logged cause.
func translateDBError(err error) error {
	var ae *apiError
	switch {
	case err == nil, errors.As(err, &ae):
		return err
	case errors.Is(err, sql.ErrNoRows):
		return &apiError{Code: codeNotFound, Message: "Resource not found"}
	}
	if pqErr := pq.As(err); pqErr != nil {
		code := string(pqErr.Code)
		switch {
		case code == "23505":
			return &apiError{Code: codeValidation, Message: "A record with these values already exists", Cause: err}
		case code == "23503":
			return &apiError{Code: codeValidation, Message: "A referenced record does not exist", Cause: err}
		case strings.HasPrefix(code, "23"), strings.HasPrefix(code, "22"):
			return &apiError{Code: codeValidation, Message: "Invalid input data", Cause: err}
		case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"), strings.HasPrefix(code, "57"),
			strings.HasPrefix(code, "40"):
			return &apiError{Code: codeDatabase, Message: "The database is unavailable, try again later", Cause: err}
		}
		return err // a bug in a query: INTERNAL_ERROR
	}
	var ne net.Error
	// "sql: database is closed" has no sentinel: it is what a request cut by
	// SHUTDOWN_TIMEOUT meets once the pools close under it.
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, sql.ErrConnDone) || err.Error() == "sql: database is closed" ||
		errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.As(err, &ne) {
		return &apiError{Code: codeDatabase, Message: "The database is unavailable, try again later", Cause: err}
	}
	return err
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

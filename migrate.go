package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/lib/pq"
)

// The migration runner: the migrations of schema/ (migrate_files.go) applied
// in order, each in one transaction with its row in schema_migrations, under
// a lock that lets any number of zenspa processes try at once. The command
// line around it is migrate_cmd.go.

// migrateLockKey is the advisory lock key of every zenspa migrating
// a database: "zenspamg" read as a big-endian int64.
const migrateLockKey int64 = 0x7a656e7370616d67

// Polling for the migration lock starts at lockPollMin between tries and
// doubles up to lockPollMax.
const (
	lockPollMin = 20 * time.Millisecond
	lockPollMax = 500 * time.Millisecond
)

// lockGrace is how long past MIGRATE_LOCK_TIMEOUT one try may take before
// its context gives up on a server that does not answer.
const lockGrace = 2 * time.Second

// createMigrationsTable records what is applied. A no-transaction migration
// that fails part way stays in it with dirty = true.
const createMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    bigint PRIMARY KEY,
	name       text NOT NULL,
	checksum   text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	duration   interval NOT NULL DEFAULT '0',
	dirty      boolean NOT NULL DEFAULT false
)`

// migrator applies and rolls back the migrations of one set of files on one
// database, writing a line per migration to out.
//
// Lock: every step (one migration, or creating schema_migrations) runs in a
// transaction that first takes the advisory lock migrateLockKey with
// pg_try_advisory_xact_lock (see lock for why it polls). It is a
// transaction-scoped lock, not a session lock, on purpose: behind a
// transaction-mode pooler (PgBouncer, Supabase's pooler) a session lock stays
// with the pooled server connection when our transaction ends, held by no
// one, and every replica then waits on it forever. A transaction lock ends
// with the transaction, whichever server connection ran it. A transactional
// migration runs inside that same transaction, so the lock, the change and
// its row in schema_migrations end together.
type migrator struct {
	db          *sql.DB
	files       []migration // in version order
	byVersion   map[int64]migration
	lockTimeout time.Duration
	allowDrift  bool // go ahead when applied migrations' files changed or are gone
	out         io.Writer
}

// newMigrator returns a migrator for files (from loadMigrations) on db.
func newMigrator(db *sql.DB, files []migration, lockTimeout time.Duration, out io.Writer) *migrator {
	m := &migrator{db: db, files: files, byVersion: make(map[int64]migration), lockTimeout: lockTimeout, out: out}
	for _, f := range files {
		m.byVersion[f.version] = f
	}
	return m
}

// up applies every pending migration in order, each in a step of its own,
// and prints a line for each.
func (m *migrator) up(ctx context.Context) error {
	applied := 0
	for {
		var next *migration
		var took time.Duration
		err := m.step(ctx, func(tx *sql.Tx, rows []appliedRow) error {
			var err error
			if next, err = m.nextPending(rows); err != nil || next == nil {
				return err
			}
			took, err = m.apply(ctx, tx, *next, true)
			return err
		})
		if err != nil {
			return err
		}
		if next == nil {
			break
		}
		applied++
		fmt.Fprintf(m.out, "applied %s (%s)\n", next.label, formatDuration(took))
	}
	if applied == 0 {
		fmt.Fprintln(m.out, "already up to date")
	}
	return nil
}

// down rolls back the last n applied migrations, newest first. It checks
// first that all n can be rolled back, and changes nothing when one cannot.
func (m *migrator) down(ctx context.Context, n int) error {
	for i := 0; i < n; i++ {
		var last *migration
		var took time.Duration
		err := m.step(ctx, func(tx *sql.Tx, rows []appliedRow) error {
			if len(rows) == 0 {
				return nil
			}
			if err := m.checkRollback(rows, n-i); err != nil {
				return err
			}
			mg := m.byVersion[rows[len(rows)-1].version]
			last = &mg
			var err error
			took, err = m.apply(ctx, tx, mg, false)
			return err
		})
		if err != nil {
			return err
		}
		if last == nil {
			if i == 0 {
				fmt.Fprintln(m.out, "nothing to roll back")
			}
			return nil
		}
		fmt.Fprintf(m.out, "rolled back %s (%s)\n", last.label, formatDuration(took))
	}
	return nil
}

// step runs fn under the lock with the rows of schema_migrations, once it is
// sure that the table exists and that neither a dirty migration nor drift
// (unless allowDrift) forbids going on.
func (m *migrator) step(ctx context.Context, fn func(tx *sql.Tx, rows []appliedRow) error) error {
	if err := m.ensureTable(ctx); err != nil {
		return err
	}
	return m.withLock(ctx, func(tx *sql.Tx) error {
		rows, err := readApplied(ctx, tx)
		if err != nil {
			return err
		}
		if err := m.refuse(rows); err != nil {
			return err
		}
		return fn(tx, rows)
	})
}

// ensureTable creates schema_migrations in a step of its own, under the lock
// (two concurrent CREATE TABLE IF NOT EXISTS can collide) and committed before
// any migration runs: a no-transaction migration writes its dirty mark from a
// second connection, which could neither see nor wait out a table created in
// the lock's still open transaction.
func (m *migrator) ensureTable(ctx context.Context) error {
	var exists bool
	if err := m.db.QueryRowContext(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("look for schema_migrations: %w", err)
	}
	if exists {
		return nil
	}
	return m.withLock(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, createMigrationsTable); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		return nil
	})
}

// withLock runs fn in a transaction holding the migration lock and commits
// when fn succeeds; the commit releases the lock.
func (m *migrator) withLock(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit the migration transaction: %w", err)
	}
	return nil
}

// lock returns a transaction that holds the migration lock, trying for at
// most lockTimeout.
//
// It polls with pg_try_advisory_xact_lock, each try in a transaction of its
// own, rather than queueing in pg_advisory_xact_lock: a queued request holds
// a snapshot, and CREATE INDEX CONCURRENTLY (run by the holder in a
// no-transaction migration) waits for every transaction that had an older
// snapshot to end. The holder would wait for the waiters and the waiters for
// the holder, a deadlock PostgreSQL cannot see because it runs through our
// process. Polling also means that no lock request is ever left queued when
// we give up.
func (m *migrator) lock(ctx context.Context) (*sql.Tx, error) {
	deadline := time.Now().Add(m.lockTimeout)
	wait := lockPollMin
	for {
		tx, err := m.tryLock(ctx, deadline)
		if tx != nil || err != nil {
			return tx, err
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return nil, fmt.Errorf("timed out after %s (MIGRATE_LOCK_TIMEOUT) waiting for the migration lock: "+
				"another zenspa process is migrating this database; try again when it has finished", m.lockTimeout)
		}
		// Jitter keeps processes that started together from polling in step.
		if err := sleep(ctx, min(wait/2+rand.N(wait), remaining)); err != nil {
			return nil, err
		}
		wait = min(2*wait, lockPollMax)
	}
}

// tryLock makes one attempt: a transaction holding the lock, or nil when
// another process holds it. The transaction is READ COMMITTED whatever the
// server's default, so that what it reads next includes everything the
// previous holder committed.
func (m *migrator) tryLock(ctx context.Context, deadline time.Time) (*sql.Tx, error) {
	tx, err := m.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, fmt.Errorf("begin a migration transaction: %w", err)
	}
	// The context only bounds an attempt on a server that stopped answering;
	// it must not be the transaction's, which outlives it.
	actx, cancel := context.WithDeadline(ctx, deadline.Add(lockGrace))
	defer cancel()
	var locked bool
	err = tx.QueryRowContext(actx, "SELECT pg_try_advisory_xact_lock($1)", migrateLockKey).Scan(&locked)
	if err == nil && locked {
		return tx, nil
	}
	tx.Rollback()
	switch {
	case err == nil:
		return nil, nil
	case ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("timed out after %s (MIGRATE_LOCK_TIMEOUT) taking the migration lock: PostgreSQL did not answer", m.lockTimeout)
	}
	return nil, fmt.Errorf("take the migration lock: %w", err)
}

// apply runs mg up or down, with its bookkeeping, and returns how long its
// SQL took. A transactional file runs in tx, the lock's transaction, so that
// the file and its row commit or vanish together. A no-transaction file holds
// one statement, which runs on a second connection while tx keeps the lock;
// it is marked dirty first, and only cleared when the statement succeeded.
func (m *migrator) apply(ctx context.Context, tx *sql.Tx, mg migration, up bool) (time.Duration, error) {
	file, body, noTx := mg.upFile(), mg.upSQL, mg.upNoTx
	if !up {
		file, body, noTx = mg.downFile(), mg.downSQL, mg.downNoTx
	}
	if !noTx {
		start := time.Now()
		if _, err := tx.ExecContext(ctx, body); err != nil {
			return 0, &migrationError{file: file, body: body, err: err,
				outcome: "it ran in one transaction, which was rolled back: nothing of it was applied"}
		}
		took := time.Since(start)
		var err error
		if up {
			_, err = tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, checksum, duration)
				VALUES ($1, $2, $3, $4 * interval '1 microsecond')`, mg.version, mg.name, mg.checksum, took.Microseconds())
		} else {
			_, err = tx.ExecContext(ctx, `DELETE FROM schema_migrations WHERE version = $1`, mg.version)
		}
		if err != nil {
			return 0, fmt.Errorf("record %s in schema_migrations, so it was rolled back: %w", file, err)
		}
		return took, nil
	}

	// tx only holds the lock now, idle while the file runs, perhaps for long:
	// a server-side idle_in_transaction_session_timeout must not end it.
	if _, err := tx.ExecContext(ctx, "SET LOCAL idle_in_transaction_session_timeout = 0"); err != nil {
		return 0, fmt.Errorf("keep the migration lock: %w", err)
	}
	rows, err := readApplied(ctx, tx)
	if err != nil {
		return 0, err
	}
	if err := oneStatement(ctx, tx, file, body); err != nil {
		return 0, err
	}
	advice := m.forceAdvice(mg.version, previousVersion(rows, mg.version))
	conn, err := m.db.Conn(ctx)
	if err != nil {
		return 0, fmt.Errorf("open a second connection for %s: %w", file, err)
	}
	defer conn.Close()
	if up {
		_, err = conn.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, checksum, dirty)
			VALUES ($1, $2, $3, true)`, mg.version, mg.name, mg.checksum)
	} else {
		_, err = conn.ExecContext(ctx, `UPDATE schema_migrations SET dirty = true WHERE version = $1`, mg.version)
	}
	if err != nil {
		return 0, fmt.Errorf("mark %s dirty before running it: %w", file, err)
	}
	start := time.Now()
	if _, err := conn.ExecContext(ctx, body); err != nil {
		return 0, &migrationError{file: file, body: body, err: err,
			outcome: "it ran without a transaction: what it did before it failed stays, and the database is now marked dirty.\n" + advice}
	}
	took := time.Since(start)
	if up {
		_, err = conn.ExecContext(ctx, `UPDATE schema_migrations SET dirty = false, applied_at = clock_timestamp(),
			duration = $2 * interval '1 microsecond' WHERE version = $1`, mg.version, took.Microseconds())
	} else {
		_, err = conn.ExecContext(ctx, `DELETE FROM schema_migrations WHERE version = $1`, mg.version)
	}
	if err != nil {
		return 0, fmt.Errorf("%s ran, but recording it failed and it stays marked dirty: %w", file, err)
	}
	return took, nil
}

// oneStatement refuses a no-transaction file that holds more than one
// statement, before anything of it runs. PostgreSQL runs a string of several
// statements as one implicit transaction, where CREATE INDEX CONCURRENTLY is
// refused, and a failure half way would leave no clear state behind. It
// parses the file in tx, the lock's transaction, as a prepared statement,
// which takes exactly one: the statement is closed on the same server
// connection, also behind a transaction-mode pooler.
func oneStatement(ctx context.Context, tx *sql.Tx, file, body string) error {
	st, err := tx.PrepareContext(ctx, body)
	if err == nil {
		return st.Close()
	}
	// The refusal is a syntax error without a position; a real syntax error
	// always has one.
	if pqErr := pq.As(err); pqErr != nil && pqErr.Code == "42601" && pqErr.Position == "" {
		return fmt.Errorf("migration failed: %s holds more than one statement, and a file that runs without a transaction (-- %s) may hold only one: "+
			"give each statement a migration of its own; nothing of it was applied", file, noTransactionMarker)
	}
	return &migrationError{file: file, body: body, err: err, outcome: "PostgreSQL refused it before it ran: nothing of it was applied"}
}

// refuse returns why up and down must not go on: a dirty migration, or
// applied migrations whose files changed or are gone (unless allowDrift).
func (m *migrator) refuse(rows []appliedRow) error {
	if d := dirtyRow(rows); d != nil {
		return m.dirtyError(rows, *d)
	}
	if m.allowDrift {
		return nil
	}
	var drift []string
	for _, r := range rows {
		if note := m.driftNote(r); note != "" {
			drift = append(drift, fmt.Sprintf("%04d_%s: %s", r.version, r.name, strings.TrimPrefix(note, "! ")))
		}
	}
	if len(drift) > 0 {
		return fmt.Errorf("refusing to migrate: applied migrations no longer match their files:\n  %s\nrestore the files, or pass --allow-drift to go on anyway", strings.Join(drift, "\n  "))
	}
	return nil
}

// driftNote says how the file of an applied migration differs from what was
// applied, or "" when it does not.
func (m *migrator) driftNote(r appliedRow) string {
	f, ok := m.byVersion[r.version]
	switch {
	case !ok:
		return "! file missing"
	case f.name != r.name:
		return fmt.Sprintf("! file renamed (applied as %04d_%s)", r.version, r.name)
	case f.checksum != r.checksum:
		return "! file changed since it was applied"
	}
	return ""
}

// nextPending returns the first migration not applied yet, or nil. One older
// than an applied migration (merged late from a branch, say) is refused:
// rolling back goes newest first, and the order would no longer say which.
func (m *migrator) nextPending(rows []appliedRow) (*migration, error) {
	done := make(map[int64]bool, len(rows))
	var newest int64
	for _, r := range rows {
		done[r.version] = true
		newest = max(newest, r.version)
	}
	for _, f := range m.files {
		if done[f.version] {
			continue
		}
		if f.version < newest {
			return nil, fmt.Errorf("%s is pending but the later migration %04d is already applied: renumber it after %04d", f.label, newest, newest)
		}
		return &f, nil
	}
	return nil, nil
}

// checkRollback checks that the last n applied migrations can be rolled back.
func (m *migrator) checkRollback(rows []appliedRow, n int) error {
	if n > len(rows) {
		return fmt.Errorf("cannot roll back %d migrations: only %d are applied; nothing was changed", n, len(rows))
	}
	for _, r := range rows[len(rows)-n:] {
		f, ok := m.byVersion[r.version]
		switch {
		case !ok:
			return fmt.Errorf("%04d_%s cannot be rolled back: its files are missing; nothing was changed", r.version, r.name)
		case !f.hasDown:
			return fmt.Errorf("%s cannot be rolled back: it has no down file (%s); nothing was changed", f.label, f.downFile())
		}
	}
	return nil
}

// dirtyError says that the database is dirty and how to settle it.
func (m *migrator) dirtyError(rows []appliedRow, d appliedRow) error {
	return fmt.Errorf("the database is dirty: migration %04d_%s ran without a transaction and failed part way; nothing runs until it is settled.\n%s",
		d.version, d.name, m.forceAdvice(d.version, previousVersion(rows, d.version)))
}

// forceAdvice tells the operator how to settle a dirty version.
func (m *migrator) forceAdvice(version, prev int64) string {
	return fmt.Sprintf("Repair the database by hand, then run `zenspa migrate force %d` if its changes are now fully in place, or `zenspa migrate force %d` if they are fully undone.", version, prev)
}

// appliedRow is one row of schema_migrations.
type appliedRow struct {
	version   int64
	name      string
	checksum  string
	appliedAt time.Time
	duration  time.Duration
	dirty     bool
}

// readApplied returns the rows of schema_migrations in version order.
func readApplied(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}) ([]appliedRow, error) {
	rows, err := q.QueryContext(ctx, `SELECT version, name, checksum, applied_at,
		(extract(epoch FROM duration) * 1000000)::bigint, dirty FROM schema_migrations ORDER BY version`)
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	defer rows.Close()
	var out []appliedRow
	for rows.Next() {
		var r appliedRow
		var micros int64
		if err := rows.Scan(&r.version, &r.name, &r.checksum, &r.appliedAt, &micros, &r.dirty); err != nil {
			return nil, fmt.Errorf("read schema_migrations: %w", err)
		}
		r.duration = time.Duration(micros) * time.Microsecond
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	return out, nil
}

// dirtyRow returns the dirty row, if any.
func dirtyRow(rows []appliedRow) *appliedRow {
	for i := range rows {
		if rows[i].dirty {
			return &rows[i]
		}
	}
	return nil
}

// previousVersion is the newest clean version below v, 0 when there is none.
func previousVersion(rows []appliedRow, v int64) int64 {
	var prev int64
	for _, r := range rows {
		if r.version < v && !r.dirty {
			prev = max(prev, r.version)
		}
	}
	return prev
}

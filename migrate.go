package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

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

// up applies every pending migration in order, each under the lock, and
// prints a line for each.
func (m *migrator) up(ctx context.Context) error {
	if err := m.ensureTable(ctx); err != nil {
		return err
	}
	applied := 0
	for {
		var next *migration
		var took time.Duration
		err := m.withLock(ctx, func(tx *sql.Tx) error {
			rows, err := readApplied(ctx, tx)
			if err != nil {
				return err
			}
			if err := m.refuse(rows); err != nil {
				return err
			}
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
	if err := m.ensureTable(ctx); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		var last *migration
		var took time.Duration
		err := m.withLock(ctx, func(tx *sql.Tx) error {
			rows, err := readApplied(ctx, tx)
			if err != nil {
				return err
			}
			if err := m.refuse(rows); err != nil {
				return err
			}
			if len(rows) == 0 {
				return nil
			}
			if err := m.checkRollback(rows, n-i); err != nil {
				return err
			}
			mg := m.byVersion[rows[len(rows)-1].version]
			last = &mg
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

// status prints every migration known to the files or the database: applied
// (when, how long) or pending, with a mark on applied ones whose file changed
// or is gone, or that are dirty. A dirty database also makes it fail.
func (m *migrator) status(ctx context.Context) error {
	var exists bool
	if err := m.db.QueryRowContext(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	var rows []appliedRow
	if exists {
		var err error
		if rows, err = readApplied(ctx, m.db); err != nil {
			return err
		}
	}

	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tNAME\tAPPLIED AT\tDURATION\t")
	appliedAt := make(map[int64]appliedRow, len(rows))
	for _, r := range rows {
		appliedAt[r.version] = r
	}
	pending, marked := 0, 0
	for _, v := range m.versions(rows) {
		f, hasFile := m.byVersion[v]
		r, applied := appliedAt[v]
		number, name := fmt.Sprintf("%04d", v), r.name
		if hasFile {
			number, name = versionString(f.label), f.name
		}
		if !applied {
			pending++
			fmt.Fprintf(tw, "%s\t%s\tpending\t\t\n", number, name)
			continue
		}
		note := m.driftNote(r)
		if r.dirty {
			note = "! dirty: failed part way, see migrate force"
		}
		if note != "" {
			marked++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", number, name, r.appliedAt.UTC().Format("2006-01-02 15:04:05 UTC"), formatDuration(r.duration), note)
	}
	tw.Flush()
	// tabwriter pads the last column too; trailing blanks help no one.
	for _, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		fmt.Fprintln(m.out, strings.TrimRight(line, " "))
	}
	fmt.Fprintf(m.out, "%d applied, %d pending\n", len(rows), pending)
	if marked > 0 {
		fmt.Fprintln(m.out, "! marks a migration that up and down refuse to go past: restore its file (or pass --allow-drift), or repair a dirty one")
	}
	if d := dirtyRow(rows); d != nil {
		return m.dirtyError(rows, *d)
	}
	return nil
}

// force settles a dirty database after an operator repaired it by hand:
// VERSION is either the dirty migration's own (its changes are now fully in
// place: record it as applied) or the version before it (its changes are
// fully undone: record it as not applied).
func (m *migrator) force(ctx context.Context, version int64) error {
	if err := m.ensureTable(ctx); err != nil {
		return err
	}
	var msg string
	err := m.withLock(ctx, func(tx *sql.Tx) error {
		rows, err := readApplied(ctx, tx)
		if err != nil {
			return err
		}
		d := dirtyRow(rows)
		if d == nil {
			return errors.New("nothing to force: no migration is marked dirty")
		}
		prev := previousVersion(rows, d.version)
		label := fmt.Sprintf("%04d_%s", d.version, d.name)
		switch version {
		case d.version:
			checksum := d.checksum
			if f, ok := m.byVersion[d.version]; ok {
				checksum = f.checksum
			}
			_, err = tx.ExecContext(ctx, `UPDATE schema_migrations SET dirty = false, checksum = $2 WHERE version = $1`, d.version, checksum)
			msg = fmt.Sprintf("recorded %s as applied", label)
		case prev:
			_, err = tx.ExecContext(ctx, `DELETE FROM schema_migrations WHERE version = $1`, d.version)
			msg = fmt.Sprintf("recorded %s as not applied", label)
		default:
			return fmt.Errorf("cannot force %d: the dirty migration is %s; force %d records it as applied, force %d as not applied", version, label, d.version, prev)
		}
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(m.out, msg)
	return nil
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
// the file and its row commit or vanish together. A no-transaction file runs
// statement by statement on a second connection while tx keeps the lock; it
// is marked dirty first, and only cleared when every statement succeeded.
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
	for _, st := range splitStatements(body) {
		if _, err := conn.ExecContext(ctx, st.sql); err != nil {
			return 0, &migrationError{file: file, body: body, offset: st.offset, err: err,
				outcome: "it ran without a transaction: the statements before the failing one stay applied, and the database is now marked dirty.\n" + advice}
		}
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

// versions lists every version of the files or the rows, in order.
func (m *migrator) versions(rows []appliedRow) []int64 {
	var out []int64
	i := 0
	for _, f := range m.files {
		for ; i < len(rows) && rows[i].version < f.version; i++ {
			out = append(out, rows[i].version)
		}
		if i < len(rows) && rows[i].version == f.version {
			i++
		}
		out = append(out, f.version)
	}
	for ; i < len(rows); i++ {
		out = append(out, rows[i].version)
	}
	return out
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

// migrationError is a file PostgreSQL refused: the file, where in it, what
// PostgreSQL said, and what that left behind.
type migrationError struct {
	file    string
	body    string // the file's text
	offset  int    // where in body the failing statement starts
	err     error
	outcome string
}

// Error reads "migration failed: FILE:LINE:COLUMN: MESSAGE (SQLSTATE CODE)",
// then PostgreSQL's detail and hint, then what the failure left behind.
func (e *migrationError) Error() string {
	var b strings.Builder
	b.WriteString("migration failed: " + e.file)
	pqErr := pq.As(e.err)
	if pqErr == nil {
		fmt.Fprintf(&b, ": %v\n%s", e.err, e.outcome)
		return b.String()
	}
	if line, col, ok := filePosition(e.body, e.offset, pqErr.Position); ok {
		fmt.Fprintf(&b, ":%d:%d", line, col)
	}
	fmt.Fprintf(&b, ": %s (SQLSTATE %s)", pqErr.Message, pqErr.Code)
	if pqErr.Detail != "" {
		b.WriteString("\n  detail: " + pqErr.Detail)
	}
	if pqErr.Hint != "" {
		b.WriteString("\n  hint: " + pqErr.Hint)
	}
	if pqErr.Where != "" {
		b.WriteString("\n  context: " + pqErr.Where)
	}
	if pqErr.Code == "25001" { // active_sql_transaction
		b.WriteString("\n  hint: to run this file outside a transaction, make its first line: -- " + noTransactionMarker)
	}
	b.WriteString("\n" + e.outcome)
	return b.String()
}

// Unwrap returns the driver's error.
func (e *migrationError) Unwrap() error { return e.err }

// filePosition turns PostgreSQL's error position (1-based, in characters from
// the start of the statement at byte offset start of body) into a line and
// column of the file.
func filePosition(body string, start int, position string) (line, col int, ok bool) {
	pos, err := strconv.Atoi(position)
	if err != nil || pos < 1 || start > len(body) {
		return 0, 0, false
	}
	i := start
	for n := 1; n < pos && i < len(body); n++ {
		_, size := utf8.DecodeRuneInString(body[i:])
		i += size
	}
	lineStart := strings.LastIndexByte(body[:i], '\n') + 1
	return 1 + strings.Count(body[:i], "\n"), 1 + utf8.RuneCountInString(body[lineStart:i]), true
}

// versionString is the number part of a label: "0001" of "0001_init".
func versionString(label string) string {
	v, _, _ := strings.Cut(label, "_")
	return v
}

// formatDuration rounds d for people: 1.234s, 15ms, 420µs.
func formatDuration(d time.Duration) string {
	if d >= time.Millisecond {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}

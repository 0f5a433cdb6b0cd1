package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// The `zenspa migrate …` command line and MIGRATE_ON_START around the runner
// of migrate.go: the arguments, the configuration and the migrations' pool,
// and the two commands for the operator, status and force.

// runMigrate runs `zenspa migrate …` against the migrations built into the
// binary. SIGINT or SIGTERM cancels it: PostgreSQL rolls back the migration in
// flight. A second signal ends the process at once, in case PostgreSQL does
// not answer the cancellation.
func runMigrate(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop)
	c := migrateCommand{schema: builtinMigrations(), workDir: ".", lookupEnv: lookupEnv, stdout: stdout, stderr: stderr}
	return c.run(ctx, args)
}

// migrateCommand is one `zenspa migrate …` with everything it reads from
// outside, so that tests can give it their own files and directory.
type migrateCommand struct {
	schema    fs.FS  // the migrations
	workDir   string // where `migrate new` looks for the source checkout
	lookupEnv func(string) (string, bool)
	stdout    io.Writer
	stderr    io.Writer
}

// run parses args, refuses bad migration files before anything else, and
// runs the subcommand.
func (c migrateCommand) run(ctx context.Context, args []string) error {
	a, err := parseMigrateArgs(args)
	if err != nil {
		fmt.Fprint(c.stderr, usage)
		return err
	}
	if a.sub == "help" {
		fmt.Fprint(c.stdout, usage)
		return nil
	}
	files, err := loadMigrations(c.schema)
	if err != nil {
		return err
	}
	if a.sub == "new" {
		return createMigration(c.workDir, a.name, c.stdout)
	}

	cfg, err := loadConfig(c.lookupEnv)
	if err != nil {
		return err
	}
	m, err := openMigrator(ctx, cfg, files, c.stdout)
	if err != nil {
		return err
	}
	defer m.db.Close()
	m.allowDrift = a.allowDrift
	switch a.sub {
	case "up":
		return m.up(ctx)
	case "down":
		return m.down(ctx, a.n)
	case "force":
		return m.force(ctx, a.version)
	default:
		return m.status(ctx)
	}
}

// migrateArgs is a parsed `zenspa migrate` command line.
type migrateArgs struct {
	sub        string // up, down, status, force, new or help
	n          int    // down: how many
	version    int64  // force: the version to record
	name       string // new: the short name
	allowDrift bool
}

// migrateSubcommands names the argument each subcommand takes: none (""),
// an optional one ("[N]") or a required one.
var migrateSubcommands = map[string]string{"up": "", "status": "", "down": "[N]", "force": "VERSION", "new": "NAME"}

// parseMigrateArgs reads `migrate SUBCOMMAND [ARG] [--allow-drift]`; every
// mistake is a *usageError.
func parseMigrateArgs(args []string) (migrateArgs, error) {
	var a migrateArgs
	var rest []string
	for _, arg := range args {
		switch {
		case arg == "--allow-drift" || arg == "-allow-drift":
			a.allowDrift = true
		case arg == "-h" || arg == "-help" || arg == "--help" || arg == "help":
			return migrateArgs{sub: "help"}, nil
		case strings.HasPrefix(arg, "-") && !isInteger(arg):
			return a, &usageError{fmt.Sprintf("migrate: unknown flag %q", arg)}
		default:
			rest = append(rest, arg)
		}
	}
	if len(rest) == 0 {
		return a, &usageError{"migrate needs a subcommand: up, down, status, force or new"}
	}
	a.sub, rest = rest[0], rest[1:]
	arg, ok := migrateSubcommands[a.sub]
	switch {
	case !ok:
		return a, &usageError{fmt.Sprintf("migrate: unknown subcommand %q (want up, down, status, force or new)", a.sub)}
	case len(rest) > 1 || len(rest) == 1 && arg == "" || len(rest) == 0 && arg != "" && arg[0] != '[':
		return a, &usageError{fmt.Sprintf("usage: zenspa migrate %s %s", a.sub, arg)}
	}
	var err error
	switch a.sub {
	case "down":
		a.n = 1
		if len(rest) == 1 {
			if a.n, err = strconv.Atoi(rest[0]); err != nil || a.n < 1 {
				return a, &usageError{fmt.Sprintf("migrate down N: N must be a whole number of at least 1, got %q", rest[0])}
			}
		}
	case "force":
		if a.version, err = strconv.ParseInt(rest[0], 10, 64); err != nil || a.version < 0 {
			return a, &usageError{fmt.Sprintf("migrate force VERSION: VERSION must be a migration number such as 3 or 0003, got %q", rest[0])}
		}
	case "new":
		if !migrationNamePattern.MatchString(rest[0]) {
			return a, &usageError{fmt.Sprintf("migrate new NAME: NAME must be lower-case letters, digits and _, such as add_clients, got %q", rest[0])}
		}
		a.name = rest[0]
	}
	if a.allowDrift && a.sub != "up" && a.sub != "down" {
		return a, &usageError{"--allow-drift applies to migrate up and migrate down only"}
	}
	return a, nil
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

// versions lists every version of the files or the rows, in order.
func (m *migrator) versions(rows []appliedRow) []int64 {
	seen := make(map[int64]bool, len(m.byVersion)+len(rows))
	for v := range m.byVersion {
		seen[v] = true
	}
	for _, r := range rows {
		seen[r.version] = true
	}
	return slices.Sorted(maps.Keys(seen))
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

// migrateOnStart is `migrate up` for serve with MIGRATE_ON_START=true: the
// same lock, so that replicas starting together apply each migration once,
// and the lines in serve's log.
func migrateOnStart(ctx context.Context, cfg config, log *slog.Logger) error {
	files, err := loadMigrations(builtinMigrations())
	if err != nil {
		return err
	}
	m, err := openMigrator(ctx, cfg, files, logWriter{log})
	if err != nil {
		return err
	}
	defer m.db.Close()
	if err := m.up(ctx); err != nil {
		return fmt.Errorf("MIGRATE_ON_START: %w", err)
	}
	return nil
}

// openMigrator connects a migrator of files to the configured database,
// writing its lines to out; the caller closes m.db.
func openMigrator(ctx context.Context, cfg config, files []migration, out io.Writer) (*migrator, error) {
	db, err := openMigrateDB(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return newMigrator(db, files, cfg.MigrateLockTimeout, out), nil
}

// logWriter logs each line written to it at INFO, so that the migrator's
// lines follow serve's log format (JSON in production).
type logWriter struct{ log *slog.Logger }

// Write logs every line of p; the migrator writes whole lines.
func (w logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.log.Info("migrate: " + line)
	}
	return len(p), nil
}

// isInteger reports whether s is a whole number, so that `down -1` is a bad N
// rather than an unknown flag.
func isInteger(s string) bool {
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
}

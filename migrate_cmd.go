package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// The `zenspa migrate …` command line and MIGRATE_ON_START: arguments,
// configuration and the migrations' own pool around the runner of migrate.go.

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
	db, err := openMigrateDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	m := newMigrator(db, files, cfg.MigrateLockTimeout, c.stdout)
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
	switch a.sub {
	case "up", "status":
		if len(rest) > 0 {
			return a, &usageError{fmt.Sprintf("migrate %s takes no arguments, got %q", a.sub, rest[0])}
		}
	case "down":
		a.n = 1
		if len(rest) > 1 {
			return a, &usageError{fmt.Sprintf("migrate down takes at most one argument (N), got %q", rest[1])}
		}
		if len(rest) == 1 {
			n, err := strconv.Atoi(rest[0])
			if err != nil || n < 1 {
				return a, &usageError{fmt.Sprintf("migrate down N: N must be a whole number of at least 1, got %q", rest[0])}
			}
			a.n = n
		}
	case "force":
		if len(rest) != 1 {
			return a, &usageError{"migrate force needs exactly one VERSION"}
		}
		v, err := strconv.ParseInt(rest[0], 10, 64)
		if err != nil || v < 0 {
			return a, &usageError{fmt.Sprintf("migrate force VERSION: VERSION must be a migration number such as 3 or 0003, got %q", rest[0])}
		}
		a.version = v
	case "new":
		if len(rest) != 1 {
			return a, &usageError{"migrate new needs exactly one NAME, such as add_clients"}
		}
		if !migrationNamePattern.MatchString(rest[0]) {
			return a, &usageError{fmt.Sprintf("migrate new NAME: NAME must be lower-case letters, digits and _, such as add_clients, got %q", rest[0])}
		}
		a.name = rest[0]
	default:
		return a, &usageError{fmt.Sprintf("migrate: unknown subcommand %q (want up, down, status, force or new)", a.sub)}
	}
	if a.allowDrift && a.sub != "up" && a.sub != "down" {
		return a, &usageError{"--allow-drift applies to migrate up and migrate down only"}
	}
	return a, nil
}

// migrateOnStart is `migrate up` for serve with MIGRATE_ON_START=true: the
// same lock, so that replicas starting together apply each migration once,
// and the lines in serve's log.
func migrateOnStart(ctx context.Context, cfg config, log *slog.Logger) error {
	files, err := loadMigrations(builtinMigrations())
	if err != nil {
		return err
	}
	db, err := openMigrateDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := newMigrator(db, files, cfg.MigrateLockTimeout, logWriter{log}).up(ctx); err != nil {
		return fmt.Errorf("MIGRATE_ON_START: %w", err)
	}
	return nil
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

// openMigrateDB opens a pool of the migrations' own. Its connections have no
// read deadline, unlike the server's: one statement of a migration (an index
// build) may rightly run for many minutes. It checks that PostgreSQL answers
// within DB_CONNECT_TIMEOUT and names the target, never the password.
func openMigrateDB(ctx context.Context, cfg config) (*sql.DB, error) {
	connector, err := newConnector(cfg.DatabaseURL, cfg.DBConnectTimeout, 0)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(connector)
	pctx, cancel := context.WithTimeout(ctx, cfg.DBConnectTimeout)
	defer cancel()
	var one int
	if err := db.QueryRowContext(pctx, "SELECT 1").Scan(&one); err != nil {
		db.Close()
		t := parseDBTarget(cfg.DatabaseURL)
		return nil, fmt.Errorf("cannot connect to PostgreSQL at host %s port %s database %q: %s",
			t.Host, t.Port, t.Database, scrubSecret(err.Error(), cfg.DatabaseURL))
	}
	return db, nil
}

// isInteger reports whether s is a whole number, so that `down -1` is a bad N
// rather than an unknown flag.
func isInteger(s string) bool {
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
}

package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"
)

// migrationFS builds migration files from name, content pairs.
func migrationFS(t testing.TB, nameContent ...string) fstest.MapFS {
	t.Helper()
	if len(nameContent)%2 != 0 {
		t.Fatalf("migrationFS: odd number of arguments")
	}
	fsys := fstest.MapFS{}
	for i := 0; i < len(nameContent); i += 2 {
		fsys[nameContent[i]] = &fstest.MapFile{Data: []byte(nameContent[i+1])}
	}
	return fsys
}

// withFiles returns a copy of fsys with files replaced (or, with content
// "-", removed).
func withFiles(fsys fstest.MapFS, nameContent ...string) fstest.MapFS {
	out := fstest.MapFS{}
	for k, v := range fsys {
		out[k] = v
	}
	for i := 0; i < len(nameContent); i += 2 {
		if nameContent[i+1] == "-" {
			delete(out, nameContent[i])
		} else {
			out[nameContent[i]] = &fstest.MapFile{Data: []byte(nameContent[i+1])}
		}
	}
	return out
}

// openMigrateTestDB opens a migrations pool on url, as the command does;
// it is closed at cleanup.
func openMigrateTestDB(t testing.TB, url string) *sql.DB {
	t.Helper()
	db, err := openMigrateDB(context.Background(), testConfig(t, url))
	if err != nil {
		t.Fatalf("openMigrateDB: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// testMigrator returns a migrator for fsys on db, writing to out.
func testMigrator(t testing.TB, db *sql.DB, fsys fs.FS, out io.Writer) *migrator {
	t.Helper()
	files, err := loadMigrations(fsys)
	if err != nil {
		t.Fatalf("loadMigrations: %v", err)
	}
	return newMigrator(db, files, 30*time.Second, out)
}

// testCommand returns `zenspa migrate` over fsys against the database at url.
func testCommand(t testing.TB, fsys fs.FS, url string, kv ...string) (migrateCommand, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	return migrateCommand{schema: fsys, workDir: t.TempDir(), lookupEnv: testEnv(t, url, kv...), stdout: &stdout, stderr: &stderr}, &stdout, &stderr
}

// appliedVersions lists schema_migrations.version, in order.
func appliedVersions(t testing.TB, db *sql.DB) []int64 {
	t.Helper()
	rows, err := readApplied(context.Background(), db)
	if err != nil {
		t.Fatalf("readApplied: %v", err)
	}
	var out []int64
	for _, r := range rows {
		out = append(out, r.version)
	}
	return out
}

// relationExists reports whether a table, index or function (a signature
// with parentheses) exists.
func relationExists(t testing.TB, db *sql.DB, name string) bool {
	t.Helper()
	q := "SELECT to_regclass($1) IS NOT NULL"
	if strings.Contains(name, "(") {
		q = "SELECT to_regprocedure($1) IS NOT NULL"
	}
	var ok bool
	mustf(t, db.QueryRow(q, name).Scan(&ok), "%s", q)
	return ok
}

// wantContains fails the test unless s contains every part.
func wantContains(t testing.TB, what, s string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(s, p) {
			t.Errorf("%s = %q, want it to contain %q", what, s, p)
		}
	}
}

// wantErr fails the test unless err is not nil and contains every part.
func wantErr(t testing.TB, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s = nil error, want one containing %q", what, parts)
	}
	wantContains(t, what+" error", err.Error(), parts...)
}

// roundTripFiles are three migrations with a gap in the numbers; 0002 has a
// semicolon inside a function body, 0005 runs outside a transaction (its one
// statement followed by a comment with a semicolon).
var roundTripFiles = []string{
	"0001_create_items.up.sql", "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL);\n",
	"0001_create_items.down.sql", "DROP TABLE items;\n",
	"0002_add_price.up.sql", "ALTER TABLE items ADD COLUMN price numeric NOT NULL DEFAULT 0;\n" +
		"CREATE FUNCTION items_label(i items) RETURNS text LANGUAGE sql AS $$ SELECT i.name || ';' || i.price $$;\n",
	"0002_add_price.down.sql", "DROP FUNCTION items_label(items);\nALTER TABLE items DROP COLUMN price;\n",
	"0005_index_items.up.sql", "-- zenspa:no-transaction\n" +
		"CREATE INDEX CONCURRENTLY items_name_price_idx ON items (name, price);\n" +
		"-- a comment; with a semicolon\n",
	"0005_index_items.down.sql", "-- zenspa:no-transaction\nDROP INDEX CONCURRENTLY items_name_price_idx;\n",
}

func TestMigrateUpDownStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openMigrateTestDB(t, newTestDatabase(t))
	var out bytes.Buffer
	m := testMigrator(t, db, migrationFS(t, roundTripFiles...), &out)

	step := func(name string, fn func() error) string {
		t.Helper()
		out.Reset()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return out.String()
	}

	got := step("status", func() error { return m.status(ctx) })
	wantLines(t, "status before up", got,
		`^VERSION  NAME          APPLIED AT  DURATION$`,
		`^0001     create_items  pending$`,
		`^0002     add_price     pending$`,
		`^0005     index_items   pending$`,
		`^0 applied, 3 pending$`)

	got = step("up", func() error { return m.up(ctx) })
	wantLines(t, "up", got,
		`^applied 0001_create_items \(\d+(\.\d+)?(µs|ms|s)\)$`,
		`^applied 0002_add_price \(\d+(\.\d+)?(µs|ms|s)\)$`,
		`^applied 0005_index_items \(\d+(\.\d+)?(µs|ms|s)\)$`)
	for _, rel := range []string{"items", "items_name_price_idx", "items_label(items)"} {
		if !relationExists(t, db, rel) {
			t.Errorf("after up, %s does not exist", rel)
		}
	}
	rows, err := readApplied(ctx, db)
	mustf(t, err, "readApplied")
	files, _ := loadMigrations(migrationFS(t, roundTripFiles...))
	for i, r := range rows {
		if r.version != files[i].version || r.name != files[i].name || r.checksum != files[i].checksum || r.dirty || r.appliedAt.IsZero() {
			t.Errorf("schema_migrations row %d = %+v, want version %d, name %s, checksum %s, clean", i, r, files[i].version, files[i].name, files[i].checksum)
		}
	}

	if got := step("up again", func() error { return m.up(ctx) }); got != "already up to date\n" {
		t.Errorf("up again printed %q, want %q", got, "already up to date\n")
	}
	got = step("status", func() error { return m.status(ctx) })
	wantLines(t, "status after up", got,
		`^VERSION  NAME          APPLIED AT               DURATION$`,
		`^0001     create_items  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  \S+$`,
		`^0002     add_price     \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  \S+$`,
		`^0005     index_items   \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  \S+$`,
		`^3 applied, 0 pending$`)

	got = step("down", func() error { return m.down(ctx, 1) })
	wantLines(t, "down", got, `^rolled back 0005_index_items \(\S+\)$`)
	if relationExists(t, db, "items_name_price_idx") {
		t.Errorf("after down, the index of 0005 still exists")
	}
	if got := appliedVersions(t, db); fmt.Sprint(got) != "[1 2]" {
		t.Errorf("after down, applied = %v, want [1 2]", got)
	}

	got = step("down 2", func() error { return m.down(ctx, 2) })
	wantLines(t, "down 2", got, `^rolled back 0002_add_price \(\S+\)$`, `^rolled back 0001_create_items \(\S+\)$`)
	if relationExists(t, db, "items") || len(appliedVersions(t, db)) != 0 {
		t.Errorf("after down 2, items exists or migrations are still recorded: %v", appliedVersions(t, db))
	}
	if got := step("down on nothing", func() error { return m.down(ctx, 1) }); got != "nothing to roll back\n" {
		t.Errorf("down with nothing applied printed %q, want %q", got, "nothing to roll back\n")
	}

	step("up after down", func() error { return m.up(ctx) })
	if got := appliedVersions(t, db); fmt.Sprint(got) != "[1 2 5]" {
		t.Errorf("after up again, applied = %v, want [1 2 5]", got)
	}
}

// wantLines checks that out has exactly one line per pattern, in order.
func wantLines(t testing.TB, what, out string, patterns ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != len(patterns) {
		t.Errorf("%s printed %d lines, want %d:\n%s", what, len(lines), len(patterns), out)
		return
	}
	for i, p := range patterns {
		if !regexp.MustCompile(p).MatchString(lines[i]) {
			t.Errorf("%s line %d = %q, want it to match %s", what, i+1, lines[i], p)
		}
	}
}

func TestMigrateDownN(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openMigrateTestDB(t, newTestDatabase(t))
	var files []string
	for v := 1; v <= 4; v++ {
		files = append(files,
			fmt.Sprintf("%04d_t%d.up.sql", v, v), fmt.Sprintf("CREATE TABLE t%d (id int);", v),
			fmt.Sprintf("%04d_t%d.down.sql", v, v), fmt.Sprintf("DROP TABLE t%d;", v))
	}
	var out bytes.Buffer
	m := testMigrator(t, db, migrationFS(t, files...), &out)
	mustf(t, m.up(ctx), "up")

	wantErr(t, "down 5", m.down(ctx, 5), "cannot roll back 5 migrations: only 4 are applied", "nothing was changed")
	if got := appliedVersions(t, db); fmt.Sprint(got) != "[1 2 3 4]" {
		t.Errorf("after a refused down 5, applied = %v, want [1 2 3 4]", got)
	}
	out.Reset()
	mustf(t, m.down(ctx, 3), "down 3")
	wantLines(t, "down 3", out.String(), `^rolled back 0004_t4 `, `^rolled back 0003_t3 `, `^rolled back 0002_t2 `)
	if got := appliedVersions(t, db); fmt.Sprint(got) != "[1]" {
		t.Errorf("after down 3, applied = %v, want [1]", got)
	}
	if !relationExists(t, db, "t1") || relationExists(t, db, "t2") {
		t.Errorf("after down 3, want t1 and no t2")
	}
}

func TestMigrateFailureLeavesNoTrace(t *testing.T) {
	t.Parallel()
	url := newTestDatabase(t)
	fsys := migrationFS(t,
		"0001_ok.up.sql", "CREATE TABLE ok_table (id int);",
		"0002_broken.up.sql", "-- crée la table ☕\n"+
			"CREATE TABLE half_done (id int); INSERT INTO half_done VALUES (1);\n"+
			"SELECT 'é', id FROM half_done WHERE id = = 1;\n",
		"0003_later.up.sql", "CREATE TABLE later (id int);",
	)
	cmd, stdout, _ := testCommand(t, fsys, url)
	err := cmd.run(context.Background(), []string{"up"})
	// PostgreSQL's position counts characters: the é before the error and
	// the multi-byte comment above it must not shift line 3, column 42.
	wantErr(t, "migrate up", err, "0002_broken.up.sql:3:42:", `syntax error at or near "="`, "42601", "nothing of it was applied")
	if code := exitCode(err); code != 1 {
		t.Errorf("exitCode(%v) = %d, want 1", err, code)
	}
	wantLines(t, "migrate up", stdout.String(), `^applied 0001_ok `)

	db := openMigrateTestDB(t, url)
	if relationExists(t, db, "half_done") || relationExists(t, db, "later") {
		t.Errorf("after the failed migration, half_done or later exists")
	}
	if got := appliedVersions(t, db); fmt.Sprint(got) != "[1]" {
		t.Errorf("after the failed migration, applied = %v, want [1]", got)
	}
}

func TestMigrateNoTransactionFailureMarksDirty(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := newTestDatabase(t)
	db := openMigrateTestDB(t, url)
	// A unique index built concurrently over duplicate names fails after it
	// began, and leaves an invalid index behind: the case dirty exists for.
	fsys := migrationFS(t,
		"0001_items.up.sql", "CREATE TABLE items (id bigint PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'a'), (2, 'a');",
		"0001_items.down.sql", "DROP TABLE items;",
		"0002_index.up.sql", "-- zenspa:no-transaction\n"+
			"CREATE UNIQUE INDEX CONCURRENTLY items_name_idx ON items (name);\n",
		"0002_index.down.sql", "-- zenspa:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS items_name_idx;",
		"0003_more.up.sql", "CREATE TABLE more (id int);",
	)
	var out bytes.Buffer
	m := testMigrator(t, db, fsys, &out)

	failUp := func() {
		t.Helper()
		wantErr(t, "up", m.up(ctx), "0002_index.up.sql:", `could not create unique index "items_name_idx"`, "SQLSTATE 23505",
			"without a transaction", "marked dirty", "migrate force 2", "migrate force 1")
		if !relationExists(t, db, "items_name_idx") {
			t.Errorf("the failed build left nothing behind: items_name_idx is missing")
		}
		if relationExists(t, db, "more") {
			t.Errorf("0003 ran after the failure")
		}
	}
	failUp()
	rows, err := readApplied(ctx, db)
	mustf(t, err, "readApplied")
	if len(rows) != 2 || !rows[1].dirty || rows[1].version != 2 {
		t.Fatalf("after the failure, schema_migrations = %+v, want 0002 dirty", rows)
	}

	// Every command refuses until force settles it.
	dirty := []string{"the database is dirty", "0002_index", "migrate force 2", "migrate force 1"}
	wantErr(t, "up on a dirty database", m.up(ctx), dirty...)
	wantErr(t, "down on a dirty database", m.down(ctx, 1), dirty...)
	out.Reset()
	wantErr(t, "status on a dirty database", m.status(ctx), dirty...)
	wantContains(t, "status on a dirty database", out.String(), "0002     index  ", "! dirty")
	cmd, _, _ := testCommand(t, fsys, url)
	err = cmd.run(ctx, []string{"up", "--allow-drift"})
	wantErr(t, "migrate up --allow-drift on a dirty database", err, dirty...)
	if code := exitCode(err); code != 1 {
		t.Errorf("exitCode(%v) = %d, want 1", err, code)
	}
	wantErr(t, "force 3", m.force(ctx, 3), "cannot force 3", "force 2 records it as applied, force 1 as not applied")

	// force 1: the operator undid it; it is pending again, and fails again.
	_, err = db.ExecContext(ctx, "DROP INDEX items_name_idx")
	mustf(t, err, "undo the invalid index")
	out.Reset()
	mustf(t, m.force(ctx, 1), "force 1")
	wantContains(t, "force 1", out.String(), "recorded 0002_index as not applied")
	out.Reset()
	mustf(t, m.status(ctx), "status after force 1")
	wantContains(t, "status after force 1", out.String(), "0002     index  pending")
	failUp()

	// force 2: the operator completed it; up goes on from there.
	out.Reset()
	mustf(t, m.force(ctx, 2), "force 2")
	wantContains(t, "force 2", out.String(), "recorded 0002_index as applied")
	out.Reset()
	mustf(t, m.up(ctx), "up after force 2")
	wantLines(t, "up after force 2", out.String(), `^applied 0003_more `)
	wantErr(t, "force on a clean database", m.force(ctx, 3), "nothing to force")
}

// TestMigrateNoTransactionOneStatement: a no-transaction file holds exactly
// one statement. A second one, or one PostgreSQL cannot parse, is refused
// before anything runs: nothing applied, nothing marked dirty.
func TestMigrateNoTransactionOneStatement(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openMigrateTestDB(t, newTestDatabase(t))
	base := []string{"0001_items.up.sql", "CREATE TABLE items (id bigint PRIMARY KEY, name text);"}
	for _, tt := range []struct {
		name, up string
		want     []string
	}{
		{"two statements", "-- zenspa:no-transaction\nCREATE INDEX CONCURRENTLY items_a_idx ON items (name);\nCREATE TABLE other (id int);\n",
			[]string{"0002_two.up.sql holds more than one statement", "may hold only one", "nothing of it was applied"}},
		{"two on one line", "-- zenspa:no-transaction\nCREATE TABLE other (id int); CREATE TABLE another (id int);",
			[]string{"0002_two.up.sql holds more than one statement"}},
		{"unknown column", "-- zenspa:no-transaction\n\nSELECT nosuchcolumn FROM items;\n",
			[]string{"0002_two.up.sql:3:8:", `column "nosuchcolumn" does not exist`, "nothing of it was applied"}},
		{"syntax error", "-- zenspa:no-transaction\nCREATE INDEX CONCURRENTLY ON ON items;\n",
			[]string{"0002_two.up.sql:2:", "syntax error", "nothing of it was applied"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			m := testMigrator(t, db, migrationFS(t, append(base, "0002_two.up.sql", tt.up)...), &out)
			wantErr(t, "up", m.up(ctx), tt.want...)
			for _, rel := range []string{"items_a_idx", "other", "another"} {
				if relationExists(t, db, rel) {
					t.Errorf("%s exists: the refused file ran", rel)
				}
			}
			rows, err := readApplied(ctx, db)
			mustf(t, err, "readApplied")
			if len(rows) != 1 || rows[0].version != 1 || rows[0].dirty {
				t.Errorf("schema_migrations = %+v, want only 0001, clean", rows)
			}
		})
	}
}

func TestMigrateDrift(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := newTestDatabase(t)
	db := openMigrateTestDB(t, url)
	original := migrationFS(t,
		"0001_a.up.sql", "CREATE TABLE a (id int);",
		"0001_a.down.sql", "DROP TABLE a;",
		"0002_b.up.sql", "CREATE TABLE b (id int);",
		"0002_b.down.sql", "DROP TABLE b;",
	)
	mustf(t, testMigrator(t, db, original, io.Discard).up(ctx), "up")

	changed := withFiles(original, "0002_b.up.sql", "CREATE TABLE b (id bigint);")
	var out bytes.Buffer
	m := testMigrator(t, db, changed, &out)
	wantErr(t, "up with a changed file", m.up(ctx), "0002_b: file changed since it was applied", "--allow-drift")
	wantErr(t, "down with a changed file", m.down(ctx, 1), "0002_b: file changed since it was applied")
	mustf(t, m.status(ctx), "status with a changed file")
	wantContains(t, "status with a changed file", out.String(), "! file changed since it was applied")

	cmd, stdout, _ := testCommand(t, changed, url)
	mustf(t, cmd.run(ctx, []string{"up", "--allow-drift"}), "migrate up --allow-drift")
	wantContains(t, "migrate up --allow-drift", stdout.String(), "already up to date")

	renamed := withFiles(original, "0002_b.up.sql", "-", "0002_b.down.sql", "-", "0002_c.up.sql", "CREATE TABLE b (id int);")
	wantErr(t, "up with a renamed file", testMigrator(t, db, renamed, io.Discard).up(ctx), "0002_b: file renamed (applied as 0002_b)")

	gone := withFiles(original, "0002_b.up.sql", "-", "0002_b.down.sql", "-")
	out.Reset()
	m = testMigrator(t, db, gone, &out)
	wantErr(t, "up with a missing file", m.up(ctx), "0002_b: file missing")
	wantErr(t, "down with a missing file", m.down(ctx, 1), "0002_b: file missing")
	mustf(t, m.status(ctx), "status with a missing file")
	wantContains(t, "status with a missing file", out.String(), "0002     b  ", "! file missing")
	m.allowDrift = true
	wantErr(t, "down --allow-drift with a missing file", m.down(ctx, 1), "0002_b cannot be rolled back: its files are missing", "nothing was changed")

	cmd, stdout, _ = testCommand(t, changed, url)
	mustf(t, cmd.run(ctx, []string{"down", "--allow-drift"}), "migrate down --allow-drift")
	wantContains(t, "migrate down --allow-drift", stdout.String(), "rolled back 0002_b")
	if got := appliedVersions(t, db); fmt.Sprint(got) != "[1]" {
		t.Errorf("after down --allow-drift, applied = %v, want [1]", got)
	}
}

func TestMigrateBadFiles(t *testing.T) {
	t.Parallel()
	ok := []string{"0001_init.up.sql", "SELECT 1;", "0001_init.down.sql", "SELECT 1;", "README.md", "not a migration"}
	tests := []struct {
		name  string
		files []string
		want  []string
	}{
		{"no padding", []string{"1_second.up.sql", ""}, []string{"1_second.up.sql: name does not match"}},
		{"upper case", []string{"0002_Second.up.sql", ""}, []string{"0002_Second.up.sql: name does not match"}},
		{"dash", []string{"0002-second.up.sql", ""}, []string{"0002-second.up.sql: name does not match"}},
		{"no direction", []string{"0002_second.sql", ""}, []string{"0002_second.sql: name does not match"}},
		{"zero", []string{"0000_zero.up.sql", ""}, []string{"0000_zero.up.sql: the number must be from 0001"}},
		{"duplicate number", []string{"0002_a.up.sql", "", "0002_b.up.sql", ""}, []string{"0002_a.up.sql, 0002_b.up.sql: two migrations share the number 0002"}},
		{"duplicate with other padding", []string{"0002_a.up.sql", "", "00002_a.up.sql", ""}, []string{"00002_a.up.sql", "0002_a.up.sql", "share the number 0002"}},
		{"names differ", []string{"0002_a.up.sql", "", "0002_b.down.sql", ""}, []string{"0002_a.up.sql, 0002_b.down.sql: the up and down files of a migration must have the same name"}},
		{"down without up", []string{"0003_c.down.sql", ""}, []string{"0003_c.down.sql: down file without its up file"}},
		{"several at once", []string{"x.sql", "", "0003_c.down.sql", ""}, []string{"x.sql", "0003_c.down.sql"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fsys := migrationFS(t, append(append([]string{}, ok...), tt.files...)...)
			// Every command refuses, before touching the (here unreachable) database.
			for _, args := range [][]string{{"up"}, {"down"}, {"status"}, {"force", "1"}, {"new", "x"}} {
				cmd, stdout, _ := testCommand(t, fsys, "postgres://zenspa_test:"+testDatabasePassword+"@127.0.0.1:1/nowhere?sslmode=disable")
				err := cmd.run(context.Background(), args)
				wantErr(t, "migrate "+strings.Join(args, " "), err, append([]string{"bad migration files"}, tt.want...)...)
				if code := exitCode(err); code != 1 {
					t.Errorf("exitCode(%v) = %d, want 1", err, code)
				}
				if stdout.Len() != 0 {
					t.Errorf("migrate %s printed %q, want nothing", strings.Join(args, " "), stdout.String())
				}
			}
		})
	}
}

func TestEmbeddedMigrationsAreValid(t *testing.T) {
	t.Parallel()
	files, err := loadMigrations(builtinMigrations())
	if err != nil {
		t.Fatalf("loadMigrations(embedded schema): %v", err)
	}
	if len(files) == 0 || files[0].label != "0001_init" || !files[0].hasDown {
		t.Errorf("embedded migrations start with %+v, want 0001_init with a down file", files[0])
	}
}

func TestMigrateConcurrentUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := newTestDatabase(t)
	fsys := migrationFS(t,
		"0001_counter.up.sql", "CREATE TABLE counter (version int NOT NULL);",
		"0002_one.up.sql", "INSERT INTO counter VALUES (2); SELECT pg_sleep(0.05);",
		"0003_two.up.sql", "INSERT INTO counter VALUES (3);",
		"0004_three.up.sql", "-- zenspa:no-transaction\nINSERT INTO counter VALUES (4);",
		"0005_index.up.sql", "-- zenspa:no-transaction\nCREATE INDEX CONCURRENTLY counter_idx ON counter (version);",
	)
	const workers = 8
	dbs := make([]*sql.DB, workers)
	for i := range dbs {
		dbs[i] = openMigrateTestDB(t, url)
	}
	start := make(chan struct{})
	outs := make([]bytes.Buffer, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := testMigrator(t, dbs[i], fsys, &outs[i])
			<-start
			errs[i] = m.up(ctx)
		}()
	}
	close(start)
	wg.Wait()

	applied := map[string]int{}
	for i := range workers {
		if errs[i] != nil {
			t.Errorf("worker %d: up: %v", i, errs[i])
		}
		for _, line := range strings.Split(strings.TrimSpace(outs[i].String()), "\n") {
			if label, ok := strings.CutPrefix(line, "applied "); ok {
				applied[strings.Fields(label)[0]]++
			} else if line != "already up to date" {
				t.Errorf("worker %d printed %q", i, line)
			}
		}
	}
	for _, label := range []string{"0001_counter", "0002_one", "0003_two", "0004_three", "0005_index"} {
		if applied[label] != 1 {
			t.Errorf("%s was applied %d times by the workers, want 1", label, applied[label])
		}
	}
	var got string
	mustf(t, dbs[0].QueryRow("SELECT string_agg(version::text, ',' ORDER BY version) FROM counter").Scan(&got), "read counter")
	if got != "2,3,4" {
		t.Errorf("counter rows = %s, want 2,3,4 (each migration once)", got)
	}
	if got := appliedVersions(t, dbs[0]); fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Errorf("schema_migrations = %v, want [1 2 3 4 5]", got)
	}
}

func TestMigrateLockTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := newTestDatabase(t)
	holder := openMigrateTestDB(t, url)
	tx, err := holder.BeginTx(ctx, nil)
	mustf(t, err, "begin")
	defer tx.Rollback()
	_, err = tx.Exec("SELECT pg_advisory_xact_lock($1)", migrateLockKey)
	mustf(t, err, "take the migration lock")

	// waiting counts the requests for the migration lock still waiting.
	waiting := func() int {
		t.Helper()
		var n int
		mustf(t, tx.QueryRow(`SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND classid::bigint = $1 AND objid::bigint = $2`, migrateLockKey>>32, migrateLockKey&0xffffffff).Scan(&n), "read pg_locks")
		return n
	}

	cmd, stdout, _ := testCommand(t, migrationFS(t, "0001_a.up.sql", "CREATE TABLE a (id int);"), url, "MIGRATE_LOCK_TIMEOUT=300ms")
	done := make(chan error, 1)
	started := time.Now()
	go func() { done <- cmd.run(ctx, []string{"up"}) }()
	// The migrator polls: no request of it should ever queue in pg_locks.
	queued := 0
	for {
		select {
		case err = <-done:
		case <-time.After(10 * time.Millisecond):
			queued = max(queued, waiting())
			continue
		}
		break
	}
	elapsed := time.Since(started)
	wantErr(t, "migrate up while the lock is held", err, "timed out after 300ms (MIGRATE_LOCK_TIMEOUT) waiting for the migration lock")
	if elapsed < 300*time.Millisecond || elapsed > 1200*time.Millisecond {
		t.Errorf("migrate up gave up after %s, want about 300ms", elapsed)
	}
	if queued != 0 {
		t.Errorf("while migrate up waited, %d requests for the migration lock were queued, want 0", queued)
	}
	if n := waiting(); n != 0 {
		t.Errorf("after the timeout, %d requests for the migration lock are still waiting, want 0", n)
	}
	if stdout.Len() != 0 {
		t.Errorf("migrate up printed %q, want nothing", stdout.String())
	}

	mustf(t, tx.Rollback(), "release the lock")
	mustf(t, cmd.run(ctx, []string{"up"}), "migrate up once the lock is free")
	wantContains(t, "migrate up once the lock is free", stdout.String(), "applied 0001_a")
}

func TestMigrateDownWithoutDownFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name  string
		files []string
		n     int
		want  string
	}{
		{"last has none", []string{
			"0001_a.up.sql", "CREATE TABLE a (id int);", "0001_a.down.sql", "DROP TABLE a;",
			"0002_b.up.sql", "CREATE TABLE b (id int);",
		}, 1, "0002_b cannot be rolled back: it has no down file (0002_b.down.sql); nothing was changed"},
		{"an earlier one has none", []string{
			"0001_a.up.sql", "CREATE TABLE a (id int);",
			"0002_b.up.sql", "CREATE TABLE b (id int);", "0002_b.down.sql", "DROP TABLE b;",
		}, 2, "0001_a cannot be rolled back: it has no down file (0001_a.down.sql); nothing was changed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			url := newTestDatabase(t)
			db := openMigrateTestDB(t, url)
			fsys := migrationFS(t, tt.files...)
			mustf(t, testMigrator(t, db, fsys, io.Discard).up(ctx), "up")
			cmd, stdout, _ := testCommand(t, fsys, url)
			err := cmd.run(ctx, []string{"down", strconv.Itoa(tt.n)})
			wantErr(t, "migrate down", err, tt.want)
			if code := exitCode(err); code != 1 {
				t.Errorf("exitCode(%v) = %d, want 1", err, code)
			}
			if stdout.Len() != 0 {
				t.Errorf("migrate down printed %q, want nothing", stdout.String())
			}
			if got := appliedVersions(t, db); fmt.Sprint(got) != "[1 2]" || !relationExists(t, db, "a") || !relationExists(t, db, "b") {
				t.Errorf("after a refused down, applied = %v (want [1 2]) or a table is gone", got)
			}
		})
	}
}

func TestMigrateEmbeddedInit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openMigrateTestDB(t, newTestDatabase(t))
	var out bytes.Buffer
	m := testMigrator(t, db, builtinMigrations(), &out)
	mustf(t, m.up(ctx), "up")
	wantContains(t, "up", out.String(), "applied 0001_init (")
	if !relationExists(t, db, "set_updated_at()") {
		t.Fatalf("after up, set_updated_at() does not exist")
	}

	// The trigger function does its job.
	for _, q := range []string{
		"CREATE TABLE trigger_check (id int, updated_at timestamptz NOT NULL DEFAULT '2000-01-01')",
		"CREATE TRIGGER trigger_check_set_updated_at BEFORE UPDATE ON trigger_check FOR EACH ROW EXECUTE FUNCTION set_updated_at()",
		"INSERT INTO trigger_check (id) VALUES (1)",
		"UPDATE trigger_check SET id = 2",
	} {
		_, err := db.Exec(q)
		mustf(t, err, "%s", q)
	}
	var updated time.Time
	mustf(t, db.QueryRow("SELECT updated_at FROM trigger_check").Scan(&updated), "read updated_at")
	if time.Since(updated) > time.Minute {
		t.Errorf("after an UPDATE, updated_at = %s, want now", updated)
	}
	_, err := db.Exec("DROP TABLE trigger_check")
	mustf(t, err, "drop trigger_check")

	out.Reset()
	mustf(t, m.down(ctx, len(appliedVersions(t, db))), "down")
	wantContains(t, "down", out.String(), "rolled back 0002_treatments (", "rolled back 0001_init (")
	if relationExists(t, db, "set_updated_at()") {
		t.Errorf("after down, set_updated_at() still exists")
	}
	if got := appliedVersions(t, db); len(got) != 0 {
		t.Errorf("after down, applied = %v, want none", got)
	}
}

func TestMigrateNew(t *testing.T) {
	t.Parallel()
	checkout := t.TempDir()
	for name, text := range map[string]string{
		"go.mod":                    "module github.com/zenspa/zenspa\n\ngo 1.24\n",
		"schema/0001_init.up.sql":   "SELECT 1;",
		"schema/0001_init.down.sql": "SELECT 1;",
		"schema/0003_gap.up.sql":    "SELECT 1;",
	} {
		path := filepath.Join(checkout, name)
		mustf(t, os.MkdirAll(filepath.Dir(path), 0o755), "mkdir")
		mustf(t, os.WriteFile(path, []byte(text), 0o644), "write %s", name)
	}
	newIn := func(dir string, args ...string) (string, error) {
		var stdout, stderr bytes.Buffer
		cmd := migrateCommand{schema: fstest.MapFS{}, workDir: dir, stdout: &stdout, stderr: &stderr}
		err := cmd.run(context.Background(), append([]string{"new"}, args...))
		return stdout.String(), err
	}

	out, err := newIn(checkout, "add_clients")
	mustf(t, err, "migrate new add_clients")
	if want := "created schema/0004_add_clients.up.sql\ncreated schema/0004_add_clients.down.sql\n"; out != want {
		t.Errorf("migrate new add_clients printed %q, want %q", out, want)
	}
	files, err := loadMigrations(os.DirFS(filepath.Join(checkout, "schema")))
	mustf(t, err, "loadMigrations after migrate new")
	last := files[len(files)-1]
	if len(files) != 3 || last.label != "0004_add_clients" || !last.hasDown || last.upNoTx {
		t.Errorf("after migrate new, last migration = %+v, want 0004_add_clients with a down file", last)
	}
	for _, body := range []string{last.upSQL, last.downSQL} {
		for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
			if !strings.HasPrefix(line, "--") {
				t.Errorf("new file holds %q, want only comments:\n%s", line, body)
			}
		}
	}
	out, err = newIn(checkout, "more")
	mustf(t, err, "migrate new more")
	wantContains(t, "second migrate new", out, "0005_more.up.sql")

	otherModule := t.TempDir()
	mustf(t, os.WriteFile(filepath.Join(otherModule, "go.mod"), []byte("module example.com/other\n"), 0o644), "write go.mod")
	mustf(t, os.Mkdir(filepath.Join(otherModule, "schema"), 0o755), "mkdir")
	for _, dir := range []string{t.TempDir(), otherModule} {
		_, err := newIn(dir, "add_clients")
		wantErr(t, "migrate new outside a checkout", err, "works only in a zenspa source checkout")
		if entries, _ := os.ReadDir(filepath.Join(dir, "schema")); len(entries) != 0 {
			t.Errorf("migrate new outside a checkout created %d files", len(entries))
		}
	}
	for _, args := range [][]string{{}, {"Add-Clients"}, {"a", "b"}} {
		_, err := newIn(checkout, args...)
		var ue *usageError
		if !errors.As(err, &ue) || exitCode(err) != 2 {
			t.Errorf("migrate new %q = %v, want a usage error (exit 2)", args, err)
		}
	}
}

func TestMigrateOnStart(t *testing.T) {
	t.Parallel()
	for _, onStart := range []bool{false, true} {
		t.Run(fmt.Sprintf("MIGRATE_ON_START=%t", onStart), func(t *testing.T) {
			t.Parallel()
			url := newTestDatabase(t)
			port := freePort(t)
			env := testEnv(t, url, "HOST=127.0.0.1", "PORT="+strconv.Itoa(port), "MIGRATE_ON_START="+strconv.FormatBool(onStart))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			logs := &syncBuffer{}
			done := make(chan error, 1)
			go func() { done <- run(ctx, []string{"serve"}, env, logs, logs) }()

			ready := fmt.Sprintf("http://127.0.0.1:%d/health/ready", port)
			client := &http.Client{Timeout: time.Second}
			deadline := time.Now().Add(15 * time.Second)
			for {
				resp, err := client.Get(ready)
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("GET %s never answered 200; log:\n%s", ready, logs.String())
				}
				time.Sleep(20 * time.Millisecond)
			}

			// Ready means the migrations ran before the listener opened.
			db := openMigrateTestDB(t, url)
			if onStart {
				if got := appliedVersions(t, db); len(got) == 0 || got[0] != 1 || !relationExists(t, db, "set_updated_at()") {
					t.Errorf("ready with MIGRATE_ON_START=true, but applied = %v", got)
				}
				wantContains(t, "serve log", logs.String(), "migrate: applied 0001_init")
			} else if relationExists(t, db, "schema_migrations") || relationExists(t, db, "set_updated_at()") {
				t.Errorf("serve without MIGRATE_ON_START applied migrations")
			}
			if strings.Contains(logs.String(), testDatabasePassword) {
				t.Errorf("serve log contains the database password:\n%s", logs.String())
			}

			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run(serve) = %v, want nil after cancel", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("run(serve) did not return after cancel")
			}
		})
	}
}

func TestMigrateCommandLine(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := newTestDatabase(t)
	env := testEnv(t, url)
	var all strings.Builder // every output, checked for the password at the end
	runMigrateCLI := func(args ...string) (string, error) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		err := run(ctx, append([]string{"migrate"}, args...), env, &stdout, &stderr)
		fmt.Fprintf(&all, "%s\n%s\n%v\n", stdout.String(), stderr.String(), err)
		return stdout.String(), err
	}

	out, err := runMigrateCLI("status")
	mustf(t, err, "migrate status")
	wantLines(t, "migrate status", out, `^VERSION  NAME +APPLIED AT  DURATION$`, `^0001     init +pending$`, `^0002     treatments  pending$`, `^0 applied, 2 pending$`)
	out, err = runMigrateCLI("up")
	mustf(t, err, "migrate up")
	wantLines(t, "migrate up", out, `^applied 0001_init \(\S+\)$`, `^applied 0002_treatments \(\S+\)$`)
	out, err = runMigrateCLI("status")
	mustf(t, err, "migrate status")
	wantLines(t, "migrate status", out, `^VERSION  NAME +APPLIED AT               DURATION$`, `^0001     init +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  \S+$`,
		`^0002     treatments  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  \S+$`, `^2 applied, 0 pending$`)
	out, err = runMigrateCLI("down", "2")
	mustf(t, err, "migrate down 2")
	wantLines(t, "migrate down 2", out, `^rolled back 0002_treatments \(\S+\)$`, `^rolled back 0001_init \(\S+\)$`)
	out, err = runMigrateCLI("help")
	mustf(t, err, "migrate help")
	wantContains(t, "migrate help", out, "force VERSION", "--allow-drift")

	for _, args := range [][]string{
		{}, {"sideways"}, {"up", "now"}, {"up", "--bogus"}, {"down", "0"}, {"down", "-1"}, {"down", "x"}, {"down", "1", "2"},
		{"force"}, {"force", "x"}, {"new"}, {"new", "Bad-Name"}, {"status", "--allow-drift"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(ctx, append([]string{"migrate"}, args...), env, &stdout, &stderr)
		var ue *usageError
		if !errors.As(err, &ue) || exitCode(err) != 2 {
			t.Errorf("run(migrate %q) = %v, want a usage error (exit 2)", args, err)
		}
		wantContains(t, fmt.Sprintf("stderr of migrate %q", args), stderr.String(), "usage: zenspa")
	}

	var stdout, stderr bytes.Buffer
	err = run(ctx, []string{"migrate", "status"}, testEnv(t, ""), &stdout, &stderr)
	var ce *configError
	if !errors.As(err, &ce) || exitCode(err) != 2 {
		t.Errorf("run(migrate status) without DATABASE_URL = %v, want a configuration error (exit 2)", err)
	}

	// Connection failures name the target, never the password.
	for _, bad := range []string{
		"postgres://zenspa_test:" + testDatabasePassword + "@127.0.0.1:1/zenspa?sslmode=disable",
		"postgres://zenspa:wrong-secret@127.0.0.1:1/zenspa?sslmode=disable",
	} {
		stdout.Reset()
		stderr.Reset()
		err := run(ctx, []string{"migrate", "up"}, testEnv(t, bad), &stdout, &stderr)
		wantErr(t, "migrate up on a bad target", err, "cannot connect to PostgreSQL at host 127.0.0.1")
		if exitCode(err) != 1 {
			t.Errorf("exitCode(%v) = %d, want 1", err, exitCode(err))
		}
		fmt.Fprintf(&all, "%s\n%s\n%v\n", stdout.String(), stderr.String(), err)
	}
	for _, secret := range []string{testDatabasePassword, "wrong-secret"} {
		if strings.Contains(all.String(), secret) {
			t.Errorf("migrate output contains %q:\n%s", secret, all.String())
		}
	}
}

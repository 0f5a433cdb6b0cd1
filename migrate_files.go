package main

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/lib/pq"
)

// The migration files: reading and checking schema/, and creating the next
// pair for `zenspa migrate new`. Applying them is migrate.go.

// embeddedSchema holds schema/*.sql, built into the binary. It is a
// package-level variable only because go:embed requires one; nothing writes
// to it.
//
//go:embed schema/*.sql
var embeddedSchema embed.FS

// builtinMigrations returns the embedded files rooted at schema/, the form
// loadMigrations reads.
func builtinMigrations() fs.FS {
	// fs.Sub fails only for an invalid path name, and "schema" is valid.
	sub, _ := fs.Sub(embeddedSchema, "schema")
	return sub
}

// migration is one numbered schema change: its up file and, when it can be
// rolled back, its down file.
type migration struct {
	version  int64
	name     string // the short name: "init" in 0001_init.up.sql
	label    string // the file prefix: "0001_init"
	upSQL    string
	downSQL  string
	hasDown  bool
	checksum string // SHA-256 of the up file, hex
	upNoTx   bool   // the up file starts with noTransactionMarker
	downNoTx bool   // the down file starts with noTransactionMarker
}

// upFile is the name of the up file.
func (m migration) upFile() string { return m.label + ".up.sql" }

// downFile is the name of the down file, which may not exist (see hasDown).
func (m migration) downFile() string { return m.label + ".down.sql" }

// migrationFileName is the only accepted name: at least four digits, a short
// lower-case name, the direction.
var migrationFileName = regexp.MustCompile(`^([0-9]{4,})_([a-z0-9][a-z0-9_]*)\.(up|down)\.sql$`)

// migrationNamePattern is what a NAME may look like, in file names and in
// `migrate new NAME`.
var migrationNamePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_]*$`)

// noTransactionMarker, as the first line of a file, makes it run outside a
// transaction (for CREATE INDEX CONCURRENTLY and the like). Such a file holds
// exactly one statement.
const noTransactionMarker = "zenspa:no-transaction"

// loadMigrations reads every .sql file at the root of fsys and returns the
// migrations in version order. Files that do not fit together (a bad name, a
// number used twice, an up/down pair whose names differ, a down file without
// its up file) are all reported in one error that names them; other files
// (a README, say) are ignored.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	type pair struct{ ups, downs []string }
	byVersion := make(map[int64]*pair)
	var problems []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".sql") {
			continue
		}
		m := migrationFileName.FindStringSubmatch(name)
		if m == nil {
			problems = append(problems, fmt.Sprintf("%s: name does not match NNNN_name.up.sql or NNNN_name.down.sql (NNNN at least 4 digits; name in a-z, 0-9 and _)", name))
			continue
		}
		v, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || v == 0 {
			problems = append(problems, fmt.Sprintf("%s: the number must be from 0001 to %d", name, int64(1<<63-1)))
			continue
		}
		p := byVersion[v]
		if p == nil {
			p = &pair{}
			byVersion[v] = p
		}
		if m[3] == "up" {
			p.ups = append(p.ups, name)
		} else {
			p.downs = append(p.downs, name)
		}
	}

	var out []migration
	for v, p := range byVersion {
		switch {
		case len(p.ups) > 1 || len(p.downs) > 1:
			problems = append(problems, fmt.Sprintf("%s: two migrations share the number %04d; give each its own", strings.Join(append(p.ups, p.downs...), ", "), v))
		case len(p.ups) == 0:
			problems = append(problems, fmt.Sprintf("%s: down file without its up file", p.downs[0]))
		case len(p.downs) == 1 && strings.TrimSuffix(p.ups[0], ".up.sql") != strings.TrimSuffix(p.downs[0], ".down.sql"):
			problems = append(problems, fmt.Sprintf("%s, %s: the up and down files of a migration must have the same name", p.ups[0], p.downs[0]))
		default:
			m, err := readMigration(fsys, v, p.ups[0], p.downs)
			if err != nil {
				return nil, err
			}
			out = append(out, m)
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return nil, fmt.Errorf("bad migration files, nothing was done:\n  %s", strings.Join(problems, "\n  "))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

// readMigration reads the up file and the down file, if any, of version v.
func readMigration(fsys fs.FS, v int64, upName string, downNames []string) (migration, error) {
	label := strings.TrimSuffix(upName, ".up.sql")
	m := migration{version: v, label: label, name: label[strings.IndexByte(label, '_')+1:]}
	up, err := fs.ReadFile(fsys, upName)
	if err != nil {
		return migration{}, fmt.Errorf("read %s: %w", upName, err)
	}
	sum := sha256.Sum256(up)
	m.checksum = hex.EncodeToString(sum[:])
	m.upSQL, m.upNoTx = sqlBody(up)
	if len(downNames) == 1 {
		down, err := fs.ReadFile(fsys, downNames[0])
		if err != nil {
			return migration{}, fmt.Errorf("read %s: %w", downNames[0], err)
		}
		m.downSQL, m.downNoTx = sqlBody(down)
		m.hasDown = true
	}
	return m, nil
}

// sqlBody returns a file's text as PostgreSQL gets it (without a byte-order
// mark, which it would reject) and whether its first line is the
// no-transaction marker.
func sqlBody(data []byte) (body string, noTx bool) {
	body = strings.TrimPrefix(string(data), "\ufeff")
	first, _, _ := strings.Cut(body, "\n")
	first = strings.TrimSpace(first)
	if rest, ok := strings.CutPrefix(first, "--"); ok && strings.TrimSpace(rest) == noTransactionMarker {
		noTx = true
	}
	return body, noTx
}

// migrationError is a file PostgreSQL refused: the file, where in it, what
// PostgreSQL said, and what that left behind.
type migrationError struct {
	file    string
	body    string // the file's text
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
	if line, col, ok := filePosition(e.body, pqErr.Position); ok {
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

// filePosition turns PostgreSQL's error position (1-based, in characters
// from the start of body) into a line and column of the file.
func filePosition(body string, position string) (line, col int, ok bool) {
	pos, err := strconv.Atoi(position)
	if err != nil || pos < 1 {
		return 0, 0, false
	}
	i := 0
	for n := 1; n < pos && i < len(body); n++ {
		_, size := utf8.DecodeRuneInString(body[i:])
		i += size
	}
	lineStart := strings.LastIndexByte(body[:i], '\n') + 1
	return 1 + strings.Count(body[:i], "\n"), 1 + utf8.RuneCountInString(body[lineStart:i]), true
}

// zenspaModule is the module path that identifies a zenspa source checkout.
const zenspaModule = "github.com/zenspa/zenspa"

// createMigration writes the next-numbered, empty up/down pair into
// workDir/schema. It works only in a source checkout: the migrations of a
// built binary are embedded and cannot change.
func createMigration(workDir, name string, out io.Writer) error {
	dir := filepath.Join(workDir, "schema")
	mod, err := os.ReadFile(filepath.Join(workDir, "go.mod"))
	info, dirErr := os.Stat(dir)
	if err != nil || dirErr != nil || !info.IsDir() || !declaresModule(mod, zenspaModule) {
		return errors.New("migrate new works only in a zenspa source checkout: run it from the repository root, where go.mod and schema/ are " +
			"(a built binary carries its migrations inside and cannot add any)")
	}
	existing, err := loadMigrations(os.DirFS(dir))
	if err != nil {
		return err
	}
	next := int64(1)
	if len(existing) > 0 {
		next = existing[len(existing)-1].version + 1
	}
	label := fmt.Sprintf("%04d_%s", next, name)
	files := []struct{ name, text string }{
		{label + ".up.sql", fmt.Sprintf("-- %s: the change. It runs in one transaction together with its row in\n"+
			"-- schema_migrations. For a statement that cannot run in a transaction (CREATE\n"+
			"-- INDEX CONCURRENTLY), make the first line of this file: -- %s\n"+
			"-- and keep the file to that one statement.\n", label, noTransactionMarker)},
		{label + ".down.sql", fmt.Sprintf("-- %s: undo the up file. Delete this file if the change cannot be undone;\n"+
			"-- `zenspa migrate down` then refuses to roll it back.\n", label)},
	}
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		// O_EXCL: never overwrite a file someone already wrote.
		fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fmt.Errorf("create %s: %w", filepath.Join("schema", f.name), unwrapPathError(err))
		}
		_, err = io.WriteString(fh, f.text)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", filepath.Join("schema", f.name), err)
		}
		fmt.Fprintf(out, "created %s\n", filepath.Join("schema", f.name))
	}
	return nil
}

// declaresModule reports whether a go.mod declares module path.
func declaresModule(gomod []byte, path string) bool {
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == path {
			return true
		}
	}
	return false
}

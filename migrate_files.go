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
)

// The migration files: reading and checking schema/, splitting a
// no-transaction file into statements, and creating the next pair for
// `zenspa migrate new`. Applying them is migrate.go.

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
// transaction, statement by statement (for CREATE INDEX CONCURRENTLY and the
// like).
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

// statement is one statement of a no-transaction file and the byte offset in
// the file where it starts, to place PostgreSQL's error position in the file.
type statement struct {
	sql    string
	offset int
}

// splitStatements cuts a file into statements at the semicolons that are not
// inside a comment, a quoted string or identifier, or a dollar-quoted body.
// A file that runs outside a transaction needs this: PostgreSQL runs a
// multi-statement string as one implicit transaction, where CREATE INDEX
// CONCURRENTLY is refused. Stretches holding only comments are dropped.
func splitStatements(body string) []statement {
	var out []statement
	start := -1 // where the current statement's first token starts
	emit := func(end int) {
		if start >= 0 {
			out = append(out, statement{sql: body[start:end], offset: start})
		}
		start = -1
	}
	for i := 0; i < len(body); {
		c := body[i]
		switch {
		case c == '-' && strings.HasPrefix(body[i:], "--"):
			i = skipPast(body, i, "\n")
			continue
		case c == '/' && strings.HasPrefix(body[i:], "/*"):
			i = skipBlockComment(body, i)
			continue
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
			continue
		case c == ';':
			emit(i + 1) // a lone ; (start < 0) is no statement
			i++
			continue
		}
		if start < 0 {
			start = i
		}
		switch {
		case c == '\'':
			// E'…' strings take backslash escapes; standard strings do not.
			escapes := i > 0 && (body[i-1] == 'e' || body[i-1] == 'E') && (i < 2 || !isIdentByte(body[i-2]))
			i = skipQuoted(body, i, '\'', escapes)
		case c == '"':
			i = skipQuoted(body, i, '"', false)
		case c == '$' && (i == 0 || !isIdentByte(body[i-1])):
			if tag := dollarTag(body[i:]); tag != "" {
				i = skipPast(body, i+len(tag), tag)
			} else {
				i++
			}
		default:
			i++
		}
	}
	emit(len(body))
	return out
}

// skipPast returns the index just after the first end found after i, or the
// end of s.
func skipPast(s string, i int, end string) int {
	if j := strings.Index(s[i:], end); j >= 0 {
		return i + j + len(end)
	}
	return len(s)
}

// skipBlockComment returns the index after the /* … */ comment at i; such
// comments nest in PostgreSQL.
func skipBlockComment(s string, i int) int {
	depth := 0
	for i < len(s) {
		switch {
		case strings.HasPrefix(s[i:], "/*"):
			depth++
			i += 2
		case strings.HasPrefix(s[i:], "*/"):
			depth--
			i += 2
			if depth == 0 {
				return i
			}
		default:
			i++
		}
	}
	return i
}

// skipQuoted returns the index after the string or identifier opened by the
// quote at i. A doubled quote is part of it, as is a backslash-escaped one
// when escapes is set.
func skipQuoted(s string, i int, quote byte, escapes bool) int {
	for i++; i < len(s); i++ {
		switch {
		case escapes && s[i] == '\\':
			i++
		case s[i] == quote && i+1 < len(s) && s[i+1] == quote:
			i++
		case s[i] == quote:
			return i + 1
		}
	}
	return i
}

// dollarTag returns the $tag$ or $$ that opens a dollar-quoted string at the
// start of s, or "" when s starts with another use of $ (such as $1).
func dollarTag(s string) string {
	for j := 1; j < len(s); j++ {
		c := s[j]
		switch {
		case c == '$':
			return s[:j+1]
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80:
		case c >= '0' && c <= '9' && j > 1:
		default:
			return ""
		}
	}
	return ""
}

// isIdentByte reports whether c can be part of an unquoted identifier.
func isIdentByte(c byte) bool {
	return c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
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
			"-- schema_migrations. For statements that cannot run in a transaction (CREATE\n"+
			"-- INDEX CONCURRENTLY), make the first line of this file: -- %s\n", label, noTransactionMarker)},
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

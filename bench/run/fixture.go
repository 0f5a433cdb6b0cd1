package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The bench database: zenspa's schema and a menu of seedRows treatments,
// made anew for every run, so that every run meets the same table. zenspa
// and the baselines all use it, and the probe storm counts in it.

const (
	seedRows = 10_000
	deepRow  = 9_000 // the deep page starts after this row of the menu
	idEvery  = 10    // the by-id cases ask for every tenth row
)

// seedSQL fills the menu: names unique whatever their case (the number
// makes them so), in mixed case and some Vietnamese, spread over the
// alphabet; every column within its constraint; one in ten inactive.
const seedSQL = `INSERT INTO treatments (id, name, description, duration_minutes, price, currency, active, created_at, updated_at)
SELECT gen_random_uuid(),
       (ARRAY['Massage', 'gội đầu dưỡng sinh', 'FACIAL', 'Chăm sóc da mặt', 'Hot Stone',
              'Xông hơi thảo dược', 'aromatherapy', 'Tẩy tế bào chết', 'Foot Reflexology', 'Bấm huyệt'])[1 + i % 10]
         || ' ' || (ARRAY['Thái', 'cổ điển', 'Deluxe', 'express', 'SIGNATURE', 'đá nóng', 'Spa', 'cho Cặp Đôi'])[1 + i / 10 % 8]
         || ' ' || i,
       'Liệu trình số ' || i || ': thư giãn, phục hồi, chăm sóc toàn thân.',
       5 * (1 + i % 96),
       10000 * (i % 250),
       CASE WHEN i % 9 = 0 THEN 'USD' ELSE 'VND' END,
       i % 10 <> 3,
       now() - make_interval(mins => i),
       now() - make_interval(mins => i)
FROM generate_series(1, :rows) AS i;
ANALYZE treatments;
`

// deletePosted removes the rows create-treatment.lua adds, and vacuums so
// that the next run meets the seeded table, with no autovacuum still to
// come (it would add to the probe storm's count).
const deletePosted = `DELETE FROM treatments WHERE name LIKE 'Bench %';
VACUUM ANALYZE treatments;
`

// fixture is the bench database as the cases find it.
type fixture struct {
	url     string   // zenspa's and the baselines' DATABASE_URL
	ids     []string // the rows the by-id cases ask for
	idsFile string   // the same, one a line, for treatment-by-id.lua
	deepKey []string // the sort key, lower(name) and id, of row deepRow
	cursor  string   // zenspa's cursor after row deepRow, for deep-page.lua
	token   string   // the project's access token, for me-token.lua
}

// prepareDatabase drops and creates the database of o.databaseURL, runs
// `zenspa migrate up` on it and seeds it. Its name must end in _bench:
// the harness destroys it.
func prepareDatabase(ctx context.Context, o options, dir string) (*fixture, error) {
	name, adminURL, err := statsTarget(o.databaseURL)
	if err != nil {
		return nil, err
	}
	if !strings.HasSuffix(name, "_bench") {
		return nil, fmt.Errorf("-database-url names database %q: the benchmark drops and creates it, so its name must end in _bench", name)
	}
	// Each statement on its own: DROP DATABASE cannot run in a transaction.
	// FORCE ends the sessions a killed run may have left.
	if _, err := psql(ctx, adminURL, `DROP DATABASE IF EXISTS :"db" WITH (FORCE);
CREATE DATABASE :"db";
`, "db="+name); err != nil {
		return nil, err
	}

	env, err := zenspaEnv(o, dir)
	if err != nil {
		return nil, err
	}
	mctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	migrate := exec.CommandContext(mctx, o.zenspa, "migrate", "up")
	migrate.Env = env
	if out, err := migrate.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("zenspa migrate up: %w\n%s", err, out)
	}
	if _, err := psql(ctx, o.databaseURL, seedSQL, "rows="+strconv.Itoa(seedRows)); err != nil {
		return nil, err
	}

	// The menu in the lists' order: every idEvery-th row for the by-id
	// cases, and the sort key of row deepRow.
	out, err := psql(ctx, o.databaseURL, "SELECT lower(name), id FROM treatments ORDER BY lower(name), id;\n")
	if err != nil {
		return nil, err
	}
	rows := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(rows) != seedRows {
		return nil, fmt.Errorf("the bench database holds %d treatments, want %d", len(rows), seedRows)
	}
	fx := &fixture{url: o.databaseURL, idsFile: filepath.Join(dir, "ids.txt")}
	fx.deepKey = strings.Split(rows[deepRow-1], "\t")
	for i := idEvery - 1; i < len(rows); i += idEvery {
		_, id, _ := strings.Cut(rows[i], "\t")
		fx.ids = append(fx.ids, id)
	}
	return fx, os.WriteFile(fx.idsFile, []byte(strings.Join(fx.ids, "\n")+"\n"), 0o600)
}

// findCursor pages through zenspa's menu at base, 100 rows a page, to the
// cursor after row deepRow, and checks that it holds the sort key
// PostgreSQL gave for that row: then the deep page is the same one on
// zenspa and on the baselines, which read the key out of the cursor.
func (fx *fixture) findCursor(ctx context.Context, base string) error {
	const pageSize = 100
	cursor := ""
	for read := 0; read < deepRow; read += pageSize {
		target := base + "/api/v1/treatments?limit=" + strconv.Itoa(pageSize)
		if cursor != "" {
			target += "&cursor=" + url.QueryEscape(cursor)
		}
		var page struct {
			Data       []json.RawMessage `json:"data"`
			Pagination struct {
				NextCursor *string `json:"next_cursor"`
			} `json:"pagination"`
		}
		if err := getJSON(ctx, target, &page); err != nil {
			return err
		}
		if len(page.Data) != pageSize || page.Pagination.NextCursor == nil {
			return fmt.Errorf("GET %s: %d rows and next_cursor %v, want %d and a cursor", target, len(page.Data), page.Pagination.NextCursor, pageSize)
		}
		cursor = *page.Pagination.NextCursor
	}
	payload, _, _ := strings.Cut(cursor, ".")
	b, err := base64.RawURLEncoding.DecodeString(payload)
	var fields []string
	if err != nil || json.Unmarshal(b, &fields) != nil || len(fields) != 3 || !slices.Equal(fields[1:], fx.deepKey) {
		return fmt.Errorf("zenspa's cursor after row %d is %q, want one holding %q", deepRow, b, fx.deepKey)
	}
	fx.cursor = cursor
	return nil
}

// prewarm reads every id of the by-id cases once from zenspa at base, a
// few at a time, so that its cache holds them all.
func (fx *fixture) prewarm(ctx context.Context, base string) error {
	ids := make(chan string)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	wg.Add(len(errs))
	for w := range errs {
		go func() {
			defer wg.Done()
			for id := range ids {
				if errs[w] == nil {
					var v any
					errs[w] = getJSON(ctx, base+"/api/v1/treatments/"+id, &v)
				}
			}
		}()
	}
	for _, id := range fx.ids {
		ids <- id
	}
	close(ids)
	wg.Wait()
	return errors.Join(errs...)
}

// wrkEnv is what the cases' wrk scripts read from the environment.
func (fx *fixture) wrkEnv() []string {
	return []string{"BENCH_IDS=" + fx.idsFile, "BENCH_CURSOR=" + fx.cursor, "BENCH_TOKEN=" + fx.token}
}

// exec runs statements on the bench database.
func (fx *fixture) exec(ctx context.Context, statements string) error {
	_, err := psql(ctx, fx.url, statements)
	return err
}

// psql runs a script on the database of dsn, each statement in a
// transaction of its own, stopping at the first error, with the psql
// variables vars (NAME=value), and returns the rows printed, one a line,
// columns separated by a tab.
func psql(ctx context.Context, dsn, script string, vars ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	args := []string{"-X", "-w", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1"}
	for _, v := range vars {
		args = append(args, "-v", v)
	}
	cmd := exec.CommandContext(ctx, "psql", append(args, "-d", dsn)...)
	cmd.Stdin = strings.NewReader(script)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=5")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("psql: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// getJSON GETs target and decodes its 200 answer into v.
func getJSON(ctx context.Context, target string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s = %d: %s", target, resp.StatusCode, body)
	}
	return json.Unmarshal(body, v)
}

package main

import (
	"bytes"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The browser test opens /docs and /redoc in headless Chromium, driven
// through chromedriver's W3C WebDriver HTTP API, with the UI packages served
// from tools/node_modules by a local asset server standing in for the CDN.

// chromiumBinary is where Debian's chromium package puts the browser.
const chromiumBinary = "/usr/bin/chromium"

// artifactsDir keeps the screenshots of the last run (git-ignored).
const artifactsDir = "testdata/artifacts"

// TestDocsBrowser checks that each page shows every documented path and logs
// no console error, that a tampered asset is refused (the SRI hashes are
// enforced, not decoration), and that Swagger UI's Try it out reaches the
// live server under the page's Content-Security-Policy, with the token its
// Authorize dialog was given.
func TestDocsBrowser(t *testing.T) {
	requireTool(t, chromiumBinary, "make services-test")
	driverPath := requireTool(t, "chromedriver", "make services-test")
	requireRedis(t)
	modules := toolsModules(t)
	if err := os.MkdirAll(artifactsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	paths := documentedPaths(t)
	dbURL := newMigratedDatabase(t) // Try it out writes a treatment

	p := newProject(t) // Try it out writes as a manager
	assets := startAssetServer(t, modules, false)
	s, _ := newTestServer(t, testConfig(t, dbURL, append(p.env(), "DOCS_ASSET_BASE_URL="+assets.URL)...))
	app := startTestServer(t, s)
	tampered := startAssetServer(t, modules, true)
	st, _ := newTestServer(t, testConfig(t, dbURL, "DOCS_ASSET_BASE_URL="+tampered.URL))
	tamperedApp := startTestServer(t, st)

	wd := startChromeDriver(t, driverPath)

	for _, page := range []string{"/docs", "/redoc"} {
		name := strings.TrimPrefix(page, "/")
		t.Run(name, func(t *testing.T) {
			b := wd.newSession(t)
			b.open(t, app.URL+page)
			text, missing := b.waitForPaths(t, paths, 30*time.Second)
			b.screenshot(t, filepath.Join(artifactsDir, name+".png"))
			if len(missing) > 0 {
				t.Errorf("%s does not show %q after 30 s; page text:\n%s", page, missing, text)
			}
			for _, e := range b.consoleLog(t) {
				switch {
				case e.Level == "SEVERE" && refusedOnPurpose.MatchString(e.Message):
					t.Logf("%s console: refused on purpose: %s", page, e.Message)
				case e.Level == "SEVERE":
					t.Errorf("%s logged a console error: %s", page, e.Message)
				default:
					t.Logf("%s console %s: %s", page, e.Level, e.Message)
				}
			}
			if got := assets.hits(); got == 0 {
				t.Errorf("%s loaded nothing from DOCS_ASSET_BASE_URL %s", page, assets.URL)
			}
		})

		t.Run(name+" with a tampered asset", func(t *testing.T) {
			b := wd.newSession(t)
			b.open(t, tamperedApp.URL+page)
			// The refusal is logged at once; give a UI that somehow ran the
			// time it would need to draw.
			_, missing := b.waitForPaths(t, paths, 3*time.Second)
			b.screenshot(t, filepath.Join(artifactsDir, name+"-tampered.png"))
			if len(missing) == 0 {
				t.Errorf("%s drew the documentation with a tampered asset: SRI is not enforced", page)
			}
			refused := false
			for _, e := range b.consoleLog(t) {
				if e.Level == "SEVERE" && strings.Contains(e.Message, "integrity") {
					refused = true
				}
			}
			if !refused {
				t.Errorf("%s with a tampered asset logged no integrity error", page)
			}
		})
	}

	t.Run("docs try it out", func(t *testing.T) {
		tryItOutCreate(t, wd.newSession(t), app.URL, dbURL, p.token(t, algES256, p.manager()))
	})
}

// tryItOutCreate drives Swagger UI as a reader would: it expands POST
// /api/v1/treatments, clicks Try it out, writes a body of its own into the
// editor and clicks Execute. Without a token the page must show the
// server's 401 with its challenge, and nothing is stored. Then it enters
// token, a manager's, in the Authorize dialog of the bearerAuth scheme and
// clicks Execute again: the page must show the server's 201 with the new
// treatment and its Location, and the treatment must be in the database.
func tryItOutCreate(t *testing.T, b *browser, base, dbURL, token string) {
	const op = "#operations-Treatments-createTreatment"
	const name = "Xông hơi thảo dược 30 phút"
	db, err := sql.Open("postgres", dbURL)
	mustf(t, err, "open the test database")
	defer db.Close()
	b.open(t, base+"/docs")
	b.click(t, op+" .opblock-summary-control")
	b.click(t, op+" .try-out__btn")
	b.replaceText(t, op+" textarea.body-param__text", `{"name": "`+name+`", "duration_minutes": 30, "price": 150000}`)

	// Without authorizing first: the server's 401, and nothing stored.
	b.click(t, op+" button.execute")
	shown, ok := b.waitForText(t, op+" .responses-wrapper", "Server response", 15*time.Second)
	if ok {
		shown, ok = b.waitForText(t, op+" .live-responses-table", string(codeUnauthorized), 5*time.Second)
	}
	b.screenshot(t, filepath.Join(artifactsDir, "docs-try-it-out-401.png"))
	if !ok {
		t.Fatalf("Swagger UI shows no %s after Execute without a token; it shows:\n%s", codeUnauthorized, shown)
	}
	if status := strings.TrimSpace(b.textOf(t, op+" .live-responses-table tbody .response-col_status")); status != "401" {
		t.Errorf("Swagger UI shows the status of Execute without a token as %q, want 401:\n%s", status, shown)
	}
	if !regexp.MustCompile(`(?im)^\s*www-authenticate: Bearer\s*$`).MatchString(shown) {
		t.Errorf("Swagger UI's 401 shows no WWW-Authenticate: Bearer header:\n%s", shown)
	}
	var stored int
	mustf(t, db.QueryRow("SELECT count(*) FROM treatments WHERE name = $1", name).Scan(&stored), "count treatments named %q", name)
	if stored != 0 {
		t.Errorf("Execute without a token stored %d treatments named %q, want none", stored, name)
	}
	for _, e := range b.consoleLog(t) {
		if e.Level == "SEVERE" && !unauthorizedOnPurpose.MatchString(e.Message) {
			t.Errorf("/docs logged a console error during Try it out without a token: %s", e.Message)
		}
	}

	// Authorize: the bearerAuth dialog takes the token alone, without "Bearer ".
	b.click(t, ".auth-wrapper button.authorize")
	b.replaceText(t, `.dialog-ux input[aria-label="auth-bearer-value"]`, token)
	b.click(t, `.dialog-ux button[aria-label="Apply credentials"]`)
	b.element(t, `.dialog-ux button[aria-label="Remove authorization"]`) // shown once the token is taken
	b.screenshot(t, filepath.Join(artifactsDir, "docs-authorize.png"))
	b.click(t, ".dialog-ux button.btn-done")
	b.element(t, ".auth-wrapper button.authorize.locked")

	b.click(t, op+" button.execute")
	// The 401's body names no treatment: the name shows the new answer.
	shown, ok = b.waitForText(t, op+" .live-responses-table", name, 15*time.Second)
	b.screenshot(t, filepath.Join(artifactsDir, "docs-try-it-out.png"))
	if !ok {
		t.Fatalf("Swagger UI shows no answer with %q after Authorize and Execute; it shows:\n%s", name, shown)
	}
	if status := strings.TrimSpace(b.textOf(t, op+" .live-responses-table tbody .response-col_status")); status != "201" {
		t.Errorf("Swagger UI shows the status of Execute as %q, want 201:\n%s", status, shown)
	}
	if url := b.textOf(t, op+" .request-url"); !strings.Contains(url, base+"/api/v1/treatments") {
		t.Errorf("Swagger UI sent the request to %q, want %s/api/v1/treatments", url, base)
	}
	if curl := b.textOf(t, op+" .curl-command"); !strings.Contains(curl, "Authorization: Bearer "+token) {
		t.Errorf("Swagger UI's request does not carry the token given to Authorize:\n%s", curl)
	}
	m := regexp.MustCompile(`(?i)location: /api/v1/treatments/([0-9a-f-]{36})`).FindStringSubmatch(shown)
	if m == nil {
		t.Fatalf("Swagger UI's answer shows no Location header:\n%s", shown)
	}

	// The row exists, as typed into the editor.
	var storedName string
	mustf(t, db.QueryRow("SELECT name FROM treatments WHERE id = $1", m[1]).Scan(&storedName), "read treatment %s", m[1])
	if storedName != name {
		t.Errorf("treatment %s is named %q in the database, want %q", m[1], storedName, name)
	}
	for _, e := range b.consoleLog(t) {
		if e.Level == "SEVERE" {
			t.Errorf("/docs logged a console error during Try it out: %s", e.Message)
		}
	}
}

// unauthorizedOnPurpose is the console error Chromium logs for the 401 that
// Try it out without a token asks for.
var unauthorizedOnPurpose = regexp.MustCompile(`^\S+/api/v1/treatments - Failed to load resource: the server responded with a status of 401 \(Unauthorized\)$`)

// refusedOnPurpose is the one console error the pages may log: ReDoc always
// draws a "by Redocly" logo fetched from its vendor's server, and the page's
// Content-Security-Policy refuses that third-party request (ReDoc then hides
// the image). Anything else the browser reports is a failure.
var refusedOnPurpose = regexp.MustCompile(`^\S+/redoc - Loading the image 'https://cdn\.redoc\.ly/redoc/logo-mini\.svg' violates the following Content Security Policy directive: "img-src data:"\. The action has been blocked\.$`)

// documentedPaths lists the paths in openapi.json.
func documentedPaths(t testing.TB) []string {
	t.Helper()
	var doc struct{ Paths map[string]any }
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for p := range doc.Paths {
		paths = append(paths, p)
	}
	return paths
}

// assetServer serves BASE/PACKAGE@VERSION/FILE from tools/node_modules, the
// layout of the public CDN, with the CORS header the pages' crossorigin
// attribute needs. A tampering server adds a comment to every file it
// serves, which changes no behaviour but every hash.
type assetServer struct {
	*httptest.Server
	mu    sync.Mutex
	count int
}

// hits is how many files the server has served.
func (a *assetServer) hits() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.count
}

// startAssetServer starts an asset server, closed at cleanup.
func startAssetServer(t testing.TB, modules string, tamper bool) *assetServer {
	t.Helper()
	a := &assetServer{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		spec, file, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		pkg, version, _ := strings.Cut(spec, "@")
		var meta struct{ Version string }
		b, err := os.ReadFile(filepath.Join(modules, pkg, "package.json"))
		if err != nil || json.Unmarshal(b, &meta) != nil || meta.Version != version || strings.Contains(file, "..") {
			http.NotFound(w, r)
			return
		}
		body, err := os.ReadFile(filepath.Join(modules, pkg, filepath.FromSlash(file)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		if tamper {
			body = append(body, "\n/* tampered */\n"...)
		}
		a.mu.Lock()
		a.count++
		a.mu.Unlock()
		contentType := "text/javascript"
		if strings.HasSuffix(file, ".css") {
			contentType = "text/css"
		}
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Access-Control-Allow-Origin", "*")
		_, _ = w.Write(body)
	}))
	t.Cleanup(a.Close)
	return a
}

// webDriver is a chromedriver process we started, at base.
type webDriver struct {
	base   string
	client *http.Client
}

// startChromeDriver starts chromedriver on a free port and waits until it
// is ready; it is killed (by its PID) at cleanup, after the sessions end.
func startChromeDriver(t *testing.T, path string) *webDriver {
	t.Helper()
	port := freePort(t)
	logPath := filepath.Join(t.TempDir(), "chromedriver.log")
	cmd := exec.Command(path, "--port="+strconv.Itoa(port), "--log-path="+logPath)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromedriver: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("chromedriver log (last 4 KiB):\n%s", b[max(0, len(b)-4096):])
			}
		}
	})
	wd := &webDriver{base: fmt.Sprintf("http://127.0.0.1:%d", port), client: &http.Client{Timeout: 60 * time.Second}}
	deadline := time.Now().Add(15 * time.Second)
	for {
		var status struct{ Ready bool }
		if err := wd.call(http.MethodGet, "/status", nil, &status); err == nil && status.Ready {
			return wd
		}
		if time.Now().After(deadline) {
			t.Fatalf("chromedriver on port %d was not ready after 15 s", port)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// call sends one WebDriver command and decodes the "value" of the answer
// into out (when not nil). A WebDriver error comes back as an error.
func (wd *webDriver) call(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, wd.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := wd.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var answer struct{ Value json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		return fmt.Errorf("%s %s: %d, undecodable answer: %v", method, path, resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error, Message string }
		_ = json.Unmarshal(answer.Value, &e)
		return fmt.Errorf("%s %s: %d %s: %s", method, path, resp.StatusCode, e.Error, e.Message)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(answer.Value, out)
}

// browser is one WebDriver session: one fresh Chromium.
type browser struct {
	wd *webDriver
	id string
}

// newSession starts a headless Chromium with a profile of its own and its
// console log recorded; the session ends at cleanup. The networking flags
// keep Chromium from calling home, which this machine's closed network
// answers with refusals that would show up as errors.
func (wd *webDriver) newSession(t *testing.T) *browser {
	t.Helper()
	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--window-size=1280,1600",
		"--user-data-dir=" + t.TempDir(),
	}
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName":        "chrome",
		"goog:chromeOptions": map[string]any{"binary": chromiumBinary, "args": args},
		"goog:loggingPrefs":  map[string]string{"browser": "ALL"},
	}}}
	var session struct{ SessionID string }
	if err := wd.call(http.MethodPost, "/session", caps, &session); err != nil {
		t.Fatalf("new WebDriver session: %v", err)
	}
	b := &browser{wd: wd, id: session.SessionID}
	t.Cleanup(func() { _ = wd.call(http.MethodDelete, "/session/"+b.id, nil, nil) })
	return b
}

// open navigates to target and waits for its load event.
func (b *browser) open(t testing.TB, target string) {
	t.Helper()
	if err := b.wd.call(http.MethodPost, "/session/"+b.id+"/url", map[string]string{"url": target}, nil); err != nil {
		t.Fatalf("open %s: %v", target, err)
	}
}

// text is the rendered text of the page, as a reader sees it. Swagger UI
// puts zero-width spaces into paths as line-break hints; they are removed.
func (b *browser) text(t testing.TB) string {
	t.Helper()
	var text string
	script := map[string]any{"script": "return document.body ? document.body.innerText : '';", "args": []any{}}
	if err := b.wd.call(http.MethodPost, "/session/"+b.id+"/execute/sync", script, &text); err != nil {
		t.Fatalf("read the page text: %v", err)
	}
	return strings.ReplaceAll(text, "\u200b", "")
}

// waitForPaths polls the page text until it shows every path, or limit
// passes, and returns the last text and the paths it lacks.
func (b *browser) waitForPaths(t testing.TB, paths []string, limit time.Duration) (string, []string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		text := b.text(t)
		var missing []string
		for _, p := range paths {
			if !showsPath(text, p) {
				missing = append(missing, p)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			return text, missing
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// element is the WebDriver reference of the first element matching css,
// waiting up to 15 s for the page to draw it.
func (b *browser) element(t testing.TB, css string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var found map[string]string
		err := b.wd.call(http.MethodPost, "/session/"+b.id+"/element", map[string]string{"using": "css selector", "value": css}, &found)
		if err == nil {
			for _, ref := range found { // one member, named by the W3C spec
				return ref
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no element %s after 15 s: %v", css, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// click clicks the element matching css, scrolled into view.
func (b *browser) click(t testing.TB, css string) {
	t.Helper()
	if err := b.wd.call(http.MethodPost, "/session/"+b.id+"/element/"+b.element(t, css)+"/click", map[string]any{}, nil); err != nil {
		t.Fatalf("click %s: %v", css, err)
	}
}

// replaceText selects all the text of the field matching css and types text
// over it, key by key, as a user would: the UI sees every change.
func (b *browser) replaceText(t testing.TB, css, text string) {
	t.Helper()
	const ctrl, release, backspace = "\ue009", "\ue000", "\ue003"
	keys := ctrl + "a" + release + backspace + text
	if err := b.wd.call(http.MethodPost, "/session/"+b.id+"/element/"+b.element(t, css)+"/value", map[string]string{"text": keys}, nil); err != nil {
		t.Fatalf("type into %s: %v", css, err)
	}
}

// textOf is the rendered text of the element matching css.
func (b *browser) textOf(t testing.TB, css string) string {
	t.Helper()
	var text string
	if err := b.wd.call(http.MethodGet, "/session/"+b.id+"/element/"+b.element(t, css)+"/text", nil, &text); err != nil {
		t.Fatalf("read the text of %s: %v", css, err)
	}
	return text
}

// waitForText polls the text of the element matching css until it holds
// want, or limit passes, and returns the last text and whether it did.
func (b *browser) waitForText(t testing.TB, css, want string, limit time.Duration) (string, bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		text := b.textOf(t, css)
		if strings.Contains(text, want) || time.Now().After(deadline) {
			return text, strings.Contains(text, want)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// showsPath reports whether text shows path as a path of its own: "/health"
// is not found inside "/api/v1/health" or "/health/db". The UIs write the
// method right before the path ("GET /health", "get/health"), so a method
// name may precede it.
func showsPath(text, path string) bool {
	re := regexp.MustCompile(`(?i)(?:^|\s|get|head)` + regexp.QuoteMeta(path) + `(?:$|\s)`)
	return re.MatchString(text)
}

// logEntry is one line of the browser's console log.
type logEntry struct {
	Level   string
	Message string
}

// consoleLog returns the console lines logged since the last call.
func (b *browser) consoleLog(t testing.TB) []logEntry {
	t.Helper()
	var entries []logEntry
	if err := b.wd.call(http.MethodPost, "/session/"+b.id+"/se/log", map[string]string{"type": "browser"}, &entries); err != nil {
		t.Fatalf("read the console log: %v", err)
	}
	return entries
}

// screenshot saves the visible part of the page as a PNG.
func (b *browser) screenshot(t testing.TB, name string) {
	t.Helper()
	var encoded string
	if err := b.wd.call(http.MethodGet, "/session/"+b.id+"/screenshot", nil, &encoded); err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	png, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	if err := os.WriteFile(name, png, 0o644); err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	t.Logf("screenshot: %s", name)
}

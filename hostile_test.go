package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Hostile input against the zenspa binary over raw TCP: a corpus of
// malformed and abusive requests built from templates × variants, run with
// modest concurrency, and two slowloris clients beside it.
//
// The rule every answer must follow:
//
//   - An answer from one of our handlers (it carries X-Request-ID, which the
//     middleware sets) is a 4xx in the error envelope: Content-Type
//     application/json, a JSON object with status "error", an error code that
//     maps to that status and request_id equal to the header. The one
//     exception is ServeMux's clean-path redirect (301, 307 or 308) for
//     unclean and traversal paths, which we find reasonable: its Location must
//     be a clean path on this host (one leading slash, no dot segments, no
//     backslash), so it can neither leave the site nor reach above its root,
//     and its body is empty or JSON.
//   - An answer from net/http itself, for a request it cannot parse (no
//     X-Request-ID), is a short 4xx (400, 417, 431) in text/plain or with no
//     body. Two 5xx answers are net/http's too and prescribed by the RFCs, so
//     they are allowed only for the cases that provoke them and checked
//     exactly: 505 for a well-formed version other than HTTP/1.x (RFC 9110
//     §15.6.6) and 501 for a Transfer-Encoding other than chunked (RFC 9112
//     §6.1). No handler can intervene; both are sent before routing.
//   - Or the connection is closed without an answer.
//
// Never another 5xx, never a 2xx or 3xx for junk (a case that starts with
// well-formed requests, pipelined, may have those answered 2xx), never a hang
// beyond the server's own timeouts, never "panic" in the process's output.
// Afterwards the process is alive and /health answers 200.

// hostileCase is one abusive exchange.
type hostileCase struct {
	name       string
	payload    []byte
	closeWrite bool // half-close after the payload
	valid      int  // leading well-formed requests, whose answers may be 2xx
	answers    int  // answers to read at most; 0 means valid+1
	badVersion bool // net/http may answer 505
	badTE      bool // net/http may answer 501
}

// hostileOutcome is what the server did with one case.
type hostileOutcome struct {
	c        hostileCase
	statuses []int
	closed   bool // the connection ended before every answer was read
	problems []string
}

// label is the outcome for the distribution: the status of the first answer
// after the valid ones, or "closed".
func (o hostileOutcome) label() string {
	if len(o.statuses) > o.c.valid {
		return strconv.Itoa(o.statuses[o.c.valid])
	}
	return "closed"
}

// TestHostileInput runs the corpus and the slowloris clients against one
// zenspa process with LOG_LEVEL=DEBUG (so that net/http's error log shows),
// checks every answer against the rule above and prints how the cases ended.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	port := strconv.Itoa(freePort(t))
	addr := net.JoinHostPort("127.0.0.1", port)
	p := newProject(t)
	child := startChild(t, zenspaBinary(t), childEnv(t, newMigratedDatabase(t), append(p.env(), "HOST=127.0.0.1", "PORT="+port, "LOG_LEVEL=DEBUG")...))
	child.waitServing(t, "http://"+addr+"/health/ready")

	corpus := hostileCorpus(p.token(t, algES256, p.manager()))
	if len(corpus) < 200 {
		t.Fatalf("hostile corpus has %d cases, want at least 200", len(corpus))
	}

	// The slowloris clients run beside the corpus.
	var slow sync.WaitGroup
	for _, sl := range []struct{ name, prefix string }{
		{"header bytes", "GET /health HTTP/1.1\r\nHost: zenspa\r\nX-Slow: "},
		{"request line bytes", "G"},
	} {
		slow.Add(1)
		go func() {
			defer slow.Done()
			hostileSlowloris(t, addr, sl.name, sl.prefix)
		}()
	}

	start := time.Now()
	outcomes := make([]hostileOutcome, len(corpus))
	next := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				outcomes[i] = hostileExchange(addr, corpus[i])
			}
		}()
	}
	for i := range corpus {
		next <- i
	}
	close(next)
	wg.Wait()
	corpusTime := time.Since(start)
	slow.Wait()

	counts := map[string]int{}
	for _, o := range outcomes {
		counts[o.label()]++
		for _, p := range o.problems {
			t.Errorf("%s: %s", o.c.name, p)
		}
	}
	labels := make([]string, 0, len(counts))
	for l := range counts {
		labels = append(labels, l)
	}
	slices.Sort(labels)
	var dist strings.Builder
	for _, l := range labels {
		fmt.Fprintf(&dist, " %s=%d", l, counts[l])
	}
	t.Logf("%d hostile cases in %v:%s", len(corpus), corpusTime.Round(time.Millisecond), dist.String())

	if !child.running() {
		t.Fatalf("zenspa exited during the hostile input; output:\n%s", child.output())
	}
	if status := faultStatus("http://" + addr + "/health"); status != http.StatusOK {
		t.Errorf("GET /health after the hostile input = %d, want 200", status)
	}
	out := child.output()
	if strings.Contains(strings.ToLower(out), "panic") {
		t.Errorf("zenspa output mentions a panic:\n%s", out)
	}
	if strings.Contains(out, "superfluous") {
		t.Errorf("zenspa output shows a handler writing its answer twice:\n%s", out)
	}
	t.Logf("net/http error log lines: %d", len(logLines(out, "http: ")))
}

// hostileExchange sends one case and checks every answer against the rule.
func hostileExchange(addr string, c hostileCase) hostileOutcome {
	o := hostileOutcome{c: c}
	problem := func(format string, args ...any) { o.problems = append(o.problems, fmt.Sprintf(format, args...)) }
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		problem("dial: %v (is the server still up?)", err)
		return o
	}
	defer conn.Close()
	// Beyond ReadHeaderTimeout (5 s): a server that neither answers nor
	// hangs up by then is stuck.
	_ = conn.SetDeadline(time.Now().Add(8 * time.Second))

	// Write from a goroutine: the server may answer, or hang up, before it
	// has read everything (a 10 MB body refused on its Content-Length).
	written := make(chan struct{})
	go func() {
		defer close(written)
		if _, err := conn.Write(c.payload); err == nil && c.closeWrite {
			_ = conn.(*net.TCPConn).CloseWrite()
		}
	}()
	defer func() {
		conn.Close()
		<-written
	}()

	answers := c.answers
	if answers == 0 {
		answers = c.valid + 1
	}
	br := bufio.NewReader(conn)
	for len(o.statuses) < answers {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				problem("no answer and no hang-up within 8 s")
			}
			o.closed = true
			break
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		o.statuses = append(o.statuses, resp.StatusCode)
		if p := hostileJudge(c, len(o.statuses)-1, resp, body, err); p != "" {
			problem("%s", p)
		}
		if resp.Close {
			break
		}
	}
	if len(o.statuses) < c.valid {
		problem("only %d answers for %d well-formed requests", len(o.statuses), c.valid)
	}
	return o
}

// hostileJudge applies the rule to answer i of case c; it returns what is
// wrong, or "".
func hostileJudge(c hostileCase, i int, resp *http.Response, body []byte, readErr error) string {
	status := resp.StatusCode
	ct := resp.Header.Get("Content-Type")
	id := resp.Header.Get(headerRequestID)
	desc := fmt.Sprintf("answer %d = %d (Content-Type %q) %.200q", i+1, status, ct, body)

	if id == "" { // net/http's own answer: no handler ran
		switch {
		case status == http.StatusHTTPVersionNotSupported && c.badVersion:
			if !strings.Contains(string(body), "unsupported protocol version") {
				return desc + ": not net/http's 505"
			}
		case status == http.StatusNotImplemented && c.badTE:
			if string(body) != "Unsupported transfer encoding" {
				return desc + ": not net/http's 501"
			}
		case status < 400 || status > 499:
			return desc + ": want a 4xx"
		case ct != "" && !strings.HasPrefix(ct, "text/plain"):
			return desc + ": want text/plain or no body from net/http"
		}
		return ""
	}

	if readErr != nil {
		return fmt.Sprintf("%s: body cut short: %v", desc, readErr)
	}
	if i < c.valid {
		if status != http.StatusOK || !json.Valid(body) {
			return desc + ": want 200 JSON for a well-formed request"
		}
		return ""
	}
	switch {
	case status == http.StatusMovedPermanently || status == http.StatusTemporaryRedirect || status == http.StatusPermanentRedirect:
		loc := resp.Header.Get("Location")
		p, _, _ := strings.Cut(loc, "?")
		clean := path.Clean(p)
		if strings.HasSuffix(p, "/") && clean != "/" {
			clean += "/"
		}
		if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.Contains(p, `\`) || clean != p {
			return fmt.Sprintf("%s: redirect to %q, want a clean path on this host", desc, loc)
		}
		if len(body) > 0 && !json.Valid(body) {
			return desc + ": redirect with a body that is not JSON"
		}
		return ""
	case status < 400 || status > 499:
		return desc + ": want a 4xx"
	case ct != "application/json":
		return desc + ": a handler answered without the JSON envelope"
	}
	var env struct {
		Status    string `json:"status"`
		RequestID string `json:"request_id"`
		Error     struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Sprintf("%s: not JSON: %v", desc, err)
	}
	if env.Status != "error" || statusOf[errorCode(env.Error.Code)] != status || env.RequestID != id {
		return desc + ": want the error envelope with a code for this status and request_id = X-Request-ID"
	}
	return ""
}

// hostileSlowloris sends prefix and then one byte a second, and checks that
// the server hangs up within 10 s (ReadHeaderTimeout is 5 s).
func hostileSlowloris(t *testing.T, addr, name, prefix string) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Errorf("slowloris (%s): dial: %v", name, err)
		return
	}
	defer conn.Close()
	start := time.Now()
	stop := make(chan struct{})
	var writer sync.WaitGroup
	writer.Add(1)
	go func() {
		defer writer.Done()
		trickleHeader(conn, prefix, time.Second, stop)
	}()
	_ = conn.SetReadDeadline(start.Add(12 * time.Second))
	n, err := io.Copy(io.Discard, conn) // until the server hangs up
	elapsed := time.Since(start)
	close(stop)
	conn.Close()
	writer.Wait()
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("slowloris (%s): still connected after 12 s, want it cut off within 10 s", name)
	case elapsed > 10*time.Second:
		t.Errorf("slowloris (%s): cut off after %v, want within 10 s", name, elapsed)
	case elapsed < 4*time.Second:
		t.Errorf("slowloris (%s): cut off after %v (%d bytes, %v), want it held until ReadHeaderTimeout (5 s)", name, elapsed, n, err)
	default:
		t.Logf("slowloris (%s): cut off after %v", name, elapsed.Round(10*time.Millisecond))
	}
}

// hostileCorpus builds the cases: tables of templates × variants.
func hostileCorpus(managerToken string) []hostileCase {
	var cases []hostileCase
	add := func(c hostileCase) { cases = append(cases, c) }
	request := func(method, target, version string, headers ...string) []byte {
		var b strings.Builder
		b.WriteString(method + " " + target + " " + version + "\r\nHost: zenspa\r\n")
		for _, h := range headers {
			b.WriteString(h + "\r\n")
		}
		b.WriteString("\r\n")
		return []byte(b.String())
	}
	const valid = "GET /health HTTP/1.1\r\nHost: zenspa\r\n\r\n"

	// Absurd methods, on a route, the root and nowhere.
	methods := []string{"FOO", "get", "G(T", "GET\x00", "\x00", "GÉT", strings.Repeat("M", 5000), "PROPFIND",
		"TRACE", "DELETE", "PUT", "PATCH", "CONNECT", "BREW", "-", `"GET"`, "GET GET"}
	for _, m := range methods {
		for _, target := range []string{"/", "/health", "/nope"} {
			add(hostileCase{name: fmt.Sprintf("method %.20q %s", m, target), payload: request(m, target, "HTTP/1.1")})
		}
	}

	// Absurd versions.
	versions := []struct {
		v          string
		wellFormed bool // HTTP/x.y with x != 1: net/http answers 505
	}{
		{"HTTP/9.9", true}, {"HTTP/0.9", true}, {"HTTP/2.0", true}, {"HTTP/3.0", true},
		{"HTTP/1.1x", false}, {"HTTP/1", false}, {"HTTP/1.10", false}, {"HTTP/11", false}, {"http/1.1", false},
		{"HTTP/1.1 extra", false}, {"", false}, {"HTTP/-.1", false}, {"HTTP/1.1\x00", false}, {"HTTP/1.1\t", false},
		{"HTTPS/1.1", false}, {"HTTP/１.1", false},
	}
	for _, v := range versions {
		for _, target := range []string{"/", "/health"} {
			add(hostileCase{name: fmt.Sprintf("version %q %s", v.v, target), payload: request("GET", target, v.v), badVersion: v.wellFormed})
		}
	}

	// Bad percent-encoding, NUL and control bytes, traversal, odd targets.
	targets := []string{"/%zz", "/%", "/%%", "/%2", "/%g0", "/health%", "/%u0041", "/%00", "/%ff%fe", "/%c0%ae%c0%ae/",
		"/a%2fb", "/%2e%2e/", "/%2e%2e%2fetc%2fpasswd", "/..%2f..%2fetc%2fpasswd", "/..;/", "/%5c..%5c",
		"/../../etc/passwd", "/..", "/./health", "//etc/passwd", "/health/../../../etc/passwd", "/.%2e/",
		`/\..\..\windows\win.ini`, "/....//....//etc/passwd", "//evil.example/", "///evil.example//x", "/health/./db",
		"/a\x00b", "/\x00", "/\x7f", "/\r", "/ /", "/<script>alert(1)</script>", "/nope?%zz", "/nope?\x00",
		"/api/v1/../../../etc/passwd", "/api/v1/health/..%2f..%2f", "*", "example.com:443", "http://[::1",
		"/health#frag", "/%E2%80%AE", "/\xff\xfe", "/" + strings.Repeat("../", 50) + "etc/passwd"}
	for _, target := range targets {
		for _, m := range []string{"GET", "POST"} {
			add(hostileCase{name: fmt.Sprintf("target %s %.40q", m, target), payload: request(m, target, "HTTP/1.1")})
		}
	}

	// Headers net/http must refuse, on a route that would answer 200.
	refused := []string{"X-Nul: a\x00b", "X-\x00: v", "Host: a\x00b", "X Y: z", "NoColon", ": empty-name", "X-CR: a\rb",
		"Host: second", "Content-Length: -1", "Content-Length: abc", "Content-Length: 1, 2",
		"Content-Length: 99999999999999999999", "Content-Length: 1\r\nContent-Length: 2", "\x80\x81: v", "X-DEL\x7f: v",
		"Host: bad host", "Content-Type: application/json\x01"}
	for _, h := range refused {
		add(hostileCase{name: fmt.Sprintf("header %.40q", h), payload: request("GET", "/health", "HTTP/1.1", h)})
	}
	for _, target := range []string{"example.com:443", "/health", "*"} {
		add(hostileCase{name: "CONNECT " + target, payload: request("CONNECT", target, "HTTP/1.1")})
	}
	add(hostileCase{name: "header with leading space", payload: []byte("GET /health HTTP/1.1\r\n Host: zenspa\r\n\r\n")})
	add(hostileCase{name: "no Host in HTTP/1.1", payload: []byte("GET /health HTTP/1.1\r\n\r\n")})

	// Odd but parseable headers, on a path that does not exist.
	odd := []string{"X-Request-ID: ../../etc/passwd", "X-Request-ID: " + strings.Repeat("x", 10000),
		"X-Request-ID: <script>", "X: a\r\n folded", "Origin: null", "Origin: http://evil.example",
		"Cookie: " + strings.Repeat("c=1; ", 1600), "Accept: */*;q=999999999", "Range: bytes=0-99999999999999999",
		"If-None-Match: " + strings.Repeat(`"x",`, 2000), "Authorization: Basic ####", "Expect: 100-continue",
		"Expect: foo", "Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA",
		"Upgrade: websocket\r\nConnection: Upgrade", "Max-Forwards: -1", "X-Forwarded-For: 1.1.1.1, <script>",
		"Accept-Encoding: gzip;q=NaN", "Content-Type: " + strings.Repeat("a/", 5000)}
	for _, h := range odd {
		for _, m := range []string{"GET", "DELETE"} {
			add(hostileCase{name: fmt.Sprintf("odd header %s %.40q", m, h), payload: request(m, "/nope", "HTTP/1.1", h)})
		}
	}
	add(hostileCase{name: "preflight from a foreign origin", payload: request("OPTIONS", "/health", "HTTP/1.1",
		"Origin: http://evil.example", "Access-Control-Request-Method: DELETE")})
	add(hostileCase{name: "preflight from origin null", payload: request("OPTIONS", "/", "HTTP/1.1",
		"Origin: null", "Access-Control-Request-Method: GET")})

	// Bodies: 10 MB declared and sent, chunked, declared and withheld,
	// malformed chunking, and transfer codings net/http does not know.
	tenMB := 10 << 20
	big := make([]byte, tenMB)
	for _, target := range []string{"/", "/health", "/nope"} {
		for _, m := range []string{"POST", "PUT"} {
			add(hostileCase{name: fmt.Sprintf("10 MB body %s %s", m, target),
				payload: append(request(m, target, "HTTP/1.1", "Content-Length: "+strconv.Itoa(tenMB)), big...)})
			add(hostileCase{name: fmt.Sprintf("10 MB chunked %s %s", m, target),
				payload: append(request(m, target, "HTTP/1.1", "Transfer-Encoding: chunked"), hostileChunked(tenMB, 64<<10)...)})
		}
		add(hostileCase{name: "10 MB declared, nothing sent " + target, closeWrite: true,
			payload: request("POST", target, "HTTP/1.1", "Content-Length: "+strconv.Itoa(tenMB))})
		add(hostileCase{name: "10 MB declared with Expect: 100-continue " + target,
			payload: request("POST", target, "HTTP/1.1", "Content-Length: "+strconv.Itoa(tenMB), "Expect: 100-continue")})
		add(hostileCase{name: "one 10 MB chunk " + target,
			payload: append(request("POST", target, "HTTP/1.1", "Transfer-Encoding: chunked"), hostileChunked(tenMB, tenMB)...)})
	}
	badChunks := []string{"zz\r\nabc\r\n0\r\n\r\n", "5\r\nabc\r\n", "-1\r\n\r\n", "ffffffffffffffffff\r\n\r\n",
		"5;" + strings.Repeat("e", 100<<10) + "\r\nabcde\r\n0\r\n\r\n", "3\r\nabc0\r\n\r\n", "0\r\nX-Trailer: \x00\r\n\r\n"}
	for _, chunks := range badChunks {
		for _, target := range []string{"/", "/nope"} {
			add(hostileCase{name: fmt.Sprintf("bad chunking %.20q %s", chunks, target), closeWrite: true,
				payload: append(request("POST", target, "HTTP/1.1", "Transfer-Encoding: chunked"), chunks...)})
		}
	}
	for _, te := range []string{"gzip", "chunked, chunked", "xchunked", "identity", "gzip, chunked", "chunked\r\nTransfer-Encoding: chunked"} {
		add(hostileCase{name: fmt.Sprintf("Transfer-Encoding %q", te), badTE: true, closeWrite: true,
			payload: append(request("POST", "/", "HTTP/1.1", "Transfer-Encoding: "+te), "0\r\n\r\n"...)})
	}
	add(hostileCase{name: "Content-Length and chunked", payload: append(request("POST", "/", "HTTP/1.1",
		"Content-Length: 5", "Transfer-Encoding: chunked"), "0\r\n\r\n"...)})
	add(hostileCase{name: "binary body on a missing path", payload: append(request("POST", "/nope", "HTTP/1.1",
		"Content-Length: 256", "Content-Type: application/json"), hostileRandom(1, 256)...)})

	// Pipelined junk after a well-formed request.
	junk := []string{string(hostileRandom(2, 64)) + "\r\n\r\n", "FOO / HTTP/9.9\r\n\r\n", "GET /%zz HTTP/1.1\r\nHost: z\r\n\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "\r\n\r\n\r\n", "\x00\x00\x00\x00\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: z\r\nContent-Length: 10485760\r\n\r\n", "GET /nope HTTP/1.1\r\nHost: z\r\nX: \x00\r\n\r\n"}
	for i, j := range junk {
		add(hostileCase{name: fmt.Sprintf("pipelined junk #%d", i+1), valid: 1, closeWrite: true, payload: []byte(valid + j),
			badVersion: strings.Contains(j, "HTTP/9.9")})
	}
	add(hostileCase{name: "pipelined junk after two requests", valid: 2, closeWrite: true, payload: []byte(valid + valid + "GARBAGE\r\n\r\n")})
	add(hostileCase{name: "pipelined partial request", valid: 1, closeWrite: true, payload: []byte(valid + "GET / HTTP/1.1\r\n")})

	// Half-closed: a request cut anywhere, then CloseWrite.
	for _, n := range []int{1, 3, 4, 5, 10, 11, 12, 16, 22, 24, 30, len(valid) - 2, len(valid) - 1} {
		add(hostileCase{name: fmt.Sprintf("half-closed after %d bytes", n), closeWrite: true, payload: []byte(valid[:n])})
	}
	add(hostileCase{name: "half-closed inside a body", closeWrite: true,
		payload: append(request("POST", "/nope", "HTTP/1.1", "Content-Length: 100"), "abc"...)})

	// Garbage bytes.
	for i, n := range []int{1, 7, 64, 512, 4096, 65536} {
		for _, end := range []string{"", "\r\n\r\n"} {
			add(hostileCase{name: fmt.Sprintf("garbage %d bytes %q", n, end), closeWrite: true,
				payload: append(hostileRandom(int64(10+i), n), end...)})
		}
	}
	for _, g := range []string{"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", "SSH-2.0-OpenSSH_9.6\r\n", "HELO x\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", strings.Repeat("\r\n", 100), strings.Repeat(" ", 1000) + "\r\n\r\n",
		strings.Repeat("\n", 65536), "\xfe\xff\x00G\x00E\x00T\r\n\r\n", `{"a":1}` + "\r\n\r\n", "GET\r\n\r\n", "GET /\r\n\r\n",
		"GET /health HTTP/1.1\n\n", "\x00\x00\x00\x08\x04\xd2\x16\x2f"} {
		add(hostileCase{name: fmt.Sprintf("garbage %.24q", g), closeWrite: true, payload: []byte(g)})
	}

	// Sizes: 100 KB paths, 1 MB headers, long methods and lines.
	hundredK := strings.Repeat("a", 100<<10)
	add(hostileCase{name: "100 KB path", payload: request("GET", "/"+hundredK, "HTTP/1.1")})
	add(hostileCase{name: "100 KB path under /health", payload: request("GET", "/health/"+hundredK, "HTTP/1.1")})
	add(hostileCase{name: "100 KB query", payload: request("GET", "/nope?q="+hundredK, "HTTP/1.1")})
	add(hostileCase{name: "100 KB traversal", payload: request("GET", "/"+strings.Repeat("../", 34<<10), "HTTP/1.1")})
	add(hostileCase{name: "1 MB header", payload: request("GET", "/health", "HTTP/1.1", "X-Big: "+strings.Repeat("b", 1<<20))})
	add(hostileCase{name: "1 MB of headers", payload: request("GET", "/health", "HTTP/1.1", strings.Repeat("X-N: v\r\n", 1<<17)+"X-End: 1")})
	add(hostileCase{name: "100 KB method", payload: request(strings.Repeat("M", 100<<10), "/", "HTTP/1.1")})
	add(hostileCase{name: "1 MB line without newline", closeWrite: true, payload: []byte("GET /" + strings.Repeat("x", 1<<20))})

	// The treatment menu: bad parameters, bad tokens, and, with a manager's
	// token, bodies no reader should choke on. Each is a 4xx.
	for _, q := range []string{"?limit=-1", "?limit=99999999999999999999", "?limit=%00", "?limit=1&limit=1", "?active=%ff",
		"?cursor=%00", "?cursor=" + strings.Repeat("A", 50<<10), "?cursor=e30.AAAA", "?cursor=W10.AAAAAAAAAAAAAAAAAAAAAA", "?%zz=1"} {
		add(hostileCase{name: "treatments query " + q[:min(len(q), 24)], payload: request("GET", "/api/v1/treatments"+q, "HTTP/1.1")})
	}
	for _, id := range []string{"x", "%00", strings.Repeat("f", 10<<10), "00000000-0000-0000-0000-00000000000%00", "..%2f..%2fetc"} {
		add(hostileCase{name: "treatment id " + id[:min(len(id), 24)], payload: request("GET", "/api/v1/treatments/"+id, "HTTP/1.1")})
	}
	withBody := func(method, target, contentType, token, body string) []byte {
		headers := []string{"Content-Length: " + strconv.Itoa(len(body))}
		if contentType != "" {
			headers = append(headers, "Content-Type: "+contentType)
		}
		if token != "" {
			headers = append(headers, "Authorization: "+token)
		}
		return append(request(method, target, "HTTP/1.1", headers...), body...)
	}
	goodBody := `{"name":"Spa","duration_minutes":60,"price":1}`
	for _, token := range []string{"", "Bearer", "Bearer x.y.z", "Basic " + strings.Repeat("a", 100), "Bearer " + strings.Repeat("a.", 5000),
		"Bearer " + strings.Repeat("A", 9<<10) + ".e30.AA", "bearer \x00\x01", "Bearer " + managerToken[:len(managerToken)-3] + "AAA"} {
		add(hostileCase{name: fmt.Sprintf("treatments POST token %.20q", token), payload: withBody("POST", "/api/v1/treatments", "application/json", token, goodBody)})
	}
	manager := "Bearer " + managerToken
	for _, body := range []string{"", "null", "[]", `"x"`, "{", "}", strings.Repeat("[", 100000) + strings.Repeat("]", 100000),
		`{"name":` + strings.Repeat(`{"a":`, 20000) + "1" + strings.Repeat("}", 20000) + `}`, "\ufeff" + goodBody, goodBody + goodBody,
		`{"name":"\ud800","duration_minutes":60,"price":1}`, `{"name":"` + strings.Repeat("x", 900<<10) + `","duration_minutes":60,"price":1}`,
		`{"name":"Spa","duration_minutes":1e999999,"price":1}`, `{"name":"Spa","duration_minutes":-0.0,"price":-9223372036854775809}`,
		`{"name":"Spa","duration_minutes":60,"price":1,"name":"Spa"}`, `{"__proto__":{},"name":"Spa","duration_minutes":60,"price":1}`,
		`{"name":"Spa\u0000","duration_minutes":60,"price":1}`, "{\"name\":\"Sp\xffa\",\"duration_minutes\":60,\"price\":1}"} {
		add(hostileCase{name: fmt.Sprintf("treatments POST body %.24q", body), payload: withBody("POST", "/api/v1/treatments", "application/json", manager, body)})
	}
	for _, ct := range []string{"", "text/plain", "application/json; charset", "application/jsonx", "multipart/form-data; boundary=x", strings.Repeat("a", 10<<10)} {
		add(hostileCase{name: fmt.Sprintf("treatments POST type %.20q", ct), payload: withBody("POST", "/api/v1/treatments", ct, manager, goodBody)})
	}
	for _, method := range []string{"PATCH", "DELETE"} {
		for _, id := range []string{newUUID(), "nope"} {
			add(hostileCase{name: "treatments " + method + " " + id[:4], payload: withBody(method, "/api/v1/treatments/"+id, "application/json", manager, `{"price":"x"}`)})
		}
	}
	add(hostileCase{name: "treatments PATCH If-Match junk", payload: withBody("PATCH", "/api/v1/treatments/"+newUUID(), "application/json", manager, "{}")})
	return cases
}

// hostileChunked is n bytes of body in chunks of size chunk, terminated.
func hostileChunked(n, chunk int) []byte {
	var b []byte
	data := make([]byte, chunk)
	for n > 0 {
		c := min(chunk, n)
		b = append(b, strconv.FormatInt(int64(c), 16)+"\r\n"...)
		b = append(b, data[:c]...)
		b = append(b, "\r\n"...)
		n -= c
	}
	return append(b, "0\r\n\r\n"...)
}

// hostileRandom is n random bytes from a fixed seed, so that a failure
// repeats.
func hostileRandom(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A server is a started serverSpec.
type server struct {
	*process
	spec  serverSpec
	base  string        // http://127.0.0.1:PORT
	ready time.Duration // from its start to its first 200 on the readiness path
}

// startServer starts spec on a free loopback port and waits until it is
// ready: zenspa, with zenspaEnv, when /health/ready answers 200; a baseline,
// pointed at the same database and Redis, when /health does.
func startServer(ctx context.Context, o options, dir string, spec serverSpec) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	logPath := filepath.Join(dir, "server-"+strconv.Itoa(port)+".log")
	var p *process
	readyPath := "/health"
	if spec.zenspa {
		var env []string
		if env, err = zenspaEnv(o, dir); err != nil {
			return nil, err
		}
		env = append(env, "HOST=127.0.0.1", "PORT="+strconv.Itoa(port))
		p, err = startProcess(o.zenspa, nil, append(env, spec.env...), logPath)
		readyPath = "/health/ready"
	} else {
		args := append([]string{"-addr", addr, "-redis-addr", o.redisHost + ":6379", "-database-url", o.databaseURL,
			"-jwks-url", o.project.jwksURL()}, spec.args...)
		p, err = startProcess(o.baseline, args, []string{"PATH=" + os.Getenv("PATH")}, logPath)
	}
	if err != nil {
		return nil, err
	}
	s := &server{process: p, spec: spec, base: "http://" + addr}
	if s.ready, err = waitReady(ctx, p, s.base+readyPath); err != nil {
		p.stop()
		return nil, fmt.Errorf("%w (its log: %s)", err, p.logTail())
	}
	return s, nil
}

// zenspaEnv is the whole environment of a zenspa the benchmark runs, but for
// where it listens: the documented settings, and an empty env file, so that
// no .env of the checkout leaks in. The rate limit is off: wrk sends
// everything from one address, which the default limit would answer 429.
func zenspaEnv(o options, dir string) ([]string, error) {
	envFile := filepath.Join(dir, "empty.env")
	if err := os.WriteFile(envFile, nil, 0o600); err != nil {
		return nil, err
	}
	return []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"DATABASE_URL=" + o.databaseURL, "REDIS_HOST=" + o.redisHost,
		"LOG_LEVEL=INFO", "ENV_FILE=" + envFile, "RATE_LIMIT=0", "SUPABASE_URL=" + o.project.url,
	}, nil
}

// process is a server started by the benchmark; stop ends it by its PID.
type process struct {
	cmd     *exec.Cmd
	log     string
	started time.Time // just before the fork
	done    chan struct{}
}

// startProcess starts path with args and exactly the environment env, its
// output going to logPath.
func startProcess(path string, args, env []string, logPath string) (*process, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the harness dies without stopping it (killed, or a broken pipe on
	// its output), the kernel ends the server too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &process{cmd: cmd, log: logPath, started: started, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL if the process is still there after 10 s.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// logTail returns the end of the process's output, for error messages.
func (p *process) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// waitReady polls url without pause until it answers 200 and returns the time
// from the process's start to that answer. It gives up after 30 s or when the
// process exits.
func waitReady(ctx context.Context, p *process, url string) (time.Duration, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for time.Since(p.started) < 30*time.Second {
		if p.exited() {
			return 0, errors.New("exited before it was ready")
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(p.started), nil
			}
		}
		time.Sleep(100 * time.Microsecond)
	}
	return 0, fmt.Errorf("%s did not answer 200 within 30 s", url)
}

// fileSize is the size of a file in bytes.
func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// openLog returns serve's logger, writing to stdout or appending to
// LOG_FILE, and a function that closes it. SIGHUP reopens LOG_FILE after
// logrotate moved it; without LOG_FILE it is ignored rather than ending the
// process, its default.
func openLog(cfg config, stdout io.Writer) (*slog.Logger, func(), error) {
	out := stdout
	var file *logFile
	if cfg.LogFile != "" {
		f, err := openLogFile(cfg.LogFile)
		if err != nil {
			return nil, nil, &configError{problems: []string{err.Error()}}
		}
		file, out = f, f
	}
	log := newLogger(out, cfg.Environment, cfg.LogLevel)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			if file == nil {
				continue
			}
			if err := file.reopen(); err != nil {
				log.Error("cannot reopen LOG_FILE, still writing to the old file", "error", err)
				continue
			}
			log.Info("log file reopened", "path", cfg.LogFile)
		}
	}()
	closeLog := func() {
		signal.Stop(hup)
		close(hup) // no signal arrives after Stop: this ends the goroutine
		if file != nil {
			file.Close()
		}
	}
	return log, closeLog, nil
}

// newLogger writes JSON lines in production and readable text elsewhere, at
// the configured level. Every line logged with a request's context carries
// that request's ID.
func newLogger(w io.Writer, environment string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: levelNames}
	var h slog.Handler
	if environment == "production" {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(requestIDHandler{h})
}

// levelNames spells levels the way the original design did: WARNING and
// CRITICAL rather than slog's WARN and ERROR+4.
func levelNames(_ []string, a slog.Attr) slog.Attr {
	if a.Key != slog.LevelKey {
		return a
	}
	switch level, _ := a.Value.Any().(slog.Level); {
	case level >= logLevelCritical:
		a.Value = slog.StringValue("CRITICAL")
	case level >= slog.LevelError:
		a.Value = slog.StringValue("ERROR")
	case level >= slog.LevelWarn:
		a.Value = slog.StringValue("WARNING")
	}
	return a
}

// requestIDHandler adds request_id to every record logged with a context that
// carries one, so handlers only need to pass r.Context() to the logger.
type requestIDHandler struct{ slog.Handler }

func (h requestIDHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := requestIDFrom(ctx); id != "" {
		r.AddAttrs(slog.String("request_id", id))
	}
	return h.Handler.Handle(ctx, r)
}

func (h requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(attrs)}
}

func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
}

// every lets one event through per interval, so a failing dependency is
// logged every few seconds instead of once per call in a flood.
type every struct {
	interval time.Duration
	next     atomic.Int64 // unix nanoseconds before which events are dropped
}

// allow reports whether the caller may log now.
func (e *every) allow() bool { return e.allowAt(time.Now()) }

// allowAt is allow by another clock (the verifier's, which tests drive).
func (e *every) allowAt(now time.Time) bool {
	t := now.UnixNano()
	next := e.next.Load()
	return t >= next && e.next.CompareAndSwap(next, t+int64(e.interval))
}

// logFile is LOG_FILE: an append-only file that reopen replaces with a fresh
// one at the same path, so that logrotate can move the old one away (SIGHUP).
// A line written between the move and the reopen lands in the moved file:
// nothing is lost.
type logFile struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

// openLogFile opens path for appending, creating it with mode 0640.
func openLogFile(path string) (*logFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("LOG_FILE: %w", err)
	}
	return &logFile{path: path, f: f}, nil
}

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

// reopen switches to a new file at the same path. On failure the current
// file stays in use.
func (l *logFile) reopen() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	return old.Close()
}

// Close closes the current file.
func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

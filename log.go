package main

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"time"
)

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
func (e *every) allow() bool {
	now := time.Now().UnixNano()
	next := e.next.Load()
	return now >= next && e.next.CompareAndSwap(next, now+int64(e.interval))
}

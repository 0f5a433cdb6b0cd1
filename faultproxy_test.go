package main

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// faultProxy is a TCP proxy on a loopback port that the fault-injection
// tests put between zenspa and a dependency. It forwards until told to
// misbehave:
//
//   - stall: every connection stops forwarding in both directions, and new
//     connections are accepted but get nothing, like a network that silently
//     drops packets;
//   - cut: every connection is dropped and the port refuses new ones (the
//     listener is closed), like a dependency that went away;
//   - heal: pass-through again. The port is listened on again after a cut,
//     and connections that were stalled are dropped, so that whatever was
//     blocked on them (a query with a one-minute read deadline, lib/pq's
//     cancel request) ends at once.
//
// It keeps its address across a cut. It is closed at cleanup, after which no
// goroutine of it is left.
type faultProxy struct {
	t        testing.TB
	target   string
	addr     string
	accepted atomic.Int64 // connections accepted, in any mode

	mu    sync.Mutex
	mode  faultMode
	ln    net.Listener // nil while cut
	links map[*faultLink]struct{}
	done  bool
	wg    sync.WaitGroup // accept loops and link goroutines
}

// faultMode is what a faultProxy does with traffic.
type faultMode int

const (
	faultPass faultMode = iota
	faultStall
	faultCut
)

func (m faultMode) String() string {
	return [...]string{"pass", "stall", "cut"}[m]
}

// faultLink is one proxied connection: the client's side and, unless it was
// accepted while stalled, the target's.
type faultLink struct {
	client, server net.Conn // server is nil for a connection accepted while stalled

	// mu orders forwarding against stalling: a chunk is written under the
	// read lock, and stall takes the write lock, so that once stall returns
	// not one more byte crosses.
	mu      sync.RWMutex
	stalled bool
	once    sync.Once
}

// startFaultProxy listens on a free loopback port and forwards to target.
func startFaultProxy(t testing.TB, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fault proxy: listen: %v", err)
	}
	p := &faultProxy{t: t, target: target, addr: ln.Addr().String(), ln: ln, links: map[*faultLink]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop(ln)
	t.Cleanup(p.close)
	return p
}

// stall stops all forwarding; new connections are accepted and ignored.
func (p *faultProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = faultStall
	for l := range p.links {
		l.mu.Lock()
		l.stalled = true
		l.mu.Unlock()
	}
}

// cut drops every connection and closes the listener, so that connecting is
// refused until heal.
func (p *faultProxy) cut() {
	p.mu.Lock()
	p.mode = faultCut
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	links := p.takeLinks(func(*faultLink) bool { return true })
	p.mu.Unlock()
	for _, l := range links {
		l.drop()
	}
}

// heal goes back to pass-through: it listens again on the same port after a
// cut and drops the connections that were stalled.
func (p *faultProxy) heal() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == faultCut {
		ln, err := p.relisten()
		if err != nil {
			p.t.Errorf("fault proxy: listen again on %s after the cut: %v", p.addr, err)
			return
		}
		p.ln = ln
		p.wg.Add(1)
		go p.acceptLoop(ln)
	}
	p.mode = faultPass
	stalled := p.takeLinks(func(l *faultLink) bool {
		l.mu.RLock()
		defer l.mu.RUnlock()
		return l.stalled
	})
	for _, l := range stalled {
		l.drop()
	}
}

// relisten binds the proxy's port again; it retries briefly in case the
// kernel has not released it yet.
func (p *faultProxy) relisten() (net.Listener, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		ln, err := net.Listen("tcp", p.addr)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return ln, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openLinks is the number of connections the proxy holds.
func (p *faultProxy) openLinks() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// close stops the proxy and waits, 5 s at most, until its goroutines end.
func (p *faultProxy) close() {
	p.mu.Lock()
	p.done = true
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	links := p.takeLinks(func(*faultLink) bool { return true })
	p.mu.Unlock()
	for _, l := range links {
		l.drop()
	}
	finished := make(chan struct{})
	go func() { p.wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(5 * time.Second):
		p.t.Errorf("fault proxy to %s: goroutines still running 5 s after close", p.target)
	}
}

// takeLinks removes the links that match from the proxy's set and returns
// them; the caller holds p.mu.
func (p *faultProxy) takeLinks(match func(*faultLink) bool) []*faultLink {
	var out []*faultLink
	for l := range p.links {
		if match(l) {
			delete(p.links, l)
			out = append(out, l)
		}
	}
	return out
}

// acceptLoop accepts until ln is closed by cut or close.
func (p *faultProxy) acceptLoop(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve connects an accepted connection to the target, or, while stalled,
// holds it without an answer.
func (p *faultProxy) serve(client net.Conn) {
	defer p.wg.Done()
	l := &faultLink{client: client}
	p.mu.Lock()
	mode := p.mode
	p.mu.Unlock()
	if mode == faultPass {
		server, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			client.Close()
			return
		}
		l.server = server
	}

	// The mode may have changed while dialing: register under the lock and
	// apply what holds now.
	p.mu.Lock()
	switch {
	case p.done || p.mode == faultCut:
		p.mu.Unlock()
		l.drop()
		return
	case p.mode == faultStall || l.server == nil:
		l.stalled = true
	}
	p.links[l] = struct{}{}
	p.wg.Add(2)
	p.mu.Unlock()

	if l.server == nil {
		// Nothing to forward to: swallow what arrives until either side
		// closes. Reading is what lets a peer's close be noticed.
		go p.discard(l, l.client)
		p.wg.Done()
		return
	}
	go p.pump(l, l.server, l.client)
	go p.pump(l, l.client, l.server)
}

// pump copies src to dst while the link is not stalled; what arrives while
// it is stalled is lost, as on a network that drops packets. Any error on
// either side drops the link.
func (p *faultProxy) pump(l *faultLink, dst, src net.Conn) {
	defer p.wg.Done()
	defer p.forget(l)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			l.mu.RLock()
			var werr error
			if !l.stalled {
				_ = dst.SetWriteDeadline(time.Now().Add(5 * time.Second))
				_, werr = dst.Write(buf[:n])
			}
			l.mu.RUnlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// discard reads and forgets what c sends until it closes.
func (p *faultProxy) discard(l *faultLink, c net.Conn) {
	defer p.wg.Done()
	defer p.forget(l)
	buf := make([]byte, 4<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// forget drops l and removes it from the proxy's set.
func (p *faultProxy) forget(l *faultLink) {
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
	l.drop()
}

// drop closes both sides of the link, once.
func (l *faultLink) drop() {
	l.once.Do(func() {
		l.client.Close()
		if l.server != nil {
			l.server.Close()
		}
	})
}

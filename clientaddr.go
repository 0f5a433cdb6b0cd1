package main

import (
	"net/http"
	"net/netip"
	"strings"
)

// Where a request comes from: the address the access log shows and the rate
// limit counts against.
//
// Behind a load balancer every request arrives from the balancer, which
// names the client in X-Forwarded-For. Anyone can send that header, so it
// is believed only from TRUSTED_PROXIES, and only up to the first hop that
// is not one of them: a proxy appends the address it received the request
// from, so the rightmost entries are the ones trusted proxies wrote, and
// whatever lies left of the first untrusted address is the client's own
// say. HAProxy's `option forwardfor` adds a header line of its own rather
// than extending an existing one, so all the lines are read, in order, as
// one list. Its `if-none` variant keeps a client's header instead of adding
// to it: with it, the client names itself, so it must not be used in front
// of zenspa.

// clientAddr is the address of r's client: the TCP peer, unless the peer is
// a trusted proxy, in which case X-Forwarded-For says who it is.
func (s *server) clientAddr(r *http.Request) netip.Addr {
	return forwardedClient(peerAddr(r), r.Header.Values("X-Forwarded-For"), s.cfg.TrustedProxies)
}

// peerAddr is the TCP peer of r, IPv4-mapped IPv6 addresses unmapped (a
// dual-stack listener reports IPv4 clients that way). It is the zero Addr
// when RemoteAddr is not an address, which net/http never sets.
func peerAddr(r *http.Request) netip.Addr {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap()
	}
	a, _ := netip.ParseAddr(r.RemoteAddr)
	return a.Unmap()
}

// forwardedClient walks the X-Forwarded-For entries of headers from the
// right, starting at peer: while the hop it stands at is trusted, the entry
// to its left names the hop before it. It stops at the first address that is
// not trusted, which is the client. An entry that is not an address ends the
// walk at the last trusted hop, which is then the client as far as anyone
// can tell; so does the end of the list. Empty entries are skipped, as RFC
// 9110 (section 5.6.1) asks of a list.
func forwardedClient(peer netip.Addr, headers []string, trusted []netip.Prefix) netip.Addr {
	client := peer
	for i := len(headers) - 1; i >= 0; i-- {
		entries := strings.Split(headers[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			if !isTrusted(client, trusted) {
				return client
			}
			entry := strings.TrimSpace(entries[j])
			if entry == "" {
				continue
			}
			hop, ok := parseForwardedAddr(entry)
			if !ok {
				return client
			}
			client = hop
		}
	}
	return client
}

// parseForwardedAddr reads one X-Forwarded-For entry: an IPv4 or IPv6
// address, optionally with a port (1.2.3.4:5678, [2001:db8::1]:443) or, for
// IPv6, in brackets, as some proxies write it. A zone means nothing beyond
// the proxy's own host and is refused.
func parseForwardedAddr(entry string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(entry)
	if err != nil {
		if ap, perr := netip.ParseAddrPort(entry); perr == nil {
			a, err = ap.Addr(), nil
		} else if inner, ok := strings.CutPrefix(entry, "["); ok && strings.HasSuffix(inner, "]") {
			a, err = netip.ParseAddr(strings.TrimSuffix(inner, "]"))
		}
	}
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// isTrusted reports whether a is in one of the trusted prefixes.
func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

package main

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

// Tests of clientaddr.go: which hop of X-Forwarded-For is the client, and
// that only a trusted peer's header is read. The rate limit's use of it is
// in ratelimit_test.go.

// TestForwardedClient walks X-Forwarded-For from the right as clientAddr
// does, behind two trusted networks.
func TestForwardedClient(t *testing.T) {
	t.Parallel()
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:1::/48")}
	proxy := "10.0.0.1"
	tests := []struct {
		name    string
		peer    string
		headers []string
		want    string
	}{
		{"untrusted peer, no header", "203.0.113.9", nil, "203.0.113.9"},
		{"untrusted peer's header is ignored", "203.0.113.9", []string{"198.51.100.1"}, "203.0.113.9"},
		{"trusted peer, no header", proxy, nil, proxy},
		{"one hop", proxy, []string{"198.51.100.1"}, "198.51.100.1"},
		{"forged entries left of the real hop", proxy, []string{"1.1.1.1, 2.2.2.2, 198.51.100.1"}, "198.51.100.1"},
		{"two trusted proxies", proxy, []string{"198.51.100.1, 10.9.9.9"}, "198.51.100.1"},
		{"one line per proxy, as HAProxy writes", proxy, []string{"7.7.7.7", "198.51.100.1", "10.9.9.9"}, "198.51.100.1"},
		{"every hop trusted: the farthest", proxy, []string{"10.3.3.3, 10.2.2.2"}, "10.3.3.3"},
		{"spaces and tabs", proxy, []string{"  1.1.1.1 ,\t198.51.100.1\t, 10.2.2.2 "}, "198.51.100.1"},
		{"empty entries are skipped", proxy, []string{"198.51.100.1,, ,", ""}, "198.51.100.1"},
		{"IPv6", proxy, []string{"2001:db8:ffff::7"}, "2001:db8:ffff::7"},
		{"IPv6 behind a trusted IPv6 proxy", proxy, []string{"2001:db8:ffff::7, 2001:db8:1::2"}, "2001:db8:ffff::7"},
		{"IPv6 in brackets", proxy, []string{"[2001:db8:ffff::7]"}, "2001:db8:ffff::7"},
		{"IPv6 with a port", proxy, []string{"[2001:db8:ffff::7]:443"}, "2001:db8:ffff::7"},
		{"IPv4 with a port", proxy, []string{"198.51.100.1:50123"}, "198.51.100.1"},
		{"IPv4-mapped entry is unmapped", proxy, []string{"::ffff:198.51.100.1"}, "198.51.100.1"},
		{"IPv4-mapped trusted hop is trusted", proxy, []string{"198.51.100.1, ::ffff:10.2.2.2"}, "198.51.100.1"},
		{"IPv4-mapped peer is trusted", "::ffff:10.0.0.1", []string{"198.51.100.1"}, "198.51.100.1"},
		{"garbage stops at the last trusted hop", proxy, []string{"198.51.100.1, garbage"}, proxy},
		{"garbage behind a second proxy", proxy, []string{"198.51.100.1, unknown, 10.2.2.2"}, "10.2.2.2"},
		{"garbage left of the client is never reached", proxy, []string{"garbage, 198.51.100.1"}, "198.51.100.1"},
		{"a host name is garbage", proxy, []string{"client.example.com"}, proxy},
		{"a zone is garbage", proxy, []string{"fe80::1%eth0"}, proxy},
		{"a bad port is garbage", proxy, []string{"198.51.100.1:99999"}, proxy},
		{"leading zeros are garbage", proxy, []string{"010.0.0.1"}, proxy},
		{"the obfuscated form of RFC 7239 is garbage", proxy, []string{"_hidden"}, proxy},
		{"quotes are garbage", proxy, []string{`"198.51.100.1"`}, proxy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			peer := netip.MustParseAddr(tt.peer).Unmap()
			got := forwardedClient(peer, tt.headers, trusted)
			if want := netip.MustParseAddr(tt.want); got != want {
				t.Errorf("forwardedClient(%s, %q) = %s, want %s", tt.peer, tt.headers, got, want)
			}
		})
	}
}

// TestClientAddr checks clientAddr on whole requests: the peer from
// RemoteAddr, and X-Forwarded-For only with TRUSTED_PROXIES naming it.
func TestClientAddr(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, trusted, remote string
		xff                   []string
		want                  string
	}{
		{"no proxies trusted", "", "198.51.100.1:4242", []string{"203.0.113.5"}, "198.51.100.1"},
		{"trusted peer", "198.51.100.0/24", "198.51.100.1:4242", []string{"203.0.113.5"}, "203.0.113.5"},
		{"bare address trusted", "198.51.100.1", "198.51.100.1:4242", []string{"203.0.113.5"}, "203.0.113.5"},
		{"another peer of the network", "198.51.100.1", "198.51.100.2:4242", []string{"203.0.113.5"}, "198.51.100.2"},
		{"IPv6 peer", "", "[2001:db8::5]:4242", nil, "2001:db8::5"},
		{"IPv4-mapped peer", "", "[::ffff:198.51.100.1]:4242", nil, "198.51.100.1"},
		{"mapped prefix trusts the IPv4 peer", "::ffff:198.51.100.0/120", "198.51.100.1:4242", []string{"203.0.113.5"}, "203.0.113.5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := &server{cfg: testConfig(t, configTestURL, "TRUSTED_PROXIES="+tt.trusted)}
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := s.clientAddr(r); got != netip.MustParseAddr(tt.want) {
				t.Errorf("clientAddr(RemoteAddr %s, X-Forwarded-For %q, TRUSTED_PROXIES=%q) = %s, want %s",
					tt.remote, tt.xff, tt.trusted, got, tt.want)
			}
		})
	}
}

package egress

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestAllowed names every refused range with an address inside it and, where
// a neighbour is globally routable, one just outside it.
func TestAllowed(t *testing.T) {
	t.Parallel()
	cases := []struct {
		addr  string
		allow bool
		why   string
	}{
		// IPv4 special-purpose registry.
		{"0.0.0.0", false, "this network, unspecified"},
		{"0.255.255.255", false, "this network"},
		{"1.0.0.0", true, "just above 0.0.0.0/8"},
		{"9.255.255.255", true, "just below 10.0.0.0/8"},
		{"10.0.0.1", false, "private 10/8"},
		{"10.255.255.255", false, "private 10/8"},
		{"11.0.0.0", true, "just above 10/8"},
		{"100.63.255.255", true, "just below 100.64.0.0/10"},
		{"100.64.0.1", false, "shared address space"},
		{"100.127.255.255", false, "shared address space"},
		{"100.128.0.0", true, "just above 100.64.0.0/10"},
		{"126.255.255.255", true, "just below loopback"},
		{"127.0.0.1", false, "loopback"},
		{"127.255.255.254", false, "loopback"},
		{"128.0.0.0", true, "just above loopback"},
		{"169.254.169.254", false, "link-local (cloud metadata)"},
		{"169.253.255.255", true, "just below link-local"},
		{"169.255.0.0", true, "just above link-local"},
		{"172.15.255.255", true, "just below 172.16.0.0/12"},
		{"172.16.0.1", false, "private 172.16/12"},
		{"172.31.255.255", false, "private 172.16/12"},
		{"172.32.0.0", true, "just above 172.16.0.0/12"},
		{"191.255.255.255", true, "just below 192.0.0.0/24"},
		{"192.0.0.8", false, "IPv4 dummy address"},
		{"192.0.0.9", false, "PCP anycast, in 192.0.0.0/24"},
		{"192.0.0.170", false, "NAT64 discovery"},
		{"192.0.1.1", true, "between 192.0.0.0/24 and TEST-NET-1"},
		{"192.0.2.1", false, "TEST-NET-1"},
		{"192.0.3.0", true, "just above TEST-NET-1"},
		{"192.31.196.1", true, "AS112-v4, globally reachable"},
		{"192.52.193.1", true, "AMT, globally reachable"},
		{"192.88.99.1", false, "6to4 relay anycast"},
		{"192.88.100.0", true, "just above 192.88.99.0/24"},
		{"192.167.255.255", true, "just below 192.168/16"},
		{"192.168.1.1", false, "private 192.168/16"},
		{"192.169.0.0", true, "just above 192.168/16"},
		{"192.175.48.1", true, "AS112 direct delegation, globally reachable"},
		{"198.17.255.255", true, "just below benchmarking"},
		{"198.18.0.1", false, "benchmarking"},
		{"198.19.255.255", false, "benchmarking"},
		{"198.20.0.0", true, "just above benchmarking"},
		{"198.51.100.1", false, "TEST-NET-2"},
		{"198.51.101.0", true, "just above TEST-NET-2"},
		{"203.0.113.1", false, "TEST-NET-3"},
		{"203.0.112.255", true, "just below TEST-NET-3"},
		{"203.0.114.0", true, "just above TEST-NET-3"},
		{"223.255.255.255", true, "just below multicast"},
		{"224.0.0.1", false, "multicast"},
		{"239.255.255.255", false, "multicast"},
		{"240.0.0.1", false, "reserved"},
		{"255.255.255.255", false, "limited broadcast"},
		{"8.8.8.8", true, "public"},
		{"93.184.216.34", true, "public"},

		// IPv6: only 2000::/3, less the special-purpose ranges inside it.
		{"::", false, "unspecified"},
		{"::1", false, "loopback"},
		{"::8.8.8.8", false, "IPv4-compatible"},
		{"::ffff:8.8.8.8", false, "IPv4-mapped, even of a public address"},
		{"::ffff:127.0.0.1", false, "IPv4-mapped loopback"},
		{"64:ff9b::a00:1", false, "NAT64 of 10.0.0.1"},
		{"64:ff9b::808:808", false, "NAT64 of 8.8.8.8"},
		{"64:ff9b:1::1", false, "local-use NAT64"},
		{"100::1", false, "discard-only"},
		{"100:0:0:1::1", false, "dummy prefix"},
		{"1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false, "just below 2000::/3"},
		{"3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true, "last of 2000::/3"},
		{"2000::1", true, "first of 2000::/3"},
		{"2001::1", false, "Teredo"},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", false, "Teredo with an embedded IPv4"},
		{"2001:1::1", false, "PCP anycast, in 2001::/23"},
		{"2001:2::1", false, "benchmarking"},
		{"2001:3::1", false, "AMT, refused with 2001::/23"},
		{"2001:10::1", false, "ORCHID"},
		{"2001:20::1", false, "ORCHIDv2"},
		{"2001:1ff:ffff::1", false, "end of 2001::/23"},
		{"2001:200::1", true, "just above 2001::/23 (WIDE)"},
		{"2001:db7:ffff::1", true, "just below documentation"},
		{"2001:db8::1", false, "documentation"},
		{"2001:db9::1", true, "just above documentation"},
		{"2001:4860:4860::8888", true, "public (Google DNS)"},
		{"2001:ffff::1", true, "public"},
		{"2002::1", false, "6to4"},
		{"2002:c000:0204::1", false, "6to4 of 192.0.2.4"},
		{"2003::1", true, "just above 6to4"},
		{"2606:4700::1111", true, "public (Cloudflare)"},
		{"2620:4f:8000::1", true, "AS112 direct delegation, globally reachable"},
		{"3ffe:ffff::1", true, "just below 3fff::/20"},
		{"3fff::1", false, "documentation 3fff::/20"},
		{"3fff:fff::1", false, "documentation 3fff::/20"},
		{"3fff:1000::1", true, "just above 3fff::/20"},
		{"4000::1", false, "outside 2000::/3"},
		{"5f00::1", false, "segment routing SIDs"},
		{"fc00::1", false, "unique-local"},
		{"fd12:3456::1", false, "unique-local"},
		{"fe80::1", false, "link-local"},
		{"fe80::1%eth0", false, "link-local with a zone"},
		{"febf::1", false, "link-local"},
		{"fec0::1", false, "site-local"},
		{"ff02::1", false, "multicast"},
		{"ff0e::1", false, "global multicast"},
	}
	for _, c := range cases {
		if got := Allowed(netip.MustParseAddr(c.addr)); got != c.allow {
			t.Errorf("Allowed(%s) = %v, want %v (%s)", c.addr, got, c.allow, c.why) // every hole, not just the first
		}
	}
	require.False(t, Allowed(netip.Addr{}), "the zero Addr")

	// Every listed range refuses its first and last address.
	for _, list := range [][]block{blocked4, blocked6} {
		for _, blk := range list {
			first := blk.prefix.Masked().Addr()
			require.False(t, Allowed(first), "%s (%s)", first, blk.name)
			require.False(t, Allowed(lastOf(blk.prefix)), "%s (%s)", lastOf(blk.prefix), blk.name)
		}
	}
}

// lastOf is the highest address of p.
func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// TestControl: the hook sees the connected address after DNS (so "localhost"
// is refused like 127.0.0.1), in the form Allowed expects, and
// allowPrivate lets tests reach loopback.
func TestControl(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()

	var seen string
	d := &net.Dialer{Control: func(network, address string, _ syscall.RawConn) error {
		seen = address
		return nil
	}}
	conn, err := d.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	conn.Close()
	ap, err := netip.ParseAddrPort(seen)
	require.NoError(t, err)
	require.True(t, ap.Addr().Is4(), "an IPv4 target reaches the hook as IPv4, not IPv4-mapped: %s", seen)

	for _, target := range []string{srv.URL, strings.Replace(srv.URL, "127.0.0.1", "localhost", 1),
		strings.Replace(srv.URL, "127.0.0.1", "[::ffff:127.0.0.1]", 1)} {
		resp, err := NewClient(2*time.Second, false).Get(target)
		if err == nil {
			resp.Body.Close()
		}
		require.True(t, errors.Is(err, ErrForbidden), "%s: %v", target, err)
	}
	resp, err := NewClient(2*time.Second, true).Get(srv.URL)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)

	require.ErrorIs(t, Control(false)("tcp", "not an address", nil), ErrForbidden)
	require.NoError(t, Control(false)("tcp4", "8.8.8.8:443", nil))
	require.ErrorIs(t, Control(false)("tcp6", "[64:ff9b::7f00:1]:80", nil), ErrForbidden)
}

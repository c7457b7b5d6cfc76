package egress

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// ErrForbidden is the dial error for an address the filter refuses.
var ErrForbidden = errors.New("target address is not a globally routable unicast address (loopback, private, link-local or special-purpose)")

// block is a range no outbound call may reach, named as the IANA registries name it.
type block struct {
	prefix netip.Prefix
	name   string
}

func b(prefix, name string) block { return block{netip.MustParsePrefix(prefix), name} }

// blocked4 is every IPv4 range of the IANA IPv4 Special-Purpose Address
// Registry that is not globally reachable, plus multicast and the reserved
// 240/4 (which holds the limited broadcast address). 192.0.0.0/24 is refused
// whole, its PCP and TURN anycast addresses too: no HTTP receiver lives there.
var blocked4 = []block{
	b("0.0.0.0/8", `"this network" (RFC 791)`),
	b("10.0.0.0/8", "private-use (RFC 1918)"),
	b("100.64.0.0/10", "shared address space, carrier-grade NAT (RFC 6598)"),
	b("127.0.0.0/8", "loopback (RFC 1122)"),
	b("169.254.0.0/16", "link-local (RFC 3927)"),
	b("172.16.0.0/12", "private-use (RFC 1918)"),
	b("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
	b("192.0.2.0/24", "documentation, TEST-NET-1 (RFC 5737)"),
	b("192.88.99.0/24", "6to4 relay anycast, deprecated (RFC 7526)"),
	b("192.168.0.0/16", "private-use (RFC 1918)"),
	b("198.18.0.0/15", "benchmarking (RFC 2544)"),
	b("198.51.100.0/24", "documentation, TEST-NET-2 (RFC 5737)"),
	b("203.0.113.0/24", "documentation, TEST-NET-3 (RFC 5737)"),
	b("224.0.0.0/4", "multicast (RFC 5771)"),
	b("240.0.0.0/4", "reserved, with the limited broadcast 255.255.255.255 (RFC 1112, RFC 919)"),
}

// globalUnicast6 is 2000::/3, the only IPv6 space IANA allocates for global unicast.
var globalUnicast6 = netip.MustParsePrefix("2000::/3")

// blocked6 names the IPv6 ranges of the IANA IPv6 Special-Purpose Address
// Registry (and the deprecated site-local space). Those outside 2000::/3 are
// refused by that rule anyway and are listed so the table names them; those
// inside are refused by this list. Every form that embeds an IPv4 address is
// refused whatever the IPv4 address: through a translator it could reach any
// IPv4 host. 2001::/23 is refused whole, with its few anycast, AMT, AS112 and
// ORCHIDv2 assignments: no HTTP receiver lives there.
var blocked6 = []block{
	b("::/128", "unspecified (RFC 4291)"),
	b("::1/128", "loopback (RFC 4291)"),
	b("::/96", "IPv4-compatible, deprecated (RFC 4291)"),
	b("::ffff:0:0/96", "IPv4-mapped (RFC 4291)"),
	b("64:ff9b::/96", "IPv4-IPv6 translation, NAT64 (RFC 6052)"),
	b("64:ff9b:1::/48", "local-use IPv4-IPv6 translation (RFC 8215)"),
	b("100::/64", "discard-only (RFC 6666)"),
	b("100:0:0:1::/64", "dummy IPv6 prefix (RFC 9780)"),
	b("2001::/23", "IETF protocol assignments (RFC 2928)"),
	b("2001::/32", "Teredo, embeds IPv4 (RFC 4380)"),
	b("2001:2::/48", "benchmarking (RFC 5180)"),
	b("2001:10::/28", "ORCHID, deprecated (RFC 4843)"),
	b("2001:20::/28", "ORCHIDv2 (RFC 7343)"),
	b("2001:db8::/32", "documentation (RFC 3849)"),
	b("2002::/16", "6to4, embeds IPv4 (RFC 3056)"),
	b("3fff::/20", "documentation (RFC 9637)"),
	b("5f00::/16", "segment routing SIDs (RFC 9602)"),
	b("fc00::/7", "unique-local (RFC 4193)"),
	b("fe80::/10", "link-local unicast (RFC 4291)"),
	b("fec0::/10", "site-local, deprecated (RFC 3879)"),
	b("ff00::/8", "multicast (RFC 4291)"),
}

// Allowed reports whether an outbound call may connect to a: only globally
// routable unicast addresses are.
func Allowed(a netip.Addr) bool {
	if !a.IsValid() || a.Zone() != "" {
		return false
	}
	list := blocked4
	if a.Is6() {
		if !globalUnicast6.Contains(a) {
			return false
		}
		list = blocked6
	}
	for _, blk := range list {
		if blk.prefix.Contains(a) {
			return false
		}
	}
	return true
}

// Control is a net.Dialer Control hook: it sees the address actually being
// connected to, after DNS, and refuses it unless Allowed (or allowPrivate).
func Control(allowPrivate bool) func(network, address string, c syscall.RawConn) error {
	return func(_, address string, _ syscall.RawConn) error {
		if allowPrivate {
			return nil
		}
		ap, err := netip.ParseAddrPort(address)
		if err != nil || !Allowed(ap.Addr()) {
			return ErrForbidden
		}
		return nil
	}
}

// NewClient makes an outbound client: it always times out, never uses a
// proxy from the environment, never follows a redirect to another host, and
// (unless allowPrivate) connects only to addresses the filter allows.
func NewClient(timeout time.Duration, allowPrivate bool) *http.Client {
	dialer := &net.Dialer{Timeout: timeout, Control: Control(allowPrivate)}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           dialer.DialContext,
			TLSHandshakeTimeout:   timeout,
			ResponseHeaderTimeout: timeout,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       60 * time.Second,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 {
				return errors.New("too many redirects")
			}
			if req.URL.Host != via[0].URL.Host || req.URL.Scheme != via[0].URL.Scheme {
				return fmt.Errorf("redirect to another host (%s) refused", req.URL.Host)
			}
			return nil
		},
	}
}

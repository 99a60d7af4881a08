package egress_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/controller/alert/webhook/egress"
)

func TestDestinationsCheck(t *testing.T) {
	own := func() []netip.AddrPort {
		return []netip.AddrPort{netip.MustParseAddrPort("10.1.2.3:8080"), netip.MustParseAddrPort("[::]:7443")}
	}
	tests := []struct {
		addr         string
		allowPrivate bool
		refused      string // "" when allowed
	}{
		{"203.0.113.9:443", false, ""},
		{"10.0.0.5:443", false, ""}, // RFC 1918 stays allowed: receivers live inside networks
		{"192.168.1.5:443", false, ""},
		{"172.16.0.5:443", false, ""},
		{"[fd00::5]:443", false, ""},
		{"127.0.0.1:80", false, "loopback"},
		{"127.8.9.10:80", false, "loopback"},
		{"[::1]:80", false, "loopback"},
		{"[::ffff:127.0.0.1]:80", false, "loopback"},
		{"169.254.169.254:80", false, "link-local"},
		{"[fe80::1]:80", false, "link-local"},
		{"0.0.0.0:80", false, "unspecified"},
		{"[::]:80", false, "unspecified"},
		{"224.0.0.1:80", false, "multicast"},
		{"255.255.255.255:80", false, "broadcast"},
		{"10.1.2.3:8080", false, "own listening"},
		{"10.1.2.3:8081", false, ""},
		{"127.0.0.1:7443", true, "own listening"}, // a wildcard listener: every local address on its port
		{"127.0.0.1:80", true, ""},
		{"169.254.169.254:80", true, ""},
		{"10.1.2.3:8080", true, "own listening"},
		{"0.0.0.0:80", true, "unspecified"},
	}
	for _, tc := range tests {
		d := &egress.Destinations{AllowPrivate: tc.allowPrivate, Own: own}
		err := d.Check(netip.MustParseAddrPort(tc.addr))
		switch {
		case tc.refused == "" && err != nil:
			t.Errorf("%s (allow private %v): refused: %v", tc.addr, tc.allowPrivate, err)
		case tc.refused != "" && (err == nil || !errors.Is(err, egress.ErrDestinationRefused) || !strings.Contains(err.Error(), tc.refused)):
			t.Errorf("%s (allow private %v): %v, want refused as %s", tc.addr, tc.allowPrivate, err, tc.refused)
		}
	}
}

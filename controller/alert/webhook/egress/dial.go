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

// ErrDestinationRefused is a webhook connection the controller refused to
// make: the address its URL resolved to is one a webhook must not reach.
var ErrDestinationRefused = errors.New("webhook destination refused")

// Destinations says which addresses webhook connections may reach. The
// check runs in the dialer's Control hook, on the address actually being
// connected to (after DNS), so a name that resolves to a public address
// when the policy is applied and to 127.0.0.1 when the alert is sent (DNS
// rebinding) is refused all the same; and since it runs before connect(),
// a refused destination sees no packet.
//
// Always refused: unspecified (0.0.0.0, ::), multicast and broadcast
// addresses (never a receiver), and the controller's own listening
// addresses (its admin API and agent port: a policy author must not make
// the controller call itself). Refused unless AllowPrivate: loopback and
// link-local addresses (169.254.0.0/16, where cloud metadata services
// such as 169.254.169.254 live, and fe80::/10). Private RFC 1918 and ULA
// ranges (10/8, 172.16/12, 192.168/16, fc00::/7) are allowed: webhook
// receivers often live inside the network.
type Destinations struct {
	AllowPrivate bool
	// Own returns the controller's listening addresses; an unspecified
	// address in one stands for every local address on its port.
	Own func() []netip.AddrPort
}

// Check says why a connection to addr is refused, or nil.
func (d *Destinations) Check(addr netip.AddrPort) error {
	ip := addr.Addr().Unmap()
	why := ""
	switch {
	case !ip.IsValid():
		why = "not an IP address"
	case ip.IsUnspecified():
		why = "the unspecified address"
	case ip.IsMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = "a multicast or broadcast address"
	case d.isOwn(ip, addr.Port()):
		why = "one of the controller's own listening addresses"
	case d.AllowPrivate:
	case ip.IsLoopback():
		why = "a loopback address (--webhook-allow-private allows it)"
	case ip.IsLinkLocalUnicast():
		why = "a link-local address, where cloud metadata services live (--webhook-allow-private allows it)"
	}
	if why == "" {
		return nil
	}
	return fmt.Errorf("%w: %s is %s", ErrDestinationRefused, addr, why)
}

func (d *Destinations) isOwn(ip netip.Addr, port uint16) bool {
	if d.Own == nil {
		return false
	}
	for _, o := range d.Own() {
		if o.Port() != port {
			continue
		}
		oa := o.Addr().Unmap()
		if oa == ip {
			return true
		}
		if oa.IsUnspecified() && isLocal(ip) {
			return true
		}
	}
	return false
}

// isLocal reports whether ip is one of this host's addresses.
func isLocal(ip netip.Addr) bool {
	if ip.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: refuse rather than call ourselves
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if la, ok := netip.AddrFromSlice(n.IP); ok && la.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// control is the net.Dialer Control hook: it runs after the socket is
// made and before it connects.
func (d *Destinations) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %q is not an address and port", ErrDestinationRefused, address)
	}
	return d.Check(ap)
}

// NewClient returns the HTTP client webhook deliveries use: it connects
// only where dst allows, never through a proxy (the proxy would connect
// for us, past the check), and does not follow redirects (the alert and
// its signature would go wherever a receiver points, and past the check).
func NewClient(dst *Destinations) *http.Client {
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: dst.control}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

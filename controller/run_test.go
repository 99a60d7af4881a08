package controller

import (
	"net"
	"slices"
	"testing"

	"go.uber.org/zap"
)

func TestServingHosts(t *testing.T) {
	o := Options{GRPCListen: "10.1.2.3:7443", HTTPListen: "10.1.2.4:8080", Advertise: []string{"ctl.example"}}
	hosts := servingHosts(o, zap.NewNop())()
	for _, want := range []string{"localhost", "127.0.0.1", "::1", "10.1.2.3", "ctl.example"} {
		if !slices.Contains(hosts, want) {
			t.Errorf("hosts %v lack %s", hosts, want)
		}
	}
	if slices.Contains(hosts, "10.1.2.4") {
		t.Errorf("hosts %v name the HTTP listener, which the certificate does not serve", hosts)
	}
	o.HTTPTLSFromCA = true
	if hosts := servingHosts(o, zap.NewNop())(); !slices.Contains(hosts, "10.1.2.4") {
		t.Errorf("hosts %v lack the HTTP listener's address with --http-tls-from-ca", hosts)
	}
	wild := servingHosts(Options{GRPCListen: ":7443"}, zap.NewNop())()
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() && !slices.Contains(wild, n.IP.String()) {
			t.Errorf("wildcard hosts %v lack local address %s", wild, n.IP)
		}
	}
	if got := apiURL(&net.TCPAddr{IP: net.IPv4zero, Port: 8080}, false); got != "http://127.0.0.1:8080" {
		t.Errorf("apiURL of a wildcard: %s", got)
	}
}

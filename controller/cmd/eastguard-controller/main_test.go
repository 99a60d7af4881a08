package main

import (
	"bytes"
	"io"
	"slices"
	"testing"
)

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--data-dir", "d", "--grpc-listen", "nope"},
		{"--data-dir", "d", "--http-tls-cert", "c"},
		{"--data-dir", "d", "--ca-key", "k"},
		{"--data-dir", "d", "--cert-ttl", "1ms"},
		{"--data-dir", "d", "extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	o, err := parseFlags([]string{"--data-dir", "d", "--advertise", "a.example,10.0.0.1", "--advertise", "b"}, io.Discard)
	if err != nil || !slices.Equal(o.Advertise, []string{"a.example", "10.0.0.1", "b"}) {
		t.Errorf("--advertise: %v %v", o.Advertise, err)
	}
}

// TestVersion: --version prints the stamped version (make build sets it)
// and exits 0, needing no other flag.
func TestVersion(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = "v1.2.3-4-gabcdef"
	var out, errb bytes.Buffer
	if code := run([]string{"--version"}, &out, &errb); code != exitOK || out.String() != "eastguard-controller v1.2.3-4-gabcdef\n" {
		t.Errorf("--version: exit %d, %q %q", code, out.String(), errb.String())
	}
}

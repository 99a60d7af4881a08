package main

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/controller/controllertest"
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

// TestUnknownNotifyWebhookExits2: --alert-on-denied-notify naming a
// webhook the stored policy does not define (it defines others) stops
// the controller at start with exit 2 and the name. Before, it started
// and the built-in alerts went nowhere.
func TestUnknownNotifyWebhookExits2(t *testing.T) {
	h := controllertest.New(t)
	h.Apply("apiVersion: eastguard.dev/v1\nkind: Webhook\nmetadata: {name: ops}\nspec: {url: https://hooks.example.com/ops}\n")
	h.Stop()
	var stderr strings.Builder
	code := run([]string{"--data-dir", h.Dir, "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--alert-on-denied", "--alert-on-denied-notify", "nosuch", "--log-format", "console"}, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), `--alert-on-denied-notify names webhook "nosuch", which the policy does not define (it defines ops)`) {
		t.Errorf("exit %d, stderr:\n%s", code, stderr.String())
	}
}

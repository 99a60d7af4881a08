package main

import (
	"io"
	"slices"
	"testing"

	"github.com/eastguard/eastguard/controller/agentapi"
)

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--data-dir", "d", "--grpc-listen", "nope"},
		{"--data-dir", "d", "--http-tls-cert", "c"},
		{"--data-dir", "d", "--ca-key", "k"},
		{"--data-dir", "d", "--cert-ttl", "1ms"},
		{"--data-dir", "d", "extra"},
		{"--data-dir", "d", "--agent-join-rate", "0"},
		{"--data-dir", "d", "--agent-max-conns-per-source", "-1"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	o, err := parseFlags([]string{"--data-dir", "d", "--advertise", "a.example,10.0.0.1", "--advertise", "b"}, io.Discard)
	if err != nil || !slices.Equal(o.Advertise, []string{"a.example", "10.0.0.1", "b"}) {
		t.Errorf("--advertise: %v %v", o.Advertise, err)
	}
	o, err = parseFlags([]string{"--data-dir", "d", "--agent-max-conns-per-source", "300", "--agent-join-rate", "0.5"}, io.Discard)
	if want := (agentapi.Limits{MaxConns: agentapi.DefaultMaxConns, MaxConnsPerSource: 300, MaxStreamsPerConn: agentapi.DefaultMaxStreamsPerConn,
		JoinRate: 0.5, JoinBurst: agentapi.DefaultJoinBurst}); err != nil || o.AgentLimits != want {
		t.Errorf("agent limits: %+v %v, want %+v", o.AgentLimits, err, want)
	}
}

package main

import (
	"strings"
	"testing"

	"github.com/eastguard/eastguard/controller/apiclient"
)

// TestGlobalFlagsBeforeCommand: the connection flags work before the
// command as well as after it (admin.conf's header says "egctl --config
// FILE ..."); after it, they win.
func TestGlobalFlagsBeforeCommand(t *testing.T) {
	conf := controller(t)
	cfg, err := apiclient.LoadConfig(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(envConfig, "")
	for _, args := range [][]string{
		{"--config", conf, "agents"},
		{"--config=" + conf, "get", "agents", "-o", "json"},
		{"-config", conf, "--timeout", "30s", "admin-token", "list"},
		{"--server", cfg.Server, "--token", cfg.Token, "agents"},
		{"--token", "junk", "--config", conf, "agents", "--token", cfg.Token},
		// Commands that do not call the controller ignore them.
		{"--config", conf, "validate", shop},
	} {
		if code, out, errs := egctl(t, args...); code != exitOK {
			t.Errorf("egctl %s: exit %d\n%s\n%s", strings.Join(args, " "), code, out, errs)
		}
	}
	if code, _, errs := egctl(t, "--config", conf, "agents", "--token", "junk"); code != exitRemote || !strings.Contains(errs, "HTTP 401") {
		t.Errorf("--token after the command over --config before it: exit %d, %s", code, errs)
	}
	for args, want := range map[string]string{
		"--timeout nope agents":   `invalid value "nope" for flag -timeout`,
		"--nope agents":           "flag provided but not defined: -nope",
		"--config " + conf:        "no command",
		"--config " + conf + " x": `unknown command "x"`,
	} {
		code, out, errs := egctl(t, strings.Fields(args)...)
		if code != exitBadInput || out != "" || !strings.Contains(errs, want) || !strings.Contains(errs, "Usage:") {
			t.Errorf("egctl %s: exit %d, stdout %q, stderr:\n%s", args, code, out, errs)
		}
	}
	code, out, _ := egctl(t, "--help")
	if code != exitOK || !strings.Contains(out, "-config string") || !strings.Contains(out, "before or after the command") {
		t.Errorf("egctl --help does not list the global flags:\n%s", out)
	}
}

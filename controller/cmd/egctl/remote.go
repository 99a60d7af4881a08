package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
)

// exitRemote is the exit status of online commands when the controller
// cannot be reached, refuses the credential, or fails: distinct from bad
// input (1), so scripts can retry the one and not the other.
const exitRemote = 2

// Where online commands find the controller: flags first, then the
// environment, then the config file (--config, EGCTL_CONFIG).
const (
	envConfig = "EGCTL_CONFIG"
	envServer = "EGCTL_SERVER"
	envToken  = "EGCTL_TOKEN"
)

const remoteHelp = `
The controller's address and admin credential come from --server and
--token, else EGCTL_SERVER and EGCTL_TOKEN, else the file named by --config
or EGCTL_CONFIG (the controller writes one to <data-dir>/admin.conf).

Exit status: 0 done, 1 bad input (nothing changed), 2 the controller could
not be reached or refused the credential.`

// remoteFlags are the connection flags of every online command.
type remoteFlags struct {
	config, server, token *string
	timeout               *time.Duration
}

func addRemoteFlags(fs *flag.FlagSet) *remoteFlags {
	return &remoteFlags{
		config:  fs.String("config", "", "admin config file (default $"+envConfig+")"),
		server:  fs.String("server", "", "controller API URL, e.g. http://127.0.0.1:8080 (default $"+envServer+" or the config file's)"),
		token:   fs.String("token", "", "admin token (default $"+envToken+" or the config file's)"),
		timeout: fs.Duration("timeout", time.Minute, "give up on the controller after this long"),
	}
}

// client resolves the connection settings and returns an API client; on
// error it has printed why and returns nil.
func (f *remoteFlags) client(e *env) *apiclient.Client {
	cfg := f.settings(e)
	if cfg == nil {
		return nil
	}
	c, err := apiclient.NewClient(cfg)
	if err != nil {
		fmt.Fprintf(e.stderr, "egctl: %v\n", err)
		return nil
	}
	return c
}

// settings resolves the connection settings; on error it has printed why
// and returns nil.
func (f *remoteFlags) settings(e *env) *apiclient.Config {
	cfg := &apiclient.Config{Server: first(*f.server, os.Getenv(envServer)), Token: first(*f.token, os.Getenv(envToken))}
	path := first(*f.config, os.Getenv(envConfig))
	if path != "" {
		file, err := apiclient.LoadConfig(path)
		if err != nil {
			fmt.Fprintf(e.stderr, "egctl: config: %v\n", err)
			return nil
		}
		cfg.Server, cfg.Token = first(cfg.Server, file.Server), first(cfg.Token, file.Token)
		cfg.CACert = file.CACert
	}
	if cfg.Server == "" || cfg.Token == "" {
		fmt.Fprintf(e.stderr, "egctl: no controller configured: give --config FILE or set %s (the controller writes <data-dir>/admin.conf), or give --server and --token\n", envConfig)
		return nil
	}
	return cfg
}

// call sends one API request (body nil: none) and decodes the answer into
// out (nil: ignored; an io.Writer: copied). It returns exitOK, or prints
// why not and returns the exit status.
func (f *remoteFlags) call(e *env, method, path string, body, out any) int {
	c := f.client(e)
	if c == nil {
		return exitRemote
	}
	ctx, cancel := context.WithTimeout(context.Background(), *f.timeout)
	defer cancel()
	if err := c.Do(ctx, method, path, body, out); err != nil {
		return remoteFailed(e, err)
	}
	return exitOK
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// remoteFailed prints an API error and returns the exit status: bad input
// for refusals of the request itself (4xx but 401/403), exitRemote for the
// rest.
func remoteFailed(e *env, err error) int {
	var se *apiclient.StatusError
	if !errors.As(err, &se) {
		fmt.Fprintf(e.stderr, "egctl: %v\n", err)
		return exitRemote
	}
	for _, d := range se.Body.Diagnostics {
		fmt.Fprintln(e.stderr, d)
	}
	fmt.Fprintf(e.stderr, "egctl: %v\n", se)
	if se.Code/100 == 4 && se.Code != 401 && se.Code != 403 {
		return exitBadInput
	}
	return exitRemote
}

// checkOutput validates an -o value.
func checkOutput(e *env, o string, allowed ...string) bool {
	for _, a := range allowed {
		if o == a {
			return true
		}
	}
	fmt.Fprintf(e.stderr, "egctl: -o %q: want one of %v\n", o, allowed)
	return false
}

func printJSON(e *env, v any) int {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(e.stderr, "egctl: %v\n", err)
		return exitRemote
	}
	return exitOK
}

func newTable(e *env) *tabwriter.Writer {
	return tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
}

// readInputs reads the files named by -f: files, directories (every
// *.yaml and *.yml below, in lexical order) or - for standard input.
func readInputs(paths []string) ([]apiclient.File, error) {
	if len(paths) == 0 {
		return nil, errors.New("no input: give -f FILE|DIR")
	}
	var files []apiclient.File
	for _, p := range paths {
		if p == "-" {
			b, err := io.ReadAll(os.Stdin)
			if err != nil {
				return nil, fmt.Errorf("read standard input: %w", err)
			}
			files = append(files, apiclient.File{Name: "<stdin>", Content: string(b)})
			continue
		}
		info, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		names := []string{p}
		if info.IsDir() {
			names = nil
			err := filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if ext := filepath.Ext(path); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
					names = append(names, path)
				}
				return nil
			})
			if err != nil {
				return nil, err
			}
			if len(names) == 0 {
				return nil, fmt.Errorf("%s: no .yaml or .yml files in it", p)
			}
		}
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				return nil, err
			}
			files = append(files, apiclient.File{Name: n, Content: string(b)})
		}
	}
	return files, nil
}

// fileFlags collects repeated -f flags.
type fileFlags []string

func (f *fileFlags) String() string     { return fmt.Sprint(*f) }
func (f *fileFlags) Set(v string) error { *f = append(*f, v); return nil }

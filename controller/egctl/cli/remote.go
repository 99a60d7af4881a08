package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
)

// ExitRemote is the exit status of online commands when the controller
// cannot be reached, refuses the credential, or fails: distinct from bad
// input (1), so scripts can retry the one and not the other.
const ExitRemote = 2

// Where online commands find the controller: flags first, then the
// environment, then the config file (--config, EGCTL_CONFIG).
const (
	EnvConfig = "EGCTL_CONFIG"
	EnvServer = "EGCTL_SERVER"
	EnvToken  = "EGCTL_TOKEN"
)

const RemoteHelp = `
The controller's address and admin credential come from --server and
--token, else EGCTL_SERVER and EGCTL_TOKEN, else the file named by --config
or EGCTL_CONFIG (the controller writes one to <data-dir>/admin.conf).

Exit status: 0 done, 1 bad input (nothing changed), 2 the controller could
not be reached or refused the credential.`

// RemoteFlags are the connection flags of every online command.
type RemoteFlags struct {
	config, server, token *string
	timeout               *time.Duration
}

func AddRemoteFlags(fs *flag.FlagSet) *RemoteFlags {
	return &RemoteFlags{
		config:  fs.String("config", "", "admin config file (default $"+EnvConfig+")"),
		server:  fs.String("server", "", "controller API URL, e.g. http://127.0.0.1:8080, or several separated by commas (controllers sharing a PostgreSQL store: the leader answers) (default $"+EnvServer+" or the config file's)"),
		token:   fs.String("token", "", "admin token (default $"+EnvToken+" or the config file's)"),
		timeout: fs.Duration("timeout", time.Minute, "give up on the controller after this long"),
	}
}

// Client resolves the connection settings and returns an API client; on
// error it has printed why and returns nil.
func (f *RemoteFlags) Client(e *Env) *apiclient.Client {
	cfg := f.Resolve(e)
	if cfg == nil {
		return nil
	}
	c, err := apiclient.NewClient(cfg)
	if err != nil {
		fmt.Fprintf(e.Stderr, "egctl: %v\n", err)
		return nil
	}
	return c
}

// Resolve returns the connection settings; on error it has printed why
// and returns nil.
func (f *RemoteFlags) Resolve(e *Env) *apiclient.Config {
	cfg := &apiclient.Config{Server: first(*f.server, os.Getenv(EnvServer)), Token: first(*f.token, os.Getenv(EnvToken))}
	path := first(*f.config, os.Getenv(EnvConfig))
	if path != "" {
		file, err := apiclient.LoadConfig(path)
		if err != nil {
			fmt.Fprintf(e.Stderr, "egctl: config: %v\n", err)
			return nil
		}
		cfg.Server, cfg.Token = first(cfg.Server, file.Server), first(cfg.Token, file.Token)
		cfg.CACert = file.CACert
	}
	if cfg.Server == "" || cfg.Token == "" {
		fmt.Fprintf(e.Stderr, "egctl: no controller configured: give --config FILE or set %s (the controller writes <data-dir>/admin.conf), or give --server and --token\n", EnvConfig)
		return nil
	}
	return cfg
}

// Call sends one API request (body nil: none) and decodes the answer into
// out (nil: ignored; an io.Writer: copied). It returns ExitOK, or prints
// why not and returns the exit status.
func (f *RemoteFlags) Call(e *Env, method, path string, body, out any) int {
	c := f.Client(e)
	if c == nil {
		return ExitRemote
	}
	ctx, cancel := context.WithTimeout(context.Background(), *f.timeout)
	defer cancel()
	if err := c.Do(ctx, method, path, body, out); err != nil {
		return remoteFailed(e, err)
	}
	return ExitOK
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
// for refusals of the request itself (4xx but 401/403), ExitRemote for the
// rest.
func remoteFailed(e *Env, err error) int {
	var none *apiclient.NoLeaderError
	if errors.As(err, &none) {
		fmt.Fprintf(e.Stderr, "egctl: %v\n", err)
		return ExitRemote
	}
	var se *apiclient.StatusError
	if !errors.As(err, &se) {
		fmt.Fprintf(e.Stderr, "egctl: %v\n", err)
		return ExitRemote
	}
	for _, d := range se.Body.Diagnostics {
		fmt.Fprintln(e.Stderr, d)
	}
	fmt.Fprintf(e.Stderr, "egctl: %v\n", se)
	if se.Code/100 == 4 && se.Code != 401 && se.Code != 403 {
		return ExitBadInput
	}
	return ExitRemote
}

// GetList fetches a listing; an empty one is an empty slice, never nil,
// so that -o json prints [] and not null.
func GetList[T any](e *Env, remote *RemoteFlags, path string) ([]T, int) {
	var list []T
	if code := remote.Call(e, http.MethodGet, path, nil, &list); code != ExitOK {
		return nil, code
	}
	if list == nil {
		list = []T{}
	}
	return list, ExitOK
}

// ReadInputs reads the files named by -f: files, directories (every
// *.yaml and *.yml below, in lexical order) or - for standard input.
func ReadInputs(paths []string) ([]apiclient.File, error) {
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

// FileFlags collects repeated -f flags.
type FileFlags []string

func (f *FileFlags) String() string     { return fmt.Sprint(*f) }
func (f *FileFlags) Set(v string) error { *f = append(*f, v); return nil }

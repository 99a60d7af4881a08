package apiclient

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// Config is admin.conf: everything egctl needs to reach the controller's
// API. The controller writes it on first start (mode 0600); whoever holds
// it can change every node's policy.
type Config struct {
	// Server is the API's base URL ("http://127.0.0.1:8080"), or several
	// separated by commas (controllers sharing a PostgreSQL store: egctl
	// tries them in turn and uses the one that leads). A file with one URL
	// reads as before.
	Server string `yaml:"server"`
	// Token is the admin credential, sent as a bearer token.
	Token string `yaml:"token"`
	// CACert (PEM) verifies the API's certificate when Server is https.
	CACert string `yaml:"caCert,omitempty"`
}

// Marshal returns the file's contents.
func (c *Config) Marshal() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# Eastguard admin credential, written by eastguard-controller.\n")
	b.WriteString("# Whoever holds this file can change every node's policy: keep it mode 0600.\n")
	b.WriteString("# Use it with: egctl --config FILE ...  or  EGCTL_CONFIG=FILE egctl ...\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

// LoadConfig reads and checks an admin.conf.
func LoadConfig(path string) (*Config, error) {
	c, err := ReadConfig(path)
	if err != nil {
		return nil, err
	}
	if err := c.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ReadConfig reads an admin.conf without checking that it is complete
// (the controller reads the file it replaces that way, to revoke its
// token).
func ReadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// SplitServers splits a server list at its commas, trimming spaces and
// trailing slashes.
func SplitServers(list string) []string {
	var out []string
	for s := range strings.SplitSeq(list, ",") {
		out = append(out, strings.TrimRight(strings.TrimSpace(s), "/"))
	}
	return out
}

// Check says what is missing or wrong.
func (c *Config) Check() error {
	if c.Server == "" {
		return errors.New("no server address")
	}
	for _, s := range SplitServers(c.Server) {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("server %q: want http://HOST:PORT or https://HOST:PORT (several separated by commas)", s)
		}
	}
	if c.Token == "" {
		return errors.New("no admin token")
	}
	return nil
}

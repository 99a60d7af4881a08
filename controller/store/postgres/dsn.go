package postgres

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// IsDSN says whether a --store value names a PostgreSQL database
// (postgres:// or postgresql://).
func IsDSN(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// RedactDSN is dsn with its password (in the user part or as a
// password= parameter) replaced, for logs and errors. A DSN that is not a
// URL is replaced whole: it may be anything.
func RedactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || !IsDSN(dsn) {
		return "(a DSN that is not a postgres:// URL)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	qs := u.Query()
	for k := range qs {
		if strings.EqualFold(k, "password") {
			qs.Set(k, "xxxxx")
		}
	}
	u.RawQuery = qs.Encode()
	return u.String()
}

// ParseDSN reads the pool's configuration from a postgres:// URL (libpq's
// parameters, e.g. sslmode, pool_max_conns) and, if passwordFile is set,
// the password from that file (its first line). The password must not
// come from both. Errors never quote the DSN.
func ParseDSN(dsn, passwordFile string) (*pgxpool.Config, error) {
	if !IsDSN(dsn) {
		return nil, errors.New("--store: want postgres://USER@HOST/DATABASE?... (or no --store, for SQLite in --data-dir)")
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, errors.New("--store: not a valid URL")
	}
	_, inURL := u.User.Password()
	if inURL || u.Query().Has("password") {
		if passwordFile != "" {
			return nil, errors.New("--store carries a password and --store-password-file gives one: give it once")
		}
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message names the parameter at fault, with the password
		// redacted; the DSN is logged redacted by the caller.
		return nil, fmt.Errorf("--store %s: %w", RedactDSN(dsn), err)
	}
	if passwordFile != "" {
		b, err := os.ReadFile(passwordFile)
		if err != nil {
			return nil, fmt.Errorf("--store-password-file: %w", err)
		}
		pw, _, _ := strings.Cut(string(b), "\n")
		pw = strings.TrimSuffix(pw, "\r")
		if pw == "" {
			return nil, fmt.Errorf("--store-password-file %s: empty", passwordFile)
		}
		cfg.ConnConfig.Password = pw
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "eastguard-controller"
	}
	return cfg, nil
}

package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// buildTimeout bounds building one binary: the first build of
// kube-apiserver took 22 minutes on a loaded 2-core machine.
const buildTimeout = 45 * time.Minute

// moduleName is the module this package belongs to: the binaries are
// built from its go.mod, which pins k8s.io/kubernetes and etcd.
const moduleName = "github.com/eastguard/eastguard/test/kube"

// Binaries are the programs a cluster runs, built from the versions
// test/kube/go.mod pins and cached outside the repository.
type Binaries struct {
	APIServer string // kube-apiserver
	Etcd      string // etcd
	// Version is k8s.io/kubernetes's version in go.mod: the cache is
	// keyed by it.
	Version string
	// Dir is the cache directory holding both.
	Dir string
}

// tools maps each binary to the package it is built from; both are tool
// directives of test/kube/go.mod, so `go mod tidy` keeps their
// dependencies in go.sum. etcd is the version k8s.io/kubernetes itself
// requires (go.etcd.io/etcd/server/v3, v3.7.0 for v1.37.2): Debian
// bookworm's etcd-server (3.4.23) predates the watch-progress fixes the
// apiserver's watch cache relies on (etcd 3.4.25/3.4.31) and lacks
// --unsafe-no-fsync.
var tools = []struct {
	name, pkg string
	// versionVars are the variables a release build stamps with the
	// version (hack/lib/version.sh); a plain go build leaves them at
	// v0.0.0-master, which /version and kubectl would report.
	versionVars []string
}{
	{"kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"}},
	{"etcd", "go.etcd.io/etcd/server/v3", nil},
}

// ldflags stamps the Kubernetes version (v1.37.2) into the packages
// named.
func ldflags(version string, pkgs []string) string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(version, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	var flags []string
	for _, p := range pkgs {
		flags = append(flags,
			"-X "+p+".gitVersion="+version,
			"-X "+p+".gitMajor="+major,
			"-X "+p+".gitMinor="+minor,
			"-X "+p+".gitTreeState=clean")
	}
	return strings.Join(flags, " ")
}

// CacheRoot is where built binaries are kept between runs:
// $EASTGUARD_KUBE_CACHE if set, else the user cache directory
// ($XDG_CACHE_HOME or ~/.cache) /eastguard/kube. One subdirectory per
// k8s.io/kubernetes version.
func CacheRoot() (string, error) {
	if d := os.Getenv("EASTGUARD_KUBE_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory for the kube-apiserver build (set EASTGUARD_KUBE_CACHE): %w", err)
	}
	return filepath.Join(d, "eastguard", "kube"), nil
}

// EnsureBinaries returns the cached kube-apiserver and etcd, building
// whichever is missing with `go build` inside test/kube (the module that
// pins them). It must run with its working directory inside that module
// (go test does: it runs in the package's directory). Concurrent callers
// (test packages run in parallel) serialise on a lock file in the cache;
// a binary is written under a temporary name and renamed into place, so
// a cached one is always whole. logf reports what was built and how long
// it took.
func EnsureBinaries(logf func(format string, args ...any)) (Binaries, error) {
	modDir, err := moduleDir()
	if err != nil {
		return Binaries{}, err
	}
	version, err := goOutput(modDir, "list", "-m", "-f", "{{.Version}}", "k8s.io/kubernetes")
	if err != nil {
		return Binaries{}, fmt.Errorf("k8s.io/kubernetes version in %s/go.mod: %w", modDir, err)
	}
	root, err := CacheRoot()
	if err != nil {
		return Binaries{}, err
	}
	dir := filepath.Join(root, version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Binaries{}, fmt.Errorf("binary cache: %w", err)
	}
	b := Binaries{
		APIServer: filepath.Join(dir, "kube-apiserver"),
		Etcd:      filepath.Join(dir, "etcd"),
		Version:   version,
		Dir:       dir,
	}
	if allExist(dir) {
		return b, nil
	}

	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return Binaries{}, fmt.Errorf("binary cache lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return Binaries{}, fmt.Errorf("binary cache lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck // released on close anyway

	for _, tool := range tools {
		out := filepath.Join(dir, tool.name)
		if _, err := os.Stat(out); err == nil {
			continue // built by another package while this one waited
		}
		logf("building %s (%s, k8s.io/kubernetes %s) into %s: the first build takes minutes, later ones use the Go build cache", tool.name, tool.pkg, version, dir)
		start := time.Now()
		tmp := out + ".tmp"
		if _, err := goOutputTimeout(buildTimeout, modDir, "build", "-ldflags", ldflags(version, tool.versionVars), "-o", tmp, tool.pkg); err != nil {
			os.Remove(tmp)
			return Binaries{}, fmt.Errorf("building %s: %w", tool.name, err)
		}
		if err := os.Rename(tmp, out); err != nil {
			return Binaries{}, fmt.Errorf("building %s: %w", tool.name, err)
		}
		logf("built %s in %v", tool.name, time.Since(start).Round(time.Second))
	}
	return b, nil
}

func allExist(dir string) bool {
	for _, tool := range tools {
		if _, err := os.Stat(filepath.Join(dir, tool.name)); err != nil {
			return false
		}
	}
	return true
}

// moduleDir is test/kube: the directory of the go.mod that governs the
// working directory, which must be this package's module.
func moduleDir() (string, error) {
	gomod, err := goOutput("", "env", "GOMOD")
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", fmt.Errorf("building kube-apiserver needs the working directory inside %s: %w", moduleName, err)
	}
	if !bytes.Contains(data, []byte("module "+moduleName+"\n")) {
		return "", fmt.Errorf("building kube-apiserver needs the working directory inside %s, not the module of %s", moduleName, gomod)
	}
	return filepath.Dir(gomod), nil
}

// goOutput runs the go command in dir and returns its trimmed standard
// output; the error carries its standard error.
func goOutput(dir string, args ...string) (string, error) {
	return goOutputTimeout(time.Minute, dir, args...)
}

// goOutputTimeout is goOutput killing the go command after timeout.
func goOutputTimeout(timeout time.Duration, dir string, args ...string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		if _, serr := os.Stat("/usr/local/go/bin/go"); serr != nil {
			return "", errors.New("the go command is not in PATH nor /usr/local/go/bin")
		}
		goBin = "/usr/local/go/bin/go"
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

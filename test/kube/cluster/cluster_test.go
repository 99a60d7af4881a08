package cluster

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPrivilegedKubeAPIServerStartStop: a cluster of its own serves
// through the kubeconfig it wrote and, once its test ends, leaves no
// process and no file behind.
func TestPrivilegedKubeAPIServerStartStop(t *testing.T) {
	requireRoot(t)
	var (
		pids []int
		dir  string
	)
	t.Run("cluster", func(t *testing.T) {
		c := Start(t)
		for _, p := range c.procs {
			pids = append(pids, p.cmd.Process.Pid)
		}
		dir = c.dir
		if len(pids) != 2 {
			t.Fatalf("%d processes started, want etcd and kube-apiserver", len(pids))
		}
		out := c.Kubectl(t, "get", "namespace", "default", "-o", "name")
		if out != "namespace/default\n" {
			t.Errorf("kubectl get namespace default: %q", out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		v, err := c.Client.Discovery().ServerVersion()
		if err != nil {
			t.Fatal(err)
		}
		if v.GitVersion == "" || v.GitVersion[0] != 'v' || v.Major == "0" || v.Major == "" {
			t.Errorf("apiserver version %+v: not stamped", v)
		}
		if _, err := c.Client.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{}); err != nil {
			t.Errorf("kube-system: %v", err)
		}
	})
	for _, pid := range pids {
		// Cleanup waited for each child, so a PID still there is either
		// running or reused by another program: the command line tells.
		cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err == nil && bytes.Contains(cmdline, []byte(filepath.Base(dir))) {
			t.Errorf("process %d still running after the test's cleanup: %q", pid, cmdline)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cluster directory %s still there after cleanup: %v", dir, err)
	}
}

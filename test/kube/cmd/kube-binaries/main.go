// Command kube-binaries builds kube-apiserver and etcd at the versions
// test/kube/go.mod pins into the cache (cluster.CacheRoot), if missing,
// and prints the cache directory: `make kube-apiserver` runs it before
// the tests under test/kube, so their timeouts do not include the first
// build. Run it inside test/kube: `go run ./cmd/kube-binaries`.
package main

import (
	"fmt"
	"log"
	"os"

	"github.com/eastguard/eastguard/test/kube/cluster"
)

func main() {
	logger := log.New(os.Stderr, "kube-binaries: ", 0)
	b, err := cluster.EnsureBinaries(logger.Printf)
	if err != nil {
		logger.Fatal(err)
	}
	fmt.Println(b.Dir)
}

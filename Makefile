# Eastguard build. The toolchain is pinned here and only here: the eBPF
# compiler and strip tool, the bpf2go, protoc plugin and controller-gen
# versions (go.mod tool directives), and the C flags.

GO            ?= go
BIN           ?= bin
# bpf2go reads these (see agent/datapath/gen.go).
export BPF2GO_CC     := clang-19
export BPF2GO_STRIP  := llvm-strip-19
export BPF2GO_CFLAGS := -O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu

# Test flags: packages run in parallel (privileged tests name their
# namespaces, bpffs directories and interfaces per run, so they do not
# collide); timeouts are generous so a slow machine fails on a real hang
# only. Privileged tests are named TestPrivileged...: `go test -run
# TestPrivileged ./...` runs just them, `-skip TestPrivileged` the rest.
TEST_FLAGS    ?= -count=1 -timeout 20m
BENCH_FLAGS   ?= -run '^$$' -benchmem -timeout 30m

COMMANDS := eastguard-agent eastguard-controller egctl

# The version the binaries report (--version; agents send it to the
# controller, egctl agents shows it): the git description of the checkout,
# "dev" outside a git checkout.
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS       := -X main.version=$(VERSION)
# Every binary is built with the same flags, so that they share each
# compiled package in the build cache (a different flag, -trimpath
# included, compiles everything again: 43 s more on a cold demo).
GOBUILD        = CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)"

.PHONY: help deps deps-run generate ui build lint test kube-apiserver bench fuzz bench-throughput bench-realpath e2e demo demo-build demo-clean images clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

generate: deps ## Regenerate eBPF objects (bpf2go, clang-19), protobuf code (protoc 3.21.12, Debian protobuf-compiler), the CRDs and DeepCopy code of controller/kube/crdv1 (controller-gen), and the dashboard's assets (make ui).
	$(GO) generate ./...
	$(MAKE) --no-print-directory ui

# The dashboard's front end: npm packages from the lockfile only (npm ci),
# bundled and minified by esbuild into controller/dashboard/assets/, which
# is committed and embedded (go:embed), so build and test need no Node.js.
# The build is deterministic: .ci/run rebuilds and fails on any difference.
UI_DIR        := controller/dashboard/ui

ui: ## Rebuild the dashboard's assets (controller/dashboard/assets/) from controller/dashboard/ui/ (Node.js and npm: apt-get install nodejs).
	@command -v npm >/dev/null || { echo "make ui: npm not found: apt-get install nodejs (it brings npm; do not install the separate npm package)"; exit 1; }
	cd $(UI_DIR) && npm ci --no-audit --no-fund && npm run build

build: ## Build all binaries into bin/, stamped with VERSION (git describe).
	@mkdir -p $(BIN)
	$(GOBUILD) -o $(BIN)/ ./agent/cmd/... ./controller/cmd/...

lint: ## gofmt, go vet, and the repository's rules (test/repo: one-way imports, no all-groups client-go in the binaries, no committed binaries, links inside the repository, README layout, a test for every README command).
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd test/kube && $(GO) vet ./...
	$(GO) test -count=1 ./test/repo/

deps-run: ## Install the Debian packages the tests and the demo need, if any is missing (root).
	@missing=""; for c in ip nsenter sysctl nc ss timeout iperf3 nft; do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing packages for:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			iproute2 util-linux procps coreutils netcat-openbsd iperf3 nftables >/dev/null; \
	fi

deps: deps-run ## Install every Debian package the build needs: deps-run's, and make generate's toolchain (protoc, clang-19, llvm-19, libbpf-dev, nodejs with npm).
	@missing=""; for c in protoc clang-19 llvm-strip-19 npm; do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	[ -e /usr/include/bpf/bpf_helpers.h ] || missing="$$missing libbpf-dev"; \
	if [ -n "$$missing" ]; then \
		echo "installing packages for:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			protobuf-compiler clang-19 llvm-19 libbpf-dev linux-libc-dev nodejs >/dev/null; \
	fi

test: deps-run build ## Run every test: unit, BPF (prog.Run), end-to-end in network namespaces, and test/kube against a real kube-apiserver (privileged ones need root and say so when skipped).
	$(GO) test $(TEST_FLAGS) ./...
	$(MAKE) --no-print-directory kube-apiserver
	cd test/kube && $(GO) test $(TEST_FLAGS) ./...

# test/kube is its own module (k8s.io/kubernetes stays out of go.mod).
# The first build of kube-apiserver takes minutes; the binaries are cached
# outside the repository (cluster.CacheRoot: $$EASTGUARD_KUBE_CACHE, else
# $$XDG_CACHE_HOME or ~/.cache, /eastguard/kube/VERSION/) and only built
# when missing.
kube-apiserver: ## Build kube-apiserver and etcd for test/kube into the cache (~/.cache/eastguard/kube/), if missing.
	cd test/kube && $(GO) run ./cmd/kube-binaries

bench: ## Run the Go benchmarks (datapath verdict cost, compiler, ...).
	$(GO) test $(BENCH_FLAGS) -bench . ./...

# Fuzz targets, PACKAGE:TARGET. -fuzzminimizetime bounds the minimisation of
# each new input: the compiler's seeds are large, and with the default (60 s)
# FuzzCompile spends its time minimising instead of fuzzing.
FUZZ_TARGETS := ./internal/policy:FuzzParse ./internal/compile:FuzzCompile \
	./internal/wire:FuzzFlowBatch ./agent/datapath:FuzzDecodeEvent \
	./controller/apiclient:FuzzParseFilters ./internal/pki:FuzzCheckCSR
FUZZTIME     ?= 30s

fuzz: ## Run every fuzz target for FUZZTIME each (default 30s).
	@for t in $(FUZZ_TARGETS); do \
		echo "== $${t#*:} ($${t%%:*})"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s "$${t%%:*}" || exit 1; \
	done

bench-throughput: build ## iperf3 through an enforcing veth vs no program vs nftables (needs root, iperf3, nft).
	$(GO) test -tags throughput -run '^$$' -bench Throughput -benchtime 1x -timeout 30m ./test/throughput/
bench-realpath: build ## The real path's cost as the kernel counts it (bpf_stats): ns per packet per program, stream and req/resp ratios (needs root, iperf3).
	$(GO) test -tags throughput -run '^$$' -bench RealPath -benchtime 1x -timeout 30m ./test/throughput/

e2e: build ## Only the end-to-end tests under test/.
	$(GO) test $(TEST_FLAGS) ./test/...

# The demo is test/demo's scenario (TestPrivilegedDemo checks the same
# one) played by test/demo/cmd/eastguard-demo with the binaries of build.
# The demo's program is built with the binaries, in one go build.
demo: deps-run demo-build ## Run the demo (root): two nodes, the controller and its dashboard, allowed traffic, an SSH attempt blocked and alerted (DEMO_KEEP=1 keeps it up).
	$(BIN)/eastguard-demo --bin $(BIN)

# One go build for the four binaries: a separate build of eastguard-demo
# alone costs a cold machine tens of seconds more. test/deploy's
# TestPrivilegedDemoProgram builds through this target, so the demo it
# runs is built exactly as `make demo` builds it (-trimpath included).
demo-build: ## Build the agent, the controller, egctl and the demo program into bin/ (what make demo runs).
	@mkdir -p $(BIN)
	$(GOBUILD) -o $(BIN)/ ./agent/cmd/... ./controller/cmd/... ./test/demo/cmd/eastguard-demo

demo-clean: ## Stop a kept demo and remove whatever any demo run left (namespaces, pins, processes).
	@mkdir -p $(BIN)
	$(GOBUILD) -o $(BIN)/ ./test/demo/cmd/eastguard-demo
	$(BIN)/eastguard-demo --bin $(BIN) --clean

images: ## Container images eastguard/agent:dev and eastguard/controller:dev (needs a Docker engine).
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "images: no Docker engine on this machine"; exit 1; }
	docker build -f deploy/docker/agent.Dockerfile -t eastguard/agent:dev .
	docker build -f deploy/docker/controller.Dockerfile -t eastguard/controller:dev .

clean: ## Remove build outputs.
	rm -rf $(BIN)

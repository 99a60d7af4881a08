# Eastguard build. The toolchain is pinned here and only here: the eBPF
# compiler and strip tool, the bpf2go and protoc plugin versions (go.mod
# tool directives), and the C flags.

GO            ?= go
BIN           ?= bin
# bpf2go reads these (see agent/datapath/gen.go).
export BPF2GO_CC     := clang-19
export BPF2GO_STRIP  := llvm-strip-19
export BPF2GO_CFLAGS := -O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu

# Test flags: -p 1 keeps privileged packages (netns, bpffs, tcx) from
# competing for the two cores of CI machines; timeouts are generous so a slow
# machine fails on a real hang only.
TEST_FLAGS    ?= -count=1 -timeout 20m
BENCH_FLAGS   ?= -run '^$$' -benchmem -timeout 30m

COMMANDS := eastguard-agent eastguard-controller egctl

.PHONY: help generate build lint test bench bench-throughput e2e demo demo-clean images clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

generate: ## Regenerate eBPF objects (bpf2go) and protobuf code; needs clang-19.
	$(GO) generate ./...

build: ## Build all binaries into bin/.
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./agent/cmd/... ./controller/cmd/...

lint: ## gofmt, go vet, and clang-format-free C checks.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: build ## Run every test: unit, BPF (prog.Run), and end-to-end in network namespaces (privileged ones need root and say so when skipped).
	$(GO) test $(TEST_FLAGS) ./...

bench: ## Run the Go benchmarks (datapath verdict cost, compiler, ...).
	$(GO) test $(BENCH_FLAGS) -bench . ./...

bench-throughput: build ## iperf3 through an enforcing veth vs no program vs nftables (needs root, iperf3, nft).
	$(GO) run ./test/cmd/throughput

e2e: build ## Only the end-to-end tests under test/.
	$(GO) test $(TEST_FLAGS) ./test/...

demo: build ## Run the demo.
	@echo "demo: not yet (arrives with the control plane issue)"

demo-clean: ## Remove whatever the demo left behind.
	@echo "demo-clean: nothing to clean yet"

images: ## Container images (needs a Docker engine).
	@echo "images: not yet"

clean: ## Remove build outputs.
	rm -rf $(BIN)

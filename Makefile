# Ambit. `make help` lists the targets.
GO       ?= go
BIN      := _output/bin
# internal/version.BuildTags
TAGS     := grpcnotrace
# Extra flags for go test, e.g. GOTEST_FLAGS=-v or -run TestLabSmoke.
GOTEST_FLAGS ?=
# The Helm chart's tests: a module of their own, so that Helm's
# dependencies stay out of Ambit's.
CHARTTEST := deploy/charts/charttest
# A module of its own (so the main module does not depend on istio.io/istio):
# interop tests against Istio's HBONE implementation.
INTEROP  := ztunnel/interop
# A module of its own too: Ambit's ztunnels and node agents in the lab
# against Istio's own istiod (pilot-discovery, built by lab-bins from the
# istio.io/istio module pinned in $(ISTIO_E2E)/pilotbuild).
ISTIO_E2E := e2e/istio
# The image builder: a module of its own, so that go-containerregistry
# stays out of Ambit's binaries. `make images` writes the images into
# $(IMAGES_OUT) (docs/images.md); IMAGE_TAG and IMAGE_HUB override the
# chart's appVersion and hub, SOURCE_DATE_EPOCH the images' timestamps
# (default 0, the Unix epoch).
IMAGES   := deploy/images
# A module of its own too (go-containerregistry for the lab registry): the
# lab with a real node (kubelet, containerd, runc) pulling from a registry
# the test serves (docs/real-node-plan.md).
REALNODE := e2e/realnode
IMAGES_OUT := _output/images
IMAGE_TAG ?=
IMAGE_HUB ?=

.PHONY: help build images test unit lint generate generate-check bench bench-waypoint demo cluster clean clean-lab deps lab-bins

help:
	@echo "build           build every binary into $(BIN)"
	@echo "images          OCI images of istiod, ztunnel, the node agent and ambitctl into $(IMAGES_OUT)"
	@echo "test            lint, unit tests and the privileged lab tests (root)"
	@echo "lint            gofmt, go vet, staticcheck"
	@echo "generate        regenerate generated code (bpf2go, protobuf)"
	@echo "generate-check  fail if regeneration changes anything"
	@echo "bench           benchmarks"
	@echo "bench-waypoint  the waypoint against HAProxy, nginx and httputil.ReverseProxy, one table (root, ~5 min)"
	@echo "demo            start the lab and show it working (root)"
	@echo "cluster         start a cluster with a real node to install Ambit by hand, as the README says (root)"
	@echo "clean           remove build output"
	@echo "clean-lab       remove what a crashed lab left behind (root)"

build:
	$(GO) build -tags $(TAGS) -o $(BIN)/ ./samples/echo ./samples/bookinfo ./e2e/labctl ./cni/cmd/ambit-cni ./cni/cmd/ambit-cni-agent ./ztunnel/cmd/ztunnel ./istiod/cmd/istiod ./waypoint/cmd/waypoint ./ambitctl/cmd/ambitctl

images:
	cd $(IMAGES) && $(GO) run ./cmd/ambit-images -root $(CURDIR) -out $(CURDIR)/$(IMAGES_OUT) -version "$(IMAGE_TAG)" -hub "$(IMAGE_HUB)"

deps:
	@bash internal/lab/deps.sh

# Builds the Kubernetes and CoreDNS programs and Istio's pilot-discovery
# once; later runs find them in the cache (/var/cache/ambit, or
# $$AMBIT_CACHE_DIR).
lab-bins: deps
	$(GO) run ./e2e/labctl build

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	cd $(CHARTTEST) && $(GO) vet ./... && $(GO) tool staticcheck ./...
	$(GO) build -o $(BIN)/staticcheck honnef.co/go/tools/cmd/staticcheck
	cd $(INTEROP) && $(GO) vet ./... && $(CURDIR)/$(BIN)/staticcheck ./...
	cd $(ISTIO_E2E) && $(GO) vet ./... && $(CURDIR)/$(BIN)/staticcheck ./...
	cd $(IMAGES) && $(GO) vet ./... && $(CURDIR)/$(BIN)/staticcheck ./...
	cd $(REALNODE) && $(GO) vet ./... && $(CURDIR)/$(BIN)/staticcheck ./...

unit:
	$(GO) test -count=1 $(GOTEST_FLAGS) $$($(GO) list ./... | grep -v /e2e)
	cd $(CHARTTEST) && $(GO) test -count=1 $(GOTEST_FLAGS) ./...
	cd $(INTEROP) && $(GO) test -count=1 $(GOTEST_FLAGS) ./...

test: deps lint generate-check lab-bins
	cd $(CHARTTEST) && $(GO) test -count=1 $(GOTEST_FLAGS) ./...
	cd $(IMAGES) && $(GO) test -count=1 -timeout 10m $(GOTEST_FLAGS) ./...
	$(GO) test -count=1 -timeout 25m $(GOTEST_FLAGS) ./...
	cd $(INTEROP) && $(GO) test -count=1 -timeout 5m $(GOTEST_FLAGS) ./...
	cd $(ISTIO_E2E) && $(GO) test -count=1 -timeout 10m $(GOTEST_FLAGS) ./...
	cd $(REALNODE) && $(GO) test -count=1 -timeout 45m $(GOTEST_FLAGS) ./...

generate: deps
	$(GO) generate ./...

# Compares the tree before and after regeneration, so it also works with
# uncommitted edits in progress.
generate-check:
	@before=$$(git status --porcelain; git diff); \
	$(MAKE) --no-print-directory generate; \
	after=$$(git status --porcelain; git diff); \
	if [ "$$before" != "$$after" ]; then echo "regeneration changed files:"; git status --porcelain; exit 1; fi

# The C proxies BenchmarkProxies compares the waypoint with (Debian's).
BENCH_PKGS := haproxy nginx-light util-linux

# Root: the benchmarks make network namespaces and start labs.
bench: deps lab-bins
	@bash internal/lab/deps.sh $(BENCH_PKGS)
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...

# Only waypoint's BenchmarkProxies (docs/performance.md): each proxy
# pinned to CPU 0, the load on CPU 1; prints one table. Extra flags, e.g.
# BENCH_WAYPOINT_FLAGS='-proxies.duration 10s -proxies.rounds 5'.
# The waypoint is built as its image ships it (deploy/images: -trimpath,
# -s -w), so that its RSS is the shipped binary's.
BENCH_WAYPOINT_FLAGS ?=
bench-waypoint:
	@bash internal/lab/deps.sh $(BENCH_PKGS)
	CGO_ENABLED=0 $(GO) build -tags $(TAGS) -trimpath -ldflags '-s -w' -o $(BIN)/ ./waypoint/cmd/waypoint ./internal/benchproxy
	$(GO) test -c -o $(BIN)/waypoint.test ./waypoint
	cd waypoint && AMBIT_BENCH_BIN=$(CURDIR)/$(BIN) $(CURDIR)/$(BIN)/waypoint.test -test.run '^$$' -test.bench '^BenchmarkProxies$$' -test.benchtime 1x -test.timeout 15m $(BENCH_WAYPOINT_FLAGS)

demo: deps
	$(GO) run ./e2e/labctl demo

# The cluster of the real-node suite (e2e/realnode), for a person: prints
# the kubeconfig and the README's install commands, tears down on Ctrl-C.
cluster: deps
	cd $(REALNODE) && $(GO) build -o $(CURDIR)/$(BIN)/ambit-cluster ./cmd/ambit-cluster
	$(BIN)/ambit-cluster

clean:
	rm -rf _output

clean-lab:
	$(GO) run ./e2e/labctl clean

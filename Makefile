# phaul: see README.md. Every target that needs CRIU runs `deps` first.

export PATH := /usr/local/go/bin:$(PATH)
GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/phaul/phaul/internal/cli.Version=$(VERSION)
# Static binaries: they run on any Linux host of the architecture, and do
# not depend on the libraries of the host. (Not exported: -race needs cgo.)
GOBUILD := CGO_ENABLED=0 $(GO) build

.PHONY: all build deps test unit soak demo demo-local bench bench-go install dist fuzz clean fmt vet proto

all: build

build:
	$(GOBUILD) -ldflags '$(LDFLAGS)' -o bin/phaul ./cmd/phaul
	$(GOBUILD) -ldflags '$(LDFLAGS)' -o bin/phaul-service ./cmd/phaul-service
	$(GOBUILD) -o bin/phaul-workload ./internal/workload
	$(GOBUILD) -o bin/phaul-bench ./bench

# A CRIU that works on this kernel (fetched into /opt/phaul/criu if the
# system has none), and the tools the two-host tests use.
deps:
	@command -v ip >/dev/null && command -v nsenter >/dev/null || { \
		echo "deps: installing iproute2 and util-linux"; \
		apt-get install -y -qq iproute2 util-linux >/dev/null; }
	scripts/install-criu.sh

vet:
	$(GO) vet ./...

# Unit and integration tests, then every fuzz target for FUZZTIME. As root
# with CRIU the integration tests run for real; with CI=true a test that
# cannot run fails instead of skipping.
test: deps vet
	$(GO) test -race -count=1 -timeout 15m ./...
	GO=$(GO) FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

# Every fuzz target for FUZZTIME each (part of `make test`).
FUZZTIME ?= 20s
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

# Is the suite stable? The tests (no fuzzing) SOAK_N times on a fresh
# clone of HEAD, then once with every CPU busy; every failure by name
# (scripts/soak.sh).
SOAK_N ?= 5
soak: deps
	GO=$(GO) SOAK_N=$(SOAK_N) scripts/soak.sh

# Only the tests that need neither root nor CRIU.
unit:
	$(GO) test -race -count=1 -short ./...

# A live migration between two network-namespace hosts on this machine.
demo: deps build
	scripts/demo.sh

# Checkpoint and restore on this host only.
demo-local: deps build
	scripts/demo-local.sh

# phaul against CRIU alone and the manual workflow, on two network-namespace
# hosts, bare and at 1 Gbit/s (bench/main.go). BENCH_FLAGS=--help lists the
# options (sizes, runs, links); results go to bench/results/.
BENCH_FLAGS ?=
bench: deps build
	bin/phaul-bench $(BENCH_FLAGS)

# The Go microbenchmarks (page pump, checks, CRIU alone through the client).
bench-go: deps build
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./...

# Both binaries, the demo workload (PREFIX/lib/phaul), the systemd unit
# (its ExecStart points at PREFIX/bin) and an example config (never
# overwriting one that exists): scripts/install.sh.
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
install: build
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' UNITDIR='$(UNITDIR)' SYSCONFDIR='$(SYSCONFDIR)' scripts/install.sh

# A tarball to install on hosts without Go: unpack it and run
# `sudo ./scripts/install.sh --with-criu` (docs/ci.md).
DIST := build/phaul-$(VERSION)-linux-$(shell $(GO) env GOARCH)
dist: build
	rm -rf $(DIST) && mkdir -p $(DIST)/bin $(DIST)/scripts $(DIST)/dist
	cp bin/phaul bin/phaul-service bin/phaul-workload $(DIST)/bin/
	cp scripts/install.sh scripts/install-criu.sh $(DIST)/scripts/
	cp dist/phaul-service.service.in dist/phaul-service.conf $(DIST)/dist/
	cp README.md $(DIST)/
	tar -C build -czf $(DIST).tar.gz $(notdir $(DIST))
	rm -rf $(DIST)
	@echo $(DIST).tar.gz

fmt:
	gofmt -w $$(git ls-files '*.go')

# Regenerate internal/pb from phaul.proto (needs protoc and protoc-gen-go;
# the generated code is committed).
proto:
	protoc --go_out=. --go_opt=paths=source_relative internal/pb/phaul.proto

clean:
	rm -rf bin build

# Makefile: the build, test and install contract for developers, CI and the
# Yocto layer (a recipe calls `oe_runmake build-agent install-bin ...`).
# V=1 shows the commands; GOFLAGS and TAGS pass through to go.

GO         ?= go
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
TAGS       ?=
BIN        ?= bin
LDFLAGS    := -s -w -X main.version=$(VERSION)
BUILDFLAGS := -trimpath -ldflags "$(LDFLAGS)" $(if $(TAGS),-tags "$(TAGS)")

prefix          ?= /usr
bindir          ?= $(prefix)/bin
sysconfdir      ?= /etc
systemd_unitdir ?= /lib/systemd
DESTDIR         ?=

# Fuzz budget per target in `make test` (the seed corpora always run in
# `unit`). A count, not a duration: Go 1.26's fuzz coordinator can fail a
# duration-bounded run with a spurious "context deadline exceeded" at the
# deadline (golang/go#75804, fixed in Go 1.27); a count has no deadline.
FUZZTIME ?= 20000x

ifeq ($(V),1)
Q :=
else
Q := @
endif

.PHONY: all build build-agent build-simulator cross build-armv6 build-armv7 build-arm64 \
	test deps vet unit e2e armtest fuzz-short bench run lint check \
	install-bin install-systemd install-conf clean

all: build

build: build-agent build-simulator

build-agent:
	$(Q)CGO_ENABLED=0 $(GO) build $(BUILDFLAGS) -o $(BIN)/device-agent ./cmd/device-agent

build-simulator:
	$(Q)CGO_ENABLED=0 $(GO) build $(BUILDFLAGS) -o $(BIN)/simulator ./cmd/simulator

# Static agents for the boards: armv6 (Raspberry Pi Zero/1), armv7 (Raspberry
# Pi 2/3, BeagleBone Black), arm64 (Raspberry Pi 3/4/5 64-bit).
cross: build-armv6 build-armv7 build-arm64

build-armv6:
	$(Q)CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=6 $(GO) build $(BUILDFLAGS) -o $(BIN)/linux_armv6/device-agent ./cmd/device-agent
build-armv7:
	$(Q)CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 $(GO) build $(BUILDFLAGS) -o $(BIN)/linux_armv7/device-agent ./cmd/device-agent
build-arm64:
	$(Q)CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build $(BUILDFLAGS) -o $(BIN)/linux_arm64/device-agent ./cmd/device-agent

# test: everything CI runs. Installs what is missing first.
test: deps vet unit e2e armtest fuzz-short

deps:
	$(Q)./scripts/install-deps.sh

vet:
	$(Q)$(GO) vet ./...

# Unit tests with the race detector (cgo on: -race needs it).
unit:
	$(Q)CGO_ENABLED=1 $(GO) test -race -count=1 ./internal/... ./cmd/... ./test/pkgdoc/...

# End-to-end tests: real processes built from this repo on loopback.
e2e: build
	$(Q)E2E_BIN=$(abspath $(BIN)) $(GO) test -count=1 -timeout 15m ./test/e2e/...

# The binaries that ship to a board, run under qemu-user: `version`, `check`
# and a short real run against the fake backend on loopback.
armtest: build build-armv7 build-arm64
	$(Q)for arch in armv7:qemu-arm-static arm64:qemu-aarch64-static; do \
		dir=$${arch%%:*}; emu=$${arch##*:}; \
		echo "armtest: linux_$$dir under $$emu"; \
		E2E_BIN=$(abspath $(BIN)) E2E_AGENT=$(abspath $(BIN))/linux_$$dir/device-agent E2E_AGENT_WRAPPER=$$emu \
			$(GO) test -count=1 -timeout 10m -run 'TestSmoke' ./test/e2e/... || exit 1; \
	done

FUZZ_TARGETS := internal/menderapi:FuzzAuthRequest internal/config:FuzzConfigLoad \
	internal/identity:FuzzIdentityParse internal/retry:FuzzRetryAfter internal/fakemender:FuzzAuthRequest \
	internal/ambassador:FuzzAuthRequest internal/ambassador:FuzzParseBlacklist internal/ambassador:FuzzParseBinding \
	internal/ambassador:FuzzIdentityPolicy internal/ambassador:FuzzPubKeyPEM \
	internal/pki:FuzzParsePrivateKeyPEM internal/keystore:FuzzKeyRef internal/keystore:FuzzTPMHandleRef \
	internal/keystore:FuzzTPMResponse internal/fleet:FuzzHistogramJSON internal/fleet:FuzzParseFlags

# Every fuzz target for FUZZTIME executions each.
fuzz-short:
	$(Q)for spec in $(FUZZ_TARGETS); do \
		pkg=$${spec%%:*}; fn=$${spec##*:}; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) ./$$pkg >/tmp/fuzz-$$$$.log 2>&1 || { cat /tmp/fuzz-$$$$.log; echo "fuzz $$pkg $$fn failed"; exit 1; }; \
		echo "fuzz-short: $$pkg $$fn ok"; \
	done

bench:
	$(Q)$(GO) run ./scripts/benchtable -- ./internal/... ./test/bench/...

# The first command to run: backend, ambassador, fresh PKI, a fleet of
# virtual devices and one real device-agent, with live progress and reports.
run: build
	$(Q)$(BIN)/simulator demo $(DEMO_FLAGS)

lint: vet
	$(Q)test -z "$$(gofmt -l . | tee /dev/stderr)"

check: lint test

install-bin: build-agent
	install -d $(DESTDIR)$(bindir)
	install -m 0755 $(BIN)/device-agent $(DESTDIR)$(bindir)/device-agent

install-systemd:
	install -d $(DESTDIR)$(systemd_unitdir)/system
	install -m 0644 support/device-agent.service $(DESTDIR)$(systemd_unitdir)/system/device-agent.service

install-conf:
	install -d $(DESTDIR)$(sysconfdir)/mender
	install -m 0644 support/mender.conf $(DESTDIR)$(sysconfdir)/mender/mender.conf

clean:
	rm -rf $(BIN)

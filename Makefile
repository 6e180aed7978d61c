# Makefile: the build, test and install contract for developers, CI and the
# Yocto layer (a recipe calls `oe_runmake build-agent install-bin ...`).
# V=1 shows the commands; GOFLAGS and TAGS pass through to go.

GO         ?= go
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
TAGS       ?=
BIN        ?= bin
LDFLAGS    := -s -w -X main.version=$(VERSION) -X main.commit=$(shell git rev-parse --short=12 HEAD 2>/dev/null) -X main.date=$(shell date -u -d @$${SOURCE_DATE_EPOCH:-$$(date +%s)} +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)
BUILDFLAGS  = -trimpath -ldflags "$(LDFLAGS)" $(call tagsflag,$(TAGS))
# The agent speaks HTTP/1.1 only, as Mender's clients do: every agent build
# drops net/http's bundled HTTP/2 (about 0.4 MB on armv7), plus TAGS.
AGENT_TAGS  = nethttpomithttp2 $(TAGS)
# The agent is also built without inlining, crypto and the runtime
# included: with the D-Bus role and serial provisioning in it, inlining
# costs 328 KB of the stripped armv7 agent (7.93 -> 7.60 MB; 262 KB of it in
# crypto). The price is slower crypto (on amd64, ECDSA P-256 sign 38 -> 67
# us, verify 68 -> 91 us, `go test -bench crypto/ecdsa`), paid once per TLS
# handshake or auth request: a few per poll interval of minutes.
AGENT_GCFLAGS = -gcflags=all=-l
# On 32-bit ARM the Go linker aligns the agent's segments to 64 KiB; Linux on
# 32-bit ARM has 4 KiB pages only, so 4 KiB alignment loses nothing and drops
# the padding: 118,784 bytes of the stripped armv7 agent (7.41 -> 7.29 MB).
# Other architectures keep Go's default (arm64 kernels may use 64 KiB pages).
ARM32_LDFLAGS = -R 0x1000
agent_ldflags = $(LDFLAGS) $(if $(filter arm,$(1)),$(ARM32_LDFLAGS))
agentflags  = -trimpath -ldflags "$(call agent_ldflags,$(1))" $(AGENT_GCFLAGS) $(call tagsflag,$(AGENT_TAGS))
# The GOARCH the agent is built for: the environment's (as Yocto's go class
# exports it), else the Go toolchain's default.
AGENT_GOARCH = $(or $(GOARCH),$(shell $(GO) env GOARCH))
AGENTFLAGS  = $(call agentflags,$(AGENT_GOARCH))
# tagsflag turns a space- or comma-separated tag list into one -tags flag.
comma := ,
empty :=
space := $(empty) $(empty)
tagsflag = $(if $(strip $(1)),-tags "$(subst $(space),$(comma),$(strip $(subst $(comma),$(space),$(1))))")

prefix          ?= /usr
bindir          ?= $(prefix)/bin
sysconfdir      ?= /etc
systemd_unitdir ?= /lib/systemd
datadir         ?= $(prefix)/share
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
	test deps vet unit e2e armtest fuzz-short yocto yocto-pins yocto-check bench run lint check \
	install-bin install-systemd install-conf install-mender-auth uninstall clean

all: build

build: build-agent build-simulator

build-agent:
	$(Q)CGO_ENABLED=0 $(GO) build $(AGENTFLAGS) -o $(BIN)/device-agent ./cmd/device-agent

build-simulator:
	$(Q)CGO_ENABLED=0 $(GO) build $(BUILDFLAGS) -o $(BIN)/simulator ./cmd/simulator

# Static agents for the boards: armv6 (Raspberry Pi Zero/1), armv7 (Raspberry
# Pi 2/3, BeagleBone Black), arm64 (Raspberry Pi 3/4/5 64-bit).
cross: build-armv6 build-armv7 build-arm64

build-armv6:
	$(Q)CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=6 $(GO) build $(call agentflags,arm) -o $(BIN)/linux_armv6/device-agent ./cmd/device-agent
build-armv7:
	$(Q)CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 $(GO) build $(call agentflags,arm) -o $(BIN)/linux_armv7/device-agent ./cmd/device-agent
build-arm64:
	$(Q)CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build $(call agentflags,arm64) -o $(BIN)/linux_arm64/device-agent ./cmd/device-agent

# test: everything CI runs. Installs what is missing first.
test: deps vet unit e2e armtest fuzz-short yocto

deps:
	$(Q)./scripts/install-deps.sh

vet:
	$(Q)$(GO) vet ./...

# Unit tests with the race detector (cgo on: -race needs it).
unit:
	$(Q)CGO_ENABLED=1 $(GO) test -race -count=1 ./internal/... ./cmd/... ./scripts/... ./test/pkgdoc/...

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
	internal/keystore:FuzzTPMResponse internal/fleet:FuzzHistogramJSON internal/fleet:FuzzParseFlags \
	internal/client:FuzzTokenExpiry internal/artifact:FuzzRead \
	internal/provision:FuzzFrameRoundTrip internal/provision:FuzzFrameDecode internal/provision:FuzzLiteDecode

# Every fuzz target for FUZZTIME executions each.
fuzz-short:
	$(Q)for spec in $(FUZZ_TARGETS); do \
		pkg=$${spec%%:*}; fn=$${spec##*:}; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) ./$$pkg >/tmp/fuzz-$$$$.log 2>&1 || { cat /tmp/fuzz-$$$$.log; echo "fuzz $$pkg $$fn failed"; exit 1; }; \
		echo "fuzz-short: $$pkg $$fn ok"; \
	done

# The Yocto layer yocto/meta-mtls: static checks, the Go module pins in sync
# with go.mod, and the real bitbake parser (scarthgap, wrynose, and
# scarthgap with meta-mender on a Raspberry Pi 4) over the snapshots in
# ../shared/yocto or $$YOCTO_SNAPSHOTS. About 5 minutes cold, 1 warm.
yocto:
	$(Q)$(GO) test -count=1 -timeout 30m ./test/yocto/...

# Rewrites the recipe's Go module pins (device-agent-go-mods*.inc,
# device-agent-licenses.inc) after go.mod changes.
yocto-pins:
	$(Q)$(GO) run ./scripts/yocto-pins

# yocto-check-layer over yocto/meta-mtls on scarthgap: about 18 minutes on
# 2 cores, so not part of `make test`.
yocto-check:
	$(Q)YOCTO_CHECK_LAYER=1 $(GO) test -count=1 -timeout 45m -v -run 'TestYoctoCheckLayer' ./test/yocto/...

# Benchmarks as a table, with the agent's footprint (stripped size per
# board, RSS after a minute of polling) measured on the binaries built here.
bench: build cross
	$(Q)BENCH_BIN=$(abspath $(BIN)) $(GO) run ./scripts/benchtable -- ./internal/... ./test/bench/...

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

# The unit, with ExecStart pointing at $(bindir).
install-systemd:
	install -d $(DESTDIR)$(systemd_unitdir)/system $(BIN)
	sed 's|^ExecStart=/usr/bin/device-agent |ExecStart=$(bindir)/device-agent |' support/device-agent.service >$(BIN)/device-agent.service
	install -m 0644 $(BIN)/device-agent.service $(DESTDIR)$(systemd_unitdir)/system/device-agent.service

# The example mender.conf, only where there is none: an existing one (or a
# symlink to one) is the operator's and is never overwritten. 0600: it may
# get a TenantToken.
CONF := $(DESTDIR)$(sysconfdir)/mender/mender.conf
install-conf:
	install -d $(DESTDIR)$(sysconfdir)/mender
	$(Q)if [ -e "$(CONF)" ] || [ -L "$(CONF)" ]; then \
		echo "install-conf: $(CONF) exists, left unchanged (the example is support/mender.conf)"; \
	else \
		install -m 0600 support/mender.conf "$(CONF)" && echo "install-conf: installed $(CONF)"; \
	fi

# The agent as Mender 4/5's mender-auth: the mender-auth symlink next to
# the agent (the agent acts as mender-auth when called by that name),
# mender-authd.service with ExecStart pointing at $(bindir), and the D-Bus
# policy and activation files where Mender's own package puts them:
# $(datadir)/dbus-1/system.d and $(datadir)/dbus-1/system-services. It
# replaces Mender's mender-auth; install the agent itself with install-bin.
install-mender-auth:
	install -d $(DESTDIR)$(bindir) $(DESTDIR)$(systemd_unitdir)/system $(BIN) \
		$(DESTDIR)$(datadir)/dbus-1/system.d $(DESTDIR)$(datadir)/dbus-1/system-services
	ln -sfn device-agent $(DESTDIR)$(bindir)/mender-auth
	sed 's|^ExecStart=/usr/bin/mender-auth |ExecStart=$(bindir)/mender-auth |' support/mender-authd.service >$(BIN)/mender-authd.service
	install -m 0644 $(BIN)/mender-authd.service $(DESTDIR)$(systemd_unitdir)/system/mender-authd.service
	sed 's|^Exec=/usr/bin/mender-auth |Exec=$(bindir)/mender-auth |' support/dbus/io.mender.AuthenticationManager.service >$(BIN)/io.mender.AuthenticationManager.service
	install -m 0644 support/dbus/io.mender.AuthenticationManager.conf $(DESTDIR)$(datadir)/dbus-1/system.d/io.mender.AuthenticationManager.conf
	install -m 0644 $(BIN)/io.mender.AuthenticationManager.service $(DESTDIR)$(datadir)/dbus-1/system-services/io.mender.AuthenticationManager.service

# Removes what install-bin, install-systemd and install-mender-auth
# installed. mender.conf and the datastore (/var/lib/mender, /data/mender)
# stay. On a running system, `systemctl disable --now device-agent
# mender-authd` first.
uninstall:
	rm -f $(DESTDIR)$(bindir)/device-agent $(DESTDIR)$(systemd_unitdir)/system/device-agent.service
	rm -f $(DESTDIR)$(bindir)/mender-auth $(DESTDIR)$(systemd_unitdir)/system/mender-authd.service \
		$(DESTDIR)$(datadir)/dbus-1/system.d/io.mender.AuthenticationManager.conf \
		$(DESTDIR)$(datadir)/dbus-1/system-services/io.mender.AuthenticationManager.service
	$(Q)echo "uninstall: kept $(CONF) and the datastore (/var/lib/mender, /data/mender)"

clean:
	rm -rf $(BIN)

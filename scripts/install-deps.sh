#!/usr/bin/env bash
# Installs what `make test` needs and a fresh machine lacks: Debian packages
# (qemu-user-static for the ARM smoke test, openssl for the mTLS-guide test,
# swtpm for the TPM tests, gcc and libssl-dev for cgo: -race and the TPM
# simulator, systemd for systemd-analyze, which rates the hardening of
# support/device-agent.service, and the real Mender tools the end-to-end tests
# run: mender-artifact, mender-cli, mender-client, mender-connect, dbus for a
# private bus and the libraries of Mender's C++ client in ../shared/peers), and
# what bitbake needs for the Yocto layer's parse tests. Already-present tools are left alone, so a
# second run costs nothing and needs no network.
set -euo pipefail

need=()
command -v qemu-arm-static >/dev/null 2>&1 || need+=(qemu-user-static)
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v swtpm >/dev/null 2>&1 || need+=(swtpm swtpm-tools)
# cgo for -race and the go-tpm-tools TPM simulator (which links OpenSSL).
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
[ -f /usr/include/openssl/evp.h ] || need+=(libssl-dev)
# systemd-analyze security/verify for the unit test (installing the package
# does not make systemd PID 1).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# mender-artifact (3.9) for the internal/artifact interop tests.
command -v mender-artifact >/dev/null 2>&1 || need+=(mender-artifact)
# mender-cli (1.9) and Mender's Go client 3.4 (`mender`) for test/e2e/realtools*.
command -v mender-cli >/dev/null 2>&1 || need+=(mender-cli)
command -v mender >/dev/null 2>&1 || need+=(mender-client)
# Debian's mender-connect (2.1) and dbus-daemon for the mender-auth drop-in
# tests (test/e2e/menderauth_test.go), which start a private bus.
command -v mender-connect >/dev/null 2>&1 || need+=(mender-connect)
command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus)
# nginx, the mTLS-terminating proxy `make bench` compares the ambassador with,
# and xmllint, which checks the fleet report's JUnit file against its schema.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v xmllint >/dev/null 2>&1 || need+=(libxml2-utils)
# The shared libraries of Mender's C++ 5.1.0 client (../shared/peers/mender-5.1.0,
# `ldd bin/mender-update`), by soname, with the Debian 12 package of each.
libs=$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null || true)
while read -r soname pkg; do
	grep -qF "	$soname " <<<"$libs" || need+=("$pkg")
done <<'EOF'
liblmdb.so.0 liblmdb0
libarchive.so.13 libarchive13
libboost_log.so.1.74.0 libboost-log1.74.0
libboost_thread.so.1.74.0 libboost-thread1.74.0
libboost_filesystem.so.1.74.0 libboost-filesystem1.74.0
libdbus-1.so.3 libdbus-1-3
libssl.so.3 libssl3
libsystemd.so.0 libsystemd0
libzstd.so.1 libzstd1
liblz4.so.1 liblz4-1
libgcrypt.so.20 libgcrypt20
EOF

# bitbake, for the Yocto layer's parse tests (test/yocto): the host tools its
# sanity check asks for, and the locales package for en_US.UTF-8.
for tool in chrpath cpio diffstat gawk; do
	command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
[ -f /etc/locale.gen ] || need+=(locales)

# bitbake_setup enables the en_US.UTF-8 locale bitbake refuses to start
# without, and creates the unprivileged user the tests run bitbake as
# (bitbake will not run as root). Both only when missing.
bitbake_setup() {
	local asroot=""
	[ "$(id -u)" -eq 0 ] || asroot="sudo"
	if ! locale -a 2>/dev/null | grep -qi '^en_US\.utf-\?8$'; then
		echo "install-deps: enabling the en_US.UTF-8 locale"
		$asroot sed -i 's/^# *\(en_US\.UTF-8 UTF-8\)/\1/' /etc/locale.gen
		grep -q '^en_US\.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' | $asroot tee -a /etc/locale.gen >/dev/null
		$asroot locale-gen >/dev/null
	fi
	if ! id mtls-bitbake >/dev/null 2>&1; then
		echo "install-deps: creating the user mtls-bitbake (runs bitbake in test/yocto)"
		$asroot useradd --create-home --shell /bin/bash mtls-bitbake
	fi
}

if [ ${#need[@]} -eq 0 ]; then
	bitbake_setup
	echo "install-deps: everything present"
	exit 0
fi
# de-duplicate
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		sudo="sudo"
	else
		echo "install-deps: need root (or sudo) to install: ${need[*]}" >&2
		exit 1
	fi
fi
echo "install-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null || true
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
bitbake_setup
echo "install-deps: done"

#!/usr/bin/env bash
# Installs what `make test` needs and a fresh machine lacks: Debian packages
# (qemu-user-static for the ARM smoke test, openssl for the mTLS-guide test,
# swtpm for the TPM tests, gcc and libssl-dev for cgo: -race and the TPM
# simulator, systemd for systemd-analyze, which rates the hardening of
# support/device-agent.service). Already-present tools are left alone, so a
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

if [ ${#need[@]} -eq 0 ]; then
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
echo "install-deps: done"

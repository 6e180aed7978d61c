#!/usr/bin/env bash
# make run: the fake Mender backend (simulator serve --auto-accept) and one
# device-agent against it on loopback, the agent's log on screen, until Ctrl-C.
set -euo pipefail
bin=${1:?usage: run-demo.sh BINDIR}
work=$(mktemp -d "${TMPDIR:-/tmp}/mtls-agent-demo.XXXXXX")
port=${DEMO_PORT:-8443}

cleanup() {
	[ -n "${agent_pid:-}" ] && kill "$agent_pid" 2>/dev/null || true
	[ -n "${serve_pid:-}" ] && kill "$serve_pid" 2>/dev/null || true
	wait 2>/dev/null || true
	echo "demo stopped; files kept in $work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

"$bin/simulator" serve --dir "$work/server" --listen "127.0.0.1:$port" --auto-accept >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 1 100); do
	grep -q '  CA:' "$work/serve.out" 2>/dev/null && break
	kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
	sleep 0.1
done
cat "$work/serve.out"
url=$(awk '$1=="URL:"{print $2}' "$work/serve.out")
ca=$(awk '$1=="CA:"{print $2}' "$work/serve.out")

mkdir -p "$work/device/identity" "$work/device/inventory" "$work/device/state"
printf '#!/bin/sh\necho mac=02:00:00:de:00:01\n' >"$work/device/identity/mender-device-identity"
printf '#!/bin/sh\necho demo=make-run\nuname -m | sed "s/^/cpu_arch=/"\n' >"$work/device/inventory/mender-inventory-demo"
chmod +x "$work/device/identity/mender-device-identity" "$work/device/inventory/mender-inventory-demo"
echo "device_type=raspberrypi4" >"$work/device/state/device_type"
cat >"$work/device/mender.conf" <<CONF
{
  "ServerURL": "$url",
  "ServerCertificate": "$ca",
  "UpdatePollIntervalSeconds": 10,
  "InventoryPollIntervalSeconds": 30,
  "RetryPollIntervalSeconds": 10
}
CONF
echo
echo "device-agent daemon (Ctrl-C to stop):"
MENDER_DATA_DIR="$work/device" MENDER_DATASTORE_DIR="$work/device/state" \
	"$bin/device-agent" daemon --config "$work/device/mender.conf" --fallback-config "" &
agent_pid=$!
wait "$agent_pid"

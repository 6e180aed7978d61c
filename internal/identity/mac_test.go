package identity_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/identity"
)

// sysIf is one Ethernet interface of a fake /sys/class/net tree with the
// files the MAC fallback ranks by; "" leaves a file out.
type sysIf struct {
	name, address, ifindex string
	assign                 string // addr_assign_type: 0 permanent, 1 random, 2 stolen, 3 set
	flags                  string // e.g. 0x1003 (IFF_UP set) or 0x1002 (down)
	operstate              string
}

// Flags values as the kernel prints them.
const (
	upCarrier = "0x11003" // IFF_UP | IFF_LOWER_UP
	upNoCable = "0x1003"  // IFF_UP, no carrier
	down      = "0x1002"
)

func fakeSysNet(t *testing.T, ifs ...sysIf) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "net")
	require.NoError(t, os.MkdirAll(root, 0o755))
	for _, i := range ifs {
		dir := filepath.Join(root, i.name)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		files := map[string]string{"type": "1", "address": i.address, "ifindex": i.ifindex,
			"addr_assign_type": i.assign, "flags": i.flags, "operstate": i.operstate}
		for file, v := range files {
			if v != "" {
				require.NoError(t, os.WriteFile(filepath.Join(dir, file), []byte(v+"\n"), 0o444))
			}
		}
	}
	return root
}

func TestIdentifyMACPreference(t *testing.T) {
	tests := []struct {
		name      string
		ifs       []sysIf
		wantIface string
		wantWarn  []string // substrings, one per expected warning, in order
	}{
		{
			name: "permanent beats a random MAC with a lower ifindex",
			ifs: []sysIf{{"usb0", "12:34:56:78:9a:01", "2", "1", upCarrier, "up"},
				{"eth0", "52:54:00:00:00:01", "3", "0", upCarrier, "up"}},
			wantIface: "eth0",
		},
		{
			name: "up beats down among permanent MACs",
			ifs: []sysIf{{"eth0", "52:54:00:00:00:01", "2", "0", down, "down"},
				{"wlan0", "52:54:00:00:00:02", "3", "0", upCarrier, "up"}},
			wantIface: "wlan0",
		},
		{
			name: "lowest ifindex among equals, as Mender's stock script",
			ifs: []sysIf{{"eth1", "52:54:00:00:00:03", "4", "0", upCarrier, "up"},
				{"eth0", "52:54:00:00:00:02", "3", "0", upCarrier, "up"}},
			wantIface: "eth0",
		},
		{
			name: "a cable is not needed: administratively up counts",
			ifs: []sysIf{{"eth0", "52:54:00:00:00:01", "2", "0", upNoCable, "down"},
				{"eth1", "52:54:00:00:00:02", "3", "0", upCarrier, "up"}},
			wantIface: "eth0",
		},
		{
			name: "a MAC set by software beats a random one, without warning",
			ifs: []sysIf{{"usb0", "12:34:56:78:9a:01", "2", "1", upCarrier, "up"},
				{"br0", "52:54:00:00:00:05", "7", "3", upCarrier, "up"}},
			wantIface: "br0",
		},
		{
			name: "permanent beats set",
			ifs: []sysIf{{"br0", "52:54:00:00:00:05", "3", "3", upCarrier, "up"},
				{"eth0", "52:54:00:00:00:01", "4", "0", upCarrier, "up"}},
			wantIface: "eth0",
		},
		{
			name: "a permanent MAC that is down beats a random one that is up, with a warning",
			ifs: []sysIf{{"usb0", "12:34:56:78:9a:01", "2", "1", upCarrier, "up"},
				{"eth0", "52:54:00:00:00:01", "3", "0", down, "down"}},
			wantIface: "eth0",
			wantWarn:  []string{"52:54:00:00:00:01 of eth0, which is down: no interface with a permanent MAC address is up"},
		},
		{
			name:      "only a random MAC",
			ifs:       []sysIf{{"usb0", "12:34:56:78:9a:01", "2", "1", upCarrier, "up"}},
			wantIface: "usb0",
			wantWarn:  []string{"12:34:56:78:9a:01 of usb0 was generated at random by the kernel (addr_assign_type 1)"},
		},
		{
			name: "random and down: two warnings",
			ifs: []sysIf{{"usb0", "12:34:56:78:9a:01", "2", "1", down, "down"},
				{"usb1", "12:34:56:78:9a:02", "3", "1", down, "down"}},
			wantIface: "usb0",
			wantWarn:  []string{"generated at random", "usb0, which is down: no interface with a usable MAC address is up"},
		},
		{
			name: "operstate when flags is unreadable",
			ifs: []sysIf{{"eth0", "52:54:00:00:00:01", "2", "0", "", "down"},
				{"eth1", "52:54:00:00:00:02", "3", "0", "", "up"}},
			wantIface: "eth1",
		},
		{
			name: "no addr_assign_type, flags or operstate (old kernels): lowest ifindex, no warning",
			ifs: []sysIf{{"eth1", "52:54:00:00:00:02", "3", "", "", ""},
				{"eth0", "52:54:00:00:00:01", "2", "", "", ""}},
			wantIface: "eth0",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeSysNet(t, tt.ifs...)
			dataDir := t.TempDir() // no identity script
			res, err := identity.Identify(t.Context(), identity.Options{DataDir: dataDir, SysClassNet: root})
			require.NoError(t, err)
			assert.Equal(t, tt.wantIface, res.Interface)
			var wantMAC string
			for _, i := range tt.ifs {
				if i.name == tt.wantIface {
					wantMAC = i.address
				}
			}
			assert.Equal(t, map[string][]string{"mac": {wantMAC}}, res.Attributes)
			require.Len(t, res.Warnings, len(tt.wantWarn), "warnings: %q", res.Warnings)
			for i, w := range tt.wantWarn {
				assert.Contains(t, res.Warnings[i], w)
				assert.Contains(t, res.Warnings[i], "install an identity script at "+filepath.Join(dataDir, "identity", "mender-device-identity"),
					"each warning names the fix")
				assert.NotContains(t, res.Warnings[i], "\n", "one line")
			}
		})
	}
}

// The script wins over the MAC fallback, with no interface and no warning.
func TestIdentifyScriptHasNoInterface(t *testing.T) {
	requireShell(t)
	dir := t.TempDir()
	writeScript(t, dir, "identity/mender-device-identity", "#!/bin/sh\necho serial=1\n", 0o755)
	root := fakeSysNet(t, sysIf{"usb0", "12:34:56:78:9a:01", "2", "1", down, "down"})
	res, err := identity.Identify(t.Context(), identity.Options{DataDir: dir, SysClassNet: root})
	require.NoError(t, err)
	assert.Equal(t, map[string][]string{"serial": {"1"}}, res.Attributes)
	assert.Empty(t, res.Interface)
	assert.Empty(t, res.Warnings)
}

// Collect, for callers that want only the attributes, logs the warnings at
// warn level; the info line names the interface Mender's stock script would
// have used when it differs.
func TestCollectLogsMACWarnings(t *testing.T) {
	var buf bytes.Buffer
	root := fakeSysNet(t, sysIf{"eth0", "52:54:00:00:00:01", "2", "0", down, "down"},
		sysIf{"usb0", "12:34:56:78:9a:01", "1", "1", upCarrier, "up"})
	got, err := identity.Collect(t.Context(), identity.Options{DataDir: t.TempDir(), SysClassNet: root,
		Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	require.NoError(t, err)
	assert.Equal(t, map[string][]string{"mac": {"52:54:00:00:00:01"}}, got)
	assert.Contains(t, buf.String(), "level=WARN")
	assert.Contains(t, buf.String(), "which is down")
	assert.Contains(t, buf.String(), "mender_stock_script_iface=usb0")
}

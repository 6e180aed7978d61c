package identity_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/identity"
)

// Script tests do not run in parallel: writing an executable while another
// goroutine forks can make exec fail with ETXTBSY (golang/go#22315).

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string][]string
		errLine string // substring of the error; "" = no error
	}{
		{name: "empty", in: "", want: map[string][]string{}},
		{name: "one pair", in: "mac=52:54:00:ab:cd:ef\n", want: map[string][]string{"mac": {"52:54:00:ab:cd:ef"}}},
		{name: "no final newline", in: "a=1\nb=2", want: map[string][]string{"a": {"1"}, "b": {"2"}}},
		{name: "repeated key", in: "ip=10.0.0.1\nos=linux\nip=10.0.0.2\n", want: map[string][]string{"ip": {"10.0.0.1", "10.0.0.2"}, "os": {"linux"}}},
		{name: "equals in value", in: "url=https://x/?a=b=c\n", want: map[string][]string{"url": {"https://x/?a=b=c"}}},
		{name: "empty value", in: "serial=\n", want: map[string][]string{"serial": {""}}},
		{name: "empty lines skipped", in: "\n\na=1\n\n\nb=2\n\n", want: map[string][]string{"a": {"1"}, "b": {"2"}}},
		{name: "CRLF", in: "a=1\r\nb=2\r\n\r\n", want: map[string][]string{"a": {"1"}, "b": {"2"}}},
		{name: "several trailing CRs", in: "a=1\r\r\n", want: map[string][]string{"a": {"1"}}},
		{name: "inner spaces verbatim", in: "name= my  device \n", want: map[string][]string{"name": {" my  device "}}},
		{name: "inner CR verbatim", in: "a=x\ry\n", want: map[string][]string{"a": {"x\ry"}}},
		{name: "key with spaces verbatim", in: " k =v\n", want: map[string][]string{" k ": {"v"}}},
		{name: "missing equals", in: "a=1\nhello world\n", errLine: `line 2: malformed key=value output: "hello world" has no '='`},
		{name: "empty key", in: "a=1\n\n=value\n", errLine: `line 3: malformed key=value output: "=value" has an empty key`},
		{name: "blank but not empty line", in: "a=1\n   \n", errLine: "line 2:"},
		{name: "long garbage line shortened", in: string(bytes.Repeat([]byte("x"), 500)), errLine: `xxx..." has no '='`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := identity.Parse([]byte(tt.in))
			if tt.errLine != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, identity.ErrMalformed)
				assert.Contains(t, err.Error(), tt.errLine)
				assert.Nil(t, got)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// writeScript writes an executable (or not) sh script under dir.
func writeScript(t *testing.T, dir, rel, body string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, filepath.FromSlash(rel))
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), mode))
	require.NoError(t, os.Chmod(path, mode)) // WriteFile's mode is subject to umask
	return path
}

func requireShell(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("/bin/sh"); err != nil {
		t.Skip("needs /bin/sh")
	}
}

func TestCollectScript(t *testing.T) {
	requireShell(t)
	tests := []struct {
		name     string
		body     string
		mode     os.FileMode
		timeout  time.Duration
		want     map[string][]string
		errIs    error
		exitCode int      // checked when errIs is nil and an error is expected
		contains []string // substrings of the error
	}{
		{
			name: "success", body: `printf 'mac=52:54:00:ab:cd:ef\nserial=1\nserial=2\n'`, mode: 0o755,
			want: map[string][]string{"mac": {"52:54:00:ab:cd:ef"}, "serial": {"1", "2"}},
		},
		{
			name: "stderr ignored on success", body: `echo "warming up" >&2; echo cpu=x`, mode: 0o755,
			want: map[string][]string{"cpu": {"x"}},
		},
		{
			name: "success with a background child holding stdout", body: "sleep 3 &\necho mac=aa", mode: 0o755,
			want: map[string][]string{"mac": {"aa"}},
		},
		{
			name: "non-zero exit", body: "echo mac=aa\necho '' >&2\necho 'no eth0 here' >&2\necho 'second line' >&2\nexit 3", mode: 0o755,
			exitCode: 3, contains: []string{"exit status 3", `(stderr: "no eth0 here")`, "remove it to use the MAC address"},
		},
		{
			name: "garbage output", body: `echo "this is not key value"`, mode: 0o755,
			errIs: identity.ErrMalformed, contains: []string{"line 1", "this is not key value"},
		},
		{
			name: "invalid UTF-8", body: `printf 'a=1\nb=\377\n'`, mode: 0o755,
			errIs: identity.ErrMalformed, contains: []string{"line 2", "not valid UTF-8"},
		},
		{
			name: "empty output", body: `exit 0`, mode: 0o755,
			errIs: identity.ErrEmptyOutput,
		},
		{
			name: "only blank lines", body: `printf '\n\r\n\n'`, mode: 0o755,
			errIs: identity.ErrEmptyOutput,
		},
		{
			name: "too much output", body: `yes k=v | head -c 1100000`, mode: 0o755,
			errIs: identity.ErrMalformed, contains: []string{"more than 1048576 bytes"},
		},
		{
			name: "timeout", body: `echo 'about to hang' >&2; sleep 30`, mode: 0o755, timeout: 200 * time.Millisecond,
			errIs: identity.ErrTimeout, contains: []string{"after 200ms", "about to hang"},
		},
		{
			name: "timeout with a child holding stdout", body: "sleep 30 &\nsleep 30", mode: 0o755, timeout: 200 * time.Millisecond,
			errIs: identity.ErrTimeout,
		},
		{
			name: "not executable", body: `echo mac=aa`, mode: 0o644,
			contains: []string{"is not executable", "chmod +x"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			script := writeScript(t, dir, "identity/mender-device-identity", tt.body, tt.mode)
			got, err := identity.Collect(t.Context(), identity.Options{
				DataDir:     dir,
				Timeout:     tt.timeout,
				SysClassNet: filepath.Join(dir, "no-sysfs"), // the script, not the MAC, must be used
			})
			if tt.want != nil {
				require.NoError(t, err)
				assert.Equal(t, tt.want, got)
				return
			}
			require.Error(t, err)
			assert.Nil(t, got)
			assert.Contains(t, err.Error(), script, "the error names the script")
			for _, s := range tt.contains {
				assert.Contains(t, err.Error(), s)
			}
			if tt.errIs != nil {
				assert.ErrorIs(t, err, tt.errIs)
			}
			if tt.exitCode != 0 {
				var se *identity.ScriptError
				require.ErrorAs(t, err, &se)
				assert.Equal(t, tt.exitCode, se.ExitCode)
				assert.Equal(t, script, se.Script)
			}
		})
	}
}

func TestCollectScriptIsDirectory(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "identity", "mender-device-identity"), 0o755))
	_, err := identity.Collect(t.Context(), identity.Options{DataDir: dir})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is not a regular file")
}

func TestCollectCancelled(t *testing.T) {
	requireShell(t)
	dir := t.TempDir()
	writeScript(t, dir, "identity/mender-device-identity", "echo mac=aa", 0o755)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := identity.Collect(ctx, identity.Options{DataDir: dir})
	require.ErrorIs(t, err, context.Canceled)
	assert.NotContains(t, err.Error(), "fix the script", "cancellation is not the script's fault")
}

// netIf is one interface of a fake /sys/class/net tree; "" leaves a file out.
type netIf struct {
	name, typ, address, ifindex string
}

func fakeSysfs(t *testing.T, ifs []netIf) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "net")
	require.NoError(t, os.MkdirAll(root, 0o755))
	// A regular file, as bonding_masters is in the real tree.
	require.NoError(t, os.WriteFile(filepath.Join(root, "bonding_masters"), []byte("\n"), 0o644))
	for _, i := range ifs {
		dir := filepath.Join(root, i.name)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		for file, v := range map[string]string{"type": i.typ, "address": i.address, "ifindex": i.ifindex} {
			if v != "" {
				require.NoError(t, os.WriteFile(filepath.Join(dir, file), []byte(v+"\n"), 0o444))
			}
		}
	}
	return root
}

func TestCollectMACFallback(t *testing.T) {
	lo := netIf{"lo", "772", "00:00:00:00:00:00", "1"}
	tests := []struct {
		name    string
		ifs     []netIf
		wantMAC string // "" = error wrapping ErrNoIdentity
	}{
		{
			name:    "lowest ifindex wins",
			ifs:     []netIf{lo, {"eth1", "1", "52:54:00:00:00:03", "3"}, {"eth0", "1", "52:54:00:00:00:02", "2"}, {"wlan0", "1", "52:54:00:00:00:04", "4"}},
			wantMAC: "52:54:00:00:00:02",
		},
		{
			name:    "ifindex compared as numbers",
			ifs:     []netIf{{"eth10", "1", "52:54:00:00:00:0a", "10"}, {"eth9", "1", "52:54:00:00:00:09", "9"}},
			wantMAC: "52:54:00:00:00:09",
		},
		{
			name:    "dummy skipped",
			ifs:     []netIf{{"dummy0", "1", "aa:bb:cc:dd:ee:01", "2"}, {"enp1s0", "1", "aa:bb:cc:dd:ee:02", "5"}},
			wantMAC: "aa:bb:cc:dd:ee:02",
		},
		{
			name:    "non-ether skipped",
			ifs:     []netIf{lo, {"can0", "280", "", "2"}, {"wwan0", "65534", "", "3"}, {"ib0", "32", "80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:1b:2c", "4"}, {"end0", "1", "02:12:61:13:6c:42", "9"}},
			wantMAC: "02:12:61:13:6c:42",
		},
		{
			name:    "all-zero MAC skipped",
			ifs:     []netIf{{"eth0", "1", "00:00:00:00:00:00", "2"}, {"eth1", "1", "02:00:00:00:00:01", "3"}},
			wantMAC: "02:00:00:00:00:01",
		},
		{
			name:    "broken entries skipped",
			ifs:     []netIf{{"eth0", "1", "not-a-mac", "2"}, {"eth1", "1", "02:00:00:00:00:01", ""}, {"eth2", "", "02:00:00:00:00:02", "3"}, {"eth3", "1", "02:00:00:00:00:03", "x"}, {"eth4", "1", "02:00:00:00:00:04", "7"}},
			wantMAC: "02:00:00:00:00:04",
		},
		{
			name:    "upper case normalised",
			ifs:     []netIf{{"eth0", "1", "AA:BB:CC:DD:EE:FF", "2"}},
			wantMAC: "aa:bb:cc:dd:ee:ff",
		},
		{name: "none found", ifs: []netIf{lo, {"dummy0", "1", "aa:bb:cc:dd:ee:01", "2"}}},
		{name: "empty tree", ifs: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeSysfs(t, tt.ifs)
			dataDir := t.TempDir() // no identity script
			got, err := identity.Collect(t.Context(), identity.Options{DataDir: dataDir, SysClassNet: root})
			if tt.wantMAC == "" {
				require.ErrorIs(t, err, identity.ErrNoIdentity)
				assert.Contains(t, err.Error(), "install an identity script at "+filepath.Join(dataDir, "identity", "mender-device-identity"))
				assert.Nil(t, got)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, map[string][]string{"mac": {tt.wantMAC}}, got)
		})
	}

	t.Run("missing sysfs", func(t *testing.T) {
		_, err := identity.Collect(t.Context(), identity.Options{DataDir: t.TempDir(), SysClassNet: filepath.Join(t.TempDir(), "nope")})
		assert.ErrorIs(t, err, identity.ErrNoIdentity)
	})

	t.Run("logs the interface", func(t *testing.T) {
		var buf bytes.Buffer
		root := fakeSysfs(t, []netIf{{"eth0", "1", "02:00:00:00:00:01", "2"}})
		_, err := identity.Collect(t.Context(), identity.Options{
			DataDir: t.TempDir(), SysClassNet: root,
			Logger: slog.New(slog.NewTextHandler(&buf, nil)),
		})
		require.NoError(t, err)
		assert.Contains(t, buf.String(), "iface=eth0")
		assert.Contains(t, buf.String(), "mac=02:00:00:00:00:01")
	})
}

func TestInventory(t *testing.T) {
	requireShell(t)
	dir := t.TempDir()
	inv := "inventory/"
	writeScript(t, dir, inv+"mender-inventory-a", `printf 'os=linux\nip=10.0.0.1\n'`, 0o755)
	writeScript(t, dir, inv+"mender-inventory-b", `echo ip=10.0.0.2; echo kernel=6.1`, 0o755)
	failing := writeScript(t, dir, inv+"mender-inventory-c-fails", `echo partial=1; echo 'boom' >&2; exit 1`, 0o755)
	writeScript(t, dir, inv+"mender-inventory-d-not-executable", `echo skipped=1`, 0o644)
	garbage := writeScript(t, dir, inv+"mender-inventory-e-garbage", `echo ok=1; echo garbage`, 0o755)
	slow := writeScript(t, dir, inv+"mender-inventory-f-slow", `sleep 30`, 0o755)
	writeScript(t, dir, inv+"mender-inventory-g", `echo ip=10.0.0.3`, 0o755)
	writeScript(t, dir, inv+"other-script", `echo other=1`, 0o755)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "inventory", "mender-inventory-dir"), 0o755))

	attrs, errs := identity.Inventory(t.Context(), identity.Options{DataDir: dir, Timeout: time.Second})

	assert.Equal(t, map[string][]string{
		"os":     {"linux"},
		"ip":     {"10.0.0.1", "10.0.0.2", "10.0.0.3"}, // script order
		"kernel": {"6.1"},
	}, attrs, "failing scripts contribute nothing; skipped files do not run")
	require.Len(t, errs, 3, "one error per failed script: %q", errs)
	assert.Contains(t, errs[0].Error(), failing)
	assert.Contains(t, errs[0].Error(), `(stderr: "boom")`)
	assert.Contains(t, errs[1].Error(), garbage)
	assert.ErrorIs(t, errs[1], identity.ErrMalformed)
	assert.Contains(t, errs[2].Error(), slow)
	assert.ErrorIs(t, errs[2], identity.ErrTimeout)
}

func TestInventoryNoDir(t *testing.T) {
	attrs, errs := identity.Inventory(t.Context(), identity.Options{DataDir: t.TempDir()})
	assert.NotNil(t, attrs)
	assert.Empty(t, attrs)
	assert.Empty(t, errs)
}

func TestInventoryBrokenSymlink(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "inventory"), 0o755))
	link := filepath.Join(dir, "inventory", "mender-inventory-gone")
	require.NoError(t, os.Symlink(filepath.Join(dir, "nowhere"), link))
	_, errs := identity.Inventory(t.Context(), identity.Options{DataDir: dir})
	require.Len(t, errs, 1)
	assert.Contains(t, errs[0].Error(), link)
}

func TestInventoryCancelled(t *testing.T) {
	requireShell(t)
	dir := t.TempDir()
	writeScript(t, dir, "inventory/mender-inventory-a", `echo a=1`, 0o755)
	writeScript(t, dir, "inventory/mender-inventory-b", `echo b=1`, 0o755)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	attrs, errs := identity.Inventory(ctx, identity.Options{DataDir: dir})
	assert.Empty(t, attrs)
	require.Len(t, errs, 1, "cancellation stops the run with one error")
	assert.True(t, errors.Is(errs[0], context.Canceled), "got %v", errs[0])
}

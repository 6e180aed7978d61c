//go:build linux

package main

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/config"
	"github.com/mender-mtls/mtls-agent/internal/keystore"
)

// envIn returns a getenv that points Mender's directories into dir, so no
// real /etc/mender is read.
func envIn(dir string) func(string) string {
	return func(k string) string {
		switch k {
		case "MENDER_CONF_DIR", "MENDER_DATASTORE_DIR", "MENDER_DATA_DIR":
			return dir
		}
		return ""
	}
}

func runKeygen(t *testing.T, dir string, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := cmdKeygen(t.Context(), args, &stdout, &stderr, envIn(dir))
	return stdout.String(), stderr.String(), err
}

// readCSR parses and verifies a PEM CSR file.
func readCSR(t *testing.T, path string) *x509.CertificateRequest {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	blk, _ := pem.Decode(data)
	require.NotNil(t, blk, "the CSR file holds PEM")
	require.Equal(t, "CERTIFICATE REQUEST", blk.Type)
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	require.NoError(t, err)
	require.NoError(t, csr.CheckSignature(), "the CSR is signed by its key")
	return csr
}

func TestKeygenFile(t *testing.T) {
	for _, kt := range []string{"", "rsa2048", "ed25519"} {
		t.Run("type "+kt, func(t *testing.T) {
			dir := t.TempDir()
			keyPath, csrPath := filepath.Join(dir, "keys", "device.key"), filepath.Join(dir, "device.csr")
			args := []string{"--key", keyPath, "--cn", "device-42", "--csr", csrPath}
			if kt != "" {
				args = append(args, "--key-type", kt)
			}
			stdout, _, err := runKeygen(t, dir, args...)
			require.NoError(t, err)

			csr := readCSR(t, csrPath)
			assert.Equal(t, "device-42", csr.Subject.CommonName)
			fi, err := os.Stat(keyPath)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
			k, err := keystore.Open(t.Context(), keyPath, keystore.Options{})
			require.NoError(t, err)
			assert.True(t, k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey), "the CSR is for the key written")
			assert.Contains(t, stdout, k.Fingerprint())
			assert.Contains(t, stdout, csrPath)
			assert.NotContains(t, stdout, "PRIVATE KEY")
		})
	}

	t.Run("existing key needs --force", func(t *testing.T) {
		dir := t.TempDir()
		keyPath, csrPath := filepath.Join(dir, "device.key"), filepath.Join(dir, "device.csr")
		_, _, err := runKeygen(t, dir, "--key", keyPath, "--cn", "a", "--csr", csrPath)
		require.NoError(t, err)
		first := readCSR(t, csrPath)
		_, _, err = runKeygen(t, dir, "--key", keyPath, "--cn", "a", "--csr", csrPath)
		require.ErrorIs(t, err, keystore.ErrExists)
		_, _, err = runKeygen(t, dir, "--key", keyPath, "--cn", "a", "--csr", csrPath, "--force")
		require.NoError(t, err)
		second := readCSR(t, csrPath)
		assert.False(t, first.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(second.PublicKey), "--force made a new key")
	})
}

func TestKeygenErrors(t *testing.T) {
	dir := t.TempDir()
	key, csr := filepath.Join(dir, "k.pem"), filepath.Join(dir, "c.csr")
	tests := []struct {
		name     string
		args     []string
		usage    bool
		contains string
	}{
		{"no key", []string{"--cn", "a", "--csr", csr}, true, "--key is required"},
		{"no cn", []string{"--key", key, "--csr", csr}, true, "--cn is required"},
		{"no csr", []string{"--key", key, "--cn", "a"}, true, "--csr is required"},
		{"stray argument", []string{"--key", key, "--cn", "a", "--csr", csr, "extra"}, true, "unexpected argument"},
		{"bad key type", []string{"--key", key, "--cn", "a", "--csr", csr, "--key-type", "dsa"}, false, "ecdsa-p256"},
		{"csr directory missing", []string{"--key", key, "--cn", "a", "--csr", filepath.Join(dir, "no", "c.csr")}, false, "does not exist"},
		{"tpm ed25519", []string{"--key", "handle:0x81000100", "--cn", "a", "--csr", csr, "--key-type", "ed25519", "--tpm-device", "/nonexistent/tpm"}, false, "cannot be created in a TPM"},
		{"no tpm", []string{"--key", "handle:0x81000100", "--cn", "a", "--csr", csr, "--tpm-device", filepath.Join(dir, "tpmrm0")}, false, filepath.Join(dir, "tpmrm0")},
		{"explicit config missing", []string{"--key", "handle:0x81000100", "--cn", "a", "--csr", csr, "--config", filepath.Join(dir, "none.conf"), "--fallback-config", ""}, false, "none.conf"},
		{"bad handle", []string{"--key", "handle:0x1", "--cn", "a", "--csr", csr, "--tpm-device", "/nonexistent/tpm"}, false, "not a persistent handle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, err := runKeygen(t, dir, tt.args...)
			require.Error(t, err)
			if tt.usage {
				assert.ErrorIs(t, err, errUsage)
				assert.Contains(t, stderr, tt.contains)
			} else {
				assert.NotErrorIs(t, err, errUsage)
				assert.Contains(t, err.Error(), tt.contains)
			}
			_, statErr := os.Stat(key)
			assert.True(t, os.IsNotExist(statErr), "no key file is left behind by a failed keygen")
		})
	}
}

// startSwtpm starts swtpm on a free loopback port with its own state
// directory and returns its tcp:// device; it is killed at cleanup.
func startSwtpm(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Skip("SKIPPING swtpm keygen tests: swtpm is not installed; run `make deps` (installs swtpm and swtpm-tools) to run them")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	state := t.TempDir()
	out, err := os.Create(filepath.Join(state, "swtpm.out"))
	require.NoError(t, err)
	defer out.Close()
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", ln.Addr().(*net.TCPAddr).Port),
		"--ctrl", "type=unixio,path="+filepath.Join(state, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear", "--tpmstate", "dir="+state)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "swtpm listens on %s", addr)
	return "tcp://" + addr
}

// TestKeygenTPM creates keys in swtpm through the command line, with the
// device taken from mender.conf, and checks what `device-agent check`
// reports about them.
func TestKeygenTPM(t *testing.T) {
	device := startSwtpm(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "mender.conf")
	require.NoError(t, os.WriteFile(conf, fmt.Appendf(nil, `{"ServerURL":"https://mender.example.com","TPM":{"Device":%q}}`, device), 0o644))
	csrPath := filepath.Join(dir, "device.csr")
	const ref = "handle:0x81000100"

	stdout, _, err := runKeygen(t, dir, "--config", conf, "--fallback-config", "", "--key", ref, "--cn", "device-tpm", "--csr", csrPath)
	require.NoError(t, err)
	assert.Contains(t, stdout, "in TPM "+device, "the device comes from TPM.Device in the config")
	csr := readCSR(t, csrPath)
	assert.Equal(t, "device-tpm", csr.Subject.CommonName)
	assert.Equal(t, x509.ECDSAWithSHA256, csr.SignatureAlgorithm, "ECDSA P-256 by default")
	k, err := keystore.Open(t.Context(), ref, keystore.Options{TPMDevice: device})
	require.NoError(t, err)
	assert.True(t, k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey), "the CSR carries the TPM key")
	require.NoError(t, k.Close())

	_, _, err = runKeygen(t, dir, "--tpm-device", device, "--key", ref, "--cn", "device-tpm", "--csr", csrPath)
	require.ErrorIs(t, err, keystore.ErrExists, "an existing key is kept without --force")
	_, _, err = runKeygen(t, dir, "--tpm-device", device, "--key", ref, "--cn", "device-tpm", "--csr", csrPath, "--force", "--key-type", "rsa2048")
	require.NoError(t, err)
	assert.Equal(t, x509.SHA256WithRSA, readCSR(t, csrPath).SignatureAlgorithm)

	t.Run("check", func(t *testing.T) {
		cfg := &config.Config{KeyFile: ref, AuthKeyFile: ref, CertFile: filepath.Join(dir, "device.crt"), TPMDevice: device}
		res := tpmCheck(t.Context(), cfg, nil)
		require.Len(t, res, 3, "tpm, key and self-test: %+v", res)
		for _, r := range res {
			assert.Equal(t, "PASS", r.Status, "%s: %s", r.Name, r.Text)
		}
		assert.Contains(t, res[0].Text, "manufacturer IBM")
		assert.Contains(t, res[1].Text, "rsa2048")
		assert.Contains(t, res[1].Text, "made by device-agent keygen")
		assert.Contains(t, res[2].Text, "RSA-PSS salt: hash length")

		var out bytes.Buffer
		c := &checker{w: &out}
		missing := &config.Config{KeyFile: "handle:0x81000200", AuthKeyFile: ref, TPMDevice: device}
		c.tpm(t.Context(), missing, nil)
		assert.True(t, c.failed, "a missing key fails the check")
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		require.Len(t, lines, 4, out.String())
		assert.True(t, strings.HasPrefix(lines[1], "FAIL  tpm key"), lines[1])
		assert.Contains(t, lines[1], "fix: create it: device-agent keygen --key handle:0x81000200")
		assert.True(t, strings.HasPrefix(lines[3], "PASS  tpm selftest"), lines[3])

		assert.Nil(t, tpmCheck(t.Context(), &config.Config{KeyFile: filepath.Join(dir, "k.pem")}, nil), "no TPM configured: nothing to report")
		res = tpmCheck(t.Context(), &config.Config{KeyFile: ref, TPMDevice: filepath.Join(dir, "tpmrm0")}, nil)
		require.Len(t, res, 1)
		assert.Equal(t, "FAIL", res[0].Status)
		assert.Contains(t, res[0].Text, filepath.Join(dir, "tpmrm0"))
	})
}

func TestKeygenLogFormatJSON(t *testing.T) {
	dir := t.TempDir()
	_, stderr, err := runKeygen(t, dir, "--key", filepath.Join(dir, "k.pem"), "--cn", "a", "--csr", filepath.Join(dir, "c.csr"),
		"--log-format", "json")
	require.NoError(t, err)
	line, _, _ := strings.Cut(stderr, "\n")
	assert.True(t, strings.HasPrefix(line, `{"time":`), "keygen honours --log-format json: %q", line)
}

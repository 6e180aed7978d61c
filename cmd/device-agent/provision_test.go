package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/config"
	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/provision"
)

// The command over a pty (it opens the slave through go.bug.st/serial),
// against a station on the master: it creates a 0600 key file, stores the
// certificate, points mender.conf at both while keeping its other keys,
// and records the provisioning for check. A second run confirms the same
// certificate.
func TestProvisionOverPTY(t *testing.T) {
	m, s, err := pty.Open()
	require.NoError(t, err)
	t.Cleanup(func() { m.Close(); s.Close() })

	ca, err := pki.NewCA("Factory CA", pki.ECDSAP256, 24*time.Hour)
	require.NoError(t, err)
	recs, err := provision.OpenRecords(filepath.Join(t.TempDir(), "records.jsonl"))
	require.NoError(t, err)
	st := &provision.Station{Name: "line-7", CA: ca, Validity: time.Hour, Records: recs}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	link := provision.NewLink(m, provision.LinkOptions{Station: true})
	defer link.Close()
	boards := make(chan provision.BoardResult, 2)
	go func() {
		for range 2 {
			boards <- st.ServeBoard(ctx, link, "master")
		}
	}()

	dir := t.TempDir()
	dataDir := filepath.Join(dir, "share")
	require.NoError(t, os.MkdirAll(filepath.Join(dataDir, "identity"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "identity", "mender-device-identity"), []byte("#!/bin/sh\necho serial=0815\n"), 0o755))
	conf := filepath.Join(dir, "mender.conf")
	require.NoError(t, os.WriteFile(conf, []byte(`{"ServerURL": "https://mender.example.com", "HttpsClient": {"SSLEngine": ""}}`), 0o600))
	key := filepath.Join(dir, "mtls", "device.key")
	cert := filepath.Join(dir, "mtls", "device.crt")
	getenv := func(k string) string {
		switch k {
		case "MENDER_DATA_DIR":
			return dataDir
		case "MENDER_DATASTORE_DIR":
			return dir
		}
		return ""
	}
	args := []string{"provision", "--port", s.Name(), "--key", key, "--cert", cert, "--config", conf, "--fallback-config", "", "--timeout", "20s"}

	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, run(ctx, args, &stdout, &stderr, getenv), stderr.String())
	assert.Contains(t, stdout.String(), "created key "+key)
	assert.Contains(t, stdout.String(), "provisioned by line-7")
	assert.Contains(t, stdout.String(), "new certificate CN=dev-0815")
	require.NoError(t, (<-boards).Err)

	fi, err := os.Stat(key)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	k, err := keystore.Open(ctx, key, keystore.Options{CertFile: cert})
	require.NoError(t, err, "the certificate belongs to the key and is valid")
	assert.Equal(t, "dev-0815", k.CertificateChain()[0].Subject.CommonName)
	k.Close()

	// The key and certificate go into the agent-only file beside
	// mender.conf, which keeps its own keys untouched.
	var main, got map[string]any
	data, err := os.ReadFile(conf)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &main))
	assert.Equal(t, "https://mender.example.com", main["ServerURL"])
	assert.NotContains(t, main, "Security", "mender.conf is left as it was")
	overlay := filepath.Join(filepath.Dir(conf), config.AgentConfFileName)
	data, err = os.ReadFile(overlay)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &got))
	assert.Equal(t, map[string]any{"Certificate": cert, "Key": key}, got["HttpsClient"])
	assert.Equal(t, map[string]any{"AuthPrivateKey": key}, got["Security"])
	assert.NotContains(t, got, "ServerURL")
	cfg, err := config.Load(config.LoadOptions{MainPath: conf, OverlayPath: overlay, DataDir: dataDir, DatastoreDir: dir})
	require.NoError(t, err)
	assert.Equal(t, cert, cfg.CertFile)
	assert.Equal(t, key, cfg.KeyFile)

	marker, err := provision.ReadMarker(filepath.Join(dir, provision.MarkerName))
	require.NoError(t, err)
	assert.Equal(t, "line-7", marker.Station)
	assert.Equal(t, "dev-0815", marker.CN)

	// check reports it.
	c := &checker{}
	c.provisioned(cfg)
	require.Len(t, c.results, 1)
	assert.Equal(t, "provisioned", c.results[0].Name)
	assert.Contains(t, c.results[0].Detail, "by station line-7 on "+s.Name())
	assert.Empty(t, c.results[0].Warnings)

	// Run again: the same key and certificate, confirmed.
	stdout.Reset()
	require.Equal(t, 0, run(ctx, args, &stdout, &stderr, getenv), stderr.String())
	assert.Contains(t, stdout.String(), "using key "+key)
	assert.Contains(t, stdout.String(), "certificate confirmed CN=dev-0815")
	require.NoError(t, (<-boards).Err)
	assert.Len(t, recs.All(), 2, "one issued and one stored record: no second certificate")
}

func TestProvisionErrors(t *testing.T) {
	dir := t.TempDir()
	getenv := func(string) string { return "" }
	for _, tc := range []struct {
		name, want string
		args       []string
		code       int
	}{
		{"no port", "--port is required", []string{"provision"}, 2},
		{"missing port", "serial port /dev/ttyNOPE0 does not exist", []string{"provision", "--port", "/dev/ttyNOPE0", "--key", filepath.Join(dir, "k.pem"), "--config", filepath.Join(dir, "mender.conf")}, 1},
		{"broken config", "not a JSON object", []string{"provision", "--port", "/dev/null", "--key", filepath.Join(dir, "k.pem"), "--config", writeFile(t, dir, "bad.conf", "{")}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			assert.Equal(t, tc.code, run(context.Background(), tc.args, &stdout, &stderr, getenv))
			assert.Contains(t, stderr.String(), tc.want)
			assert.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line: %q", stderr.String())
		})
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

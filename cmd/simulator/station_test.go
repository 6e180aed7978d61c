package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/provision"
	"github.com/mender-mtls/mtls-agent/internal/provision/serialport"
)

// ptyPair returns a pty master (the board's end in these tests) and the
// slave's path (the station's port).
func ptyPair(t *testing.T) (*os.File, string) {
	t.Helper()
	m, s, err := pty.Open()
	require.NoError(t, err)
	path := s.Name()
	// The station opens the slave by path; keeping this descriptor open
	// too keeps the master readable when the station closes its own.
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, path
}

func newStationPKI(t *testing.T) string {
	dir := t.TempDir()
	ca, err := pki.NewCA("Factory CA", pki.ECDSAP256, 24*time.Hour)
	require.NoError(t, err)
	crt, key := pki.CAFiles(dir)
	require.NoError(t, ca.Save(crt, key, false))
	return dir
}

// Three boards on three ports at once, preauthorized against the fake
// backend; the records verify, import-records finds them done, and an
// edited records file is refused.
func TestStationThreePortsPreauth(t *testing.T) {
	s, err := fakemender.New(fakemender.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	srv := httptest.NewTLSServer(s)
	t.Cleanup(srv.Close)
	dir := newStationPKI(t)
	caFile := filepath.Join(t.TempDir(), "server-ca.crt")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644))

	var masters []*os.File
	args := []string{"station", "--pki-dir", dir, "--name", "line-1", "--cn-template", "board-{serial}",
		"--preauth", srv.URL, "--ca", caFile, "--user", fakemender.DefaultUser, "--password", fakemender.DefaultPassword}
	for range 3 {
		m, path := ptyPair(t)
		masters = append(masters, m)
		args = append(args, "--port", path)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := make(chan int, 1)
	go func() { code <- run(ctx, args, &stdout, &stderr) }()

	var wg sync.WaitGroup
	keys := make([]*x509.Certificate, 3)
	for i, m := range masters {
		wg.Go(func() {
			key, err := pki.GenerateKey(pki.ECDSAP256)
			require.NoError(t, err)
			d := &provision.Device{Identity: map[string][]string{"serial": {fmt.Sprintf("S%d", i)}}, Key: key,
				Store: func(_ context.Context, chain []*x509.Certificate, _ *x509.Certificate, _ string) error {
					keys[i] = chain[0]
					return nil
				}}
			res, err := d.Run(ctx, m)
			require.NoError(t, err)
			assert.Equal(t, fmt.Sprintf("board-S%d", i), res.CN)
			assert.Equal(t, "line-1", res.Station)
			assert.Equal(t, "preauthorized", res.Note)
		})
	}
	wg.Wait()
	require.Equal(t, 0, <-code, stderr.String())
	out := stdout.String()
	for i := range 3 {
		assert.Contains(t, out, fmt.Sprintf(`identity="serial=S%d" cn=board-S%d serial=%s`, i, i, pki.FormatSerial(keys[i].SerialNumber)))
	}
	assert.Equal(t, 3, strings.Count(out, "result=ok; preauthorized"), out)
	devs := s.Devices()
	require.Len(t, devs, 3)
	for _, d := range devs {
		assert.Equal(t, menderapi.DevStatusPreauthorized, d.Status)
	}

	records := filepath.Join(dir, recordsName)
	stdout.Reset()
	require.Equal(t, 0, run(ctx, []string{"station", "verify-records", records}, &stdout, &stderr), stderr.String())
	assert.Contains(t, stdout.String(), "6 records (3 boards stored), chain intact")

	stdout.Reset()
	require.Equal(t, 0, run(ctx, []string{"station", "import-records", records, "--preauth", srv.URL, "--ca", caFile,
		"--user", fakemender.DefaultUser, "--password", fakemender.DefaultPassword}, &stdout, &stderr), stderr.String())
	assert.Equal(t, 3, strings.Count(stdout.String(), "result=already preauthorized (preauthorized)"), stdout.String())

	data, err := os.ReadFile(records)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(records, bytes.Replace(data, []byte("board-S1"), []byte("board-S9"), 1), 0o644))
	stderr.Reset()
	require.Equal(t, 1, run(ctx, []string{"station", "verify-records", records}, &stdout, &stderr))
	assert.Contains(t, stderr.String(), "its hash does not match its content: the line was edited")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr.String()), "\n")+1, "one line: %s", stderr.String())
}

// The factory's errors, each one line before any board is served.
func TestStationErrors(t *testing.T) {
	dir := newStationPKI(t)
	_, port := ptyPair(t)
	for _, tc := range []struct {
		name, want string
		args       []string
		setup      func()
	}{
		{"missing port", "serial port /dev/ttyNOPE0 does not exist", []string{"--port", "/dev/ttyNOPE0", "--pki-dir", dir}, nil},
		{"bad template", "--cn-template: CN template \"dev-{serial\": a { without its }", []string{"--port", port, "--pki-dir", dir, "--cn-template", "dev-{serial"}, nil},
		{"CA key unreadable", "cannot use the CA", []string{"--port", port, "--pki-dir", dir}, func() {
			_, key := pki.CAFiles(dir)
			require.NoError(t, os.WriteFile(key, []byte("not a key"), 0o600))
		}},
		{"no CA", "cannot use the CA", []string{"--port", port, "--pki-dir", t.TempDir()}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{"station"}, tc.args...), &stdout, &stderr)
			assert.Equal(t, 1, code)
			assert.Contains(t, stderr.String(), tc.want)
			assert.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line: %q", stderr.String())
		})
	}
}

// A port held by another station is refused (our own lock: root ignores
// the kernel's exclusive mode).
func TestStationPortBusy(t *testing.T) {
	_, port := ptyPair(t)
	p, err := serialport.Open(port, serialport.DefaultBaud)
	require.NoError(t, err)
	defer p.Close()
	_, err = serialport.Open(port, serialport.DefaultBaud)
	require.ErrorContains(t, err, "is busy")
}

// The station's commands have help like every other command.
func TestStationHelp(t *testing.T) {
	for _, cmd := range [][]string{{"station"}, {"station", "verify-records"}, {"station", "import-records"}} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append(append([]string{}, cmd...), "--help"), &stdout, &stderr)
		assert.Equal(t, 0, code, stderr.String())
		assert.Empty(t, stderr.String())
		assert.Contains(t, stdout.String(), "Usage: simulator "+strings.Join(cmd, " "))
		assert.NotRegexp(t, `(?m)^  --[a-z0-9-]+ (string|int|uint|float|duration|value)$`, stdout.String())
	}
}

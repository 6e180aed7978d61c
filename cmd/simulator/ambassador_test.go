package main

import (
	"bytes"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAmbassadorLimitFlags(t *testing.T) {
	f := ambassadorFlags{backend: "https://mender.example.com", user: "u", password: "p", tlsMin: "1.2",
		newIdentitiesPerHour: -1, maxInflightPerCert: 3, bodyTimeout: 5 * time.Second, upstreamWait: 2 * time.Second,
		conns: connFlags{maxConns: 500, maxHandshakes: 4, handshakeWait: time.Second, idleTimeout: 30 * time.Second}}
	o, err := f.options()
	require.NoError(t, err)
	assert.Equal(t, 3, o.MaxInflightPerCert)
	assert.Equal(t, 5*time.Second, o.BodyReadTimeout)
	assert.Equal(t, 2*time.Second, o.UpstreamWaitTimeout)
	assert.Equal(t, 500, o.MaxConns)
	assert.Equal(t, 4, o.MaxHandshakes)
	assert.Equal(t, time.Second, o.HandshakeWait)
	assert.Equal(t, 30*time.Second, o.IdleTimeout)

	f.bodyTimeout, f.upstreamWait = -time.Second, -time.Second
	f.conns = connFlags{maxConns: -1, maxHandshakes: -2, handshakeWait: -time.Second, idleTimeout: -time.Second}
	_, err = f.options()
	require.Error(t, err)
	for _, name := range []string{"--body-timeout", "--upstream-wait", "--max-conns -1", "--max-handshakes -2",
		"--handshake-wait -1s", "--idle-timeout -1s"} {
		assert.Contains(t, err.Error(), name)
	}

	var out, errb bytes.Buffer
	err = cmdAmbassador(t.Context(), []string{"--upstream-wait", "soon"}, &out, &errb, func(string) string { return "" })
	require.Error(t, err, "not a duration")
	assert.Contains(t, errb.String()+err.Error(), "upstream-wait")
}

func TestAmbassadorConnectionFlagsHelp(t *testing.T) {
	var out, errb bytes.Buffer
	_ = cmdAmbassador(t.Context(), []string{"--help"}, &out, &errb, func(string) string { return "" })
	help := out.String() + errb.String()
	for _, want := range []string{"--max-conns", "--max-handshakes", "--handshake-wait", "--idle-timeout",
		"503 with Retry-After", "reset before the handshake", "open-file limit", "default 8s", "default 1m0s"} {
		assert.Contains(t, help, want)
	}
}

func TestRaiseFileLimitLogsBothLimits(t *testing.T) {
	var buf bytes.Buffer
	raiseFileLimit(slog.New(slog.NewTextHandler(&buf, nil)))
	assert.Regexp(t, `open-file limit .*soft=\d+ hard=\d+`, buf.String())
}

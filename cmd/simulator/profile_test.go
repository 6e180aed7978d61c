package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStartProfileWritesAProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.prof")
	t.Setenv(profileEnv, path)
	var stderr bytes.Buffer
	stop, err := startProfile(&stderr)
	require.NoError(t, err)
	stop()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(data), 2)
	assert.Equal(t, []byte{0x1f, 0x8b}, data[:2], "pprof profiles are gzip-compressed")
	assert.Empty(t, stderr.String())
}

func TestStartProfileUnset(t *testing.T) {
	t.Setenv(profileEnv, "")
	stop, err := startProfile(&bytes.Buffer{})
	require.NoError(t, err)
	stop()
}

func TestStartProfileBadPath(t *testing.T) {
	t.Setenv(profileEnv, filepath.Join(t.TempDir(), "missing", "cpu.prof"))
	_, err := startProfile(&bytes.Buffer{})
	require.ErrorContains(t, err, profileEnv)
}

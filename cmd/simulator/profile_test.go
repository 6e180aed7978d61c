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

func TestStartProfileWritesAnAllocProfile(t *testing.T) {
	dir := t.TempDir()
	cpu, allocs := filepath.Join(dir, "cpu.prof"), filepath.Join(dir, "allocs.prof")
	t.Setenv(profileEnv, cpu)
	t.Setenv(allocProfileEnv, allocs)
	var stderr bytes.Buffer
	stop, err := startProfile(&stderr)
	require.NoError(t, err)
	sink = make([]byte, 4<<20) // at least one sampled allocation
	stop()
	for _, path := range []string{cpu, allocs} {
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		require.GreaterOrEqual(t, len(data), 2, path)
		assert.Equal(t, []byte{0x1f, 0x8b}, data[:2], "%s: pprof profiles are gzip-compressed", path)
	}
	assert.Empty(t, stderr.String())
}

// sink keeps the test's allocation from being optimised away.
var sink []byte

func TestStartProfileBadAllocPath(t *testing.T) {
	cpu := filepath.Join(t.TempDir(), "cpu.prof")
	t.Setenv(profileEnv, cpu)
	t.Setenv(allocProfileEnv, filepath.Join(t.TempDir(), "missing", "allocs.prof"))
	var stderr bytes.Buffer
	_, err := startProfile(&stderr)
	require.ErrorContains(t, err, allocProfileEnv)
	// The CPU profile already started is stopped again: a new one can start.
	t.Setenv(allocProfileEnv, "")
	stop, err := startProfile(&stderr)
	require.NoError(t, err, "the CPU profile of the failed start was left running")
	stop()
}

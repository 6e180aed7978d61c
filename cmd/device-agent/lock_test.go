package main

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDatastoreLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "mender") // created by the lock
	running, _, err := lockHolder(dir)
	require.NoError(t, err)
	assert.False(t, running, "no lock file: nobody runs")

	l, err := lockDatastore(dir, 4242)
	require.NoError(t, err)
	data, err := os.ReadFile(filepath.Join(dir, lockFileName))
	require.NoError(t, err)
	assert.Equal(t, "4242\n", string(data), "the lock file holds the holder's PID")
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "a created datastore is private")

	running, pid, err := lockHolder(dir)
	require.NoError(t, err)
	assert.True(t, running)
	assert.Equal(t, "4242", pid)

	_, err = lockDatastore(dir, 99)
	require.Error(t, err, "a second daemon on the same datastore")
	assert.Contains(t, err.Error(), "another device-agent daemon (PID 4242) is running with the datastore "+dir)
	assert.NotContains(t, err.Error(), "\n", "one line")

	require.NoError(t, l.Close())
	running, _, err = lockHolder(dir)
	require.NoError(t, err)
	assert.False(t, running, "released at close")

	l2, err := lockDatastore(dir, 77)
	require.NoError(t, err, "the lock is free again; the stale file is reused")
	defer l2.Close()
	data, err = os.ReadFile(filepath.Join(dir, lockFileName))
	require.NoError(t, err)
	assert.Equal(t, "77\n", string(data), "the old PID is replaced, not appended")
}

func TestDatastoreLockErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	_, err := lockDatastore(filepath.Join(file, "sub"), 1)
	assert.ErrorContains(t, err, "datastore "+filepath.Join(file, "sub"))
	assert.ErrorContains(t, err, "--data")
}

func TestReadLockPID(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{"123\n": "123", "": "unknown", "x": "unknown", "-5": "unknown"} {
		p := filepath.Join(dir, strconv.Itoa(len(content))+content)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		assert.Equal(t, want, readLockPID(p), "content %q", content)
	}
	assert.Equal(t, "unknown", readLockPID(filepath.Join(dir, "missing")))
}

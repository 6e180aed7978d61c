package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteCreatesAndReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key.pem")
	require.NoError(t, Write(p, []byte("one"), 0o600))
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, "one", string(data))
	fi, err := os.Stat(p)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the mode is set, whatever the umask")

	require.NoError(t, Write(p, []byte("two"), 0o644))
	data, err = os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, "two", string(data))
	fi, err = os.Stat(p)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm())

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary file is left behind")
}

func TestWriteFailureLeavesOldFileAndNoTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	require.NoError(t, Write(p, []byte("old"), 0o644))
	// Renaming a file over a non-empty directory fails: the old content must survive.
	target := filepath.Join(dir, "adir")
	require.NoError(t, os.MkdirAll(filepath.Join(target, "x"), 0o755))
	err := Write(target, []byte("new"), 0o644)
	require.Error(t, err)
	assert.Contains(t, err.Error(), target, "the error names the file")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 2, "no temporary file is left behind after a failure")

	err = Write(filepath.Join(dir, "missing-dir", "f"), []byte("x"), 0o644)
	require.Error(t, err)
	assert.True(t, errors.Is(err, os.ErrNotExist))
}

func TestWriteNewRefusesExisting(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ca.key")
	require.NoError(t, WriteNew(p, []byte("secret"), 0o600))
	err := WriteNew(p, []byte("other"), 0o600)
	require.ErrorIs(t, err, ErrExists)
	assert.Contains(t, err.Error(), "--force")
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, "secret", string(data), "the existing file is untouched")
}

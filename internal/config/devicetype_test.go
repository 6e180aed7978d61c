package config_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/config"
)

func TestReadDeviceType(t *testing.T) {
	tests := []struct {
		name    string
		content string // "-" = file absent
		want    string
		errLine string // substring of the error; "" = no error
	}{
		{name: "plain", content: "device_type=raspberrypi4\n", want: "raspberrypi4"},
		{name: "no newline", content: "device_type=qemux86-64", want: "qemux86-64"},
		{name: "whitespace trimmed", content: "  device_type = beaglebone  \r\n", want: "beaglebone"},
		{name: "comments and blank lines", content: "# written by the factory\n\ndevice_type=rpi3\n# end\n", want: "rpi3"},
		{name: "equals in value", content: "device_type=a=b\n", want: "a=b"},
		{name: "absent", content: "-", errLine: "no such file"},
		{name: "empty file", content: "", errLine: "no device_type= line"},
		{name: "only comments", content: "# nothing\n", errLine: "no device_type= line"},
		{name: "duplicate", content: "device_type=a\ndevice_type=b\n", errLine: ":2: device_type is given more than once"},
		{name: "garbage line", content: "device_type=a\nhello\n", errLine: `:2: "hello" is not a key=value line`},
		{name: "other key", content: "artifact_name=x\n", errLine: `:1: unexpected key "artifact_name"`},
		{name: "empty value", content: "device_type=\n", errLine: ":1: device_type is empty"},
		{name: "oversized", content: "device_type=" + string(make([]byte, 70<<10)), errLine: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "device_type")
			if tt.content != "-" {
				require.NoError(t, os.WriteFile(path, []byte(tt.content), 0o644))
			}
			got, err := config.ReadDeviceType(path)
			if tt.errLine != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), path, "the error names the file")
				assert.Contains(t, err.Error(), tt.errLine)
				assert.Empty(t, got)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}

	t.Run("absent matches fs.ErrNotExist", func(t *testing.T) {
		_, err := config.ReadDeviceType(filepath.Join(t.TempDir(), "nope"))
		assert.ErrorIs(t, err, fs.ErrNotExist)
		assert.Contains(t, err.Error(), "DeviceTypeFile", "the error says how to fix it")
	})
}

func TestArtifactName(t *testing.T) {
	t.Run("absent is unknown", func(t *testing.T) {
		got, err := config.ReadArtifactName(t.TempDir())
		require.NoError(t, err)
		assert.Equal(t, "unknown", got)
	})

	t.Run("round trip", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "new", "store") // created on write
		for _, name := range []string{"release-1", "release-2 with spaces", "rel=ease"} {
			require.NoError(t, config.WriteArtifactName(dir, name))
			got, err := config.ReadArtifactName(dir)
			require.NoError(t, err)
			assert.Equal(t, name, got)
		}
		data, err := os.ReadFile(filepath.Join(dir, "artifact_name"))
		require.NoError(t, err)
		assert.Equal(t, "artifact_name=rel=ease\n", string(data))
		st, err := os.Stat(filepath.Join(dir, "artifact_name"))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o644), st.Mode().Perm())
	})

	t.Run("invalid names are refused", func(t *testing.T) {
		dir := t.TempDir()
		for _, name := range []string{"", " x", "x\n", "a\nartifact_name=b", "a\x00b"} {
			err := config.WriteArtifactName(dir, name)
			assert.Error(t, err, "name %q", name)
		}
		_, err := os.Stat(filepath.Join(dir, "artifact_name"))
		assert.ErrorIs(t, err, fs.ErrNotExist, "nothing was written")
	})

	t.Run("garbage file is an error naming it", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "artifact_name")
		require.NoError(t, os.WriteFile(path, []byte("release-1\n"), 0o644))
		_, err := config.ReadArtifactName(dir)
		require.Error(t, err)
		assert.Contains(t, err.Error(), path)
	})
}

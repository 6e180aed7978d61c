package config_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/config"
)

// FuzzConfigLoad feeds random bytes as the main file: Load must not panic,
// must return exactly one of a config or an error, a config must have a
// server, and an error must be about the content (ErrInvalid).
func FuzzConfigLoad(f *testing.F) {
	for _, seed := range []string{
		`{"ServerURL":"https://a"}`,
		`{"Servers":[{"ServerURL":"a"},{"ServerURL":"a/"}],"HttpsClient":{"Certificate":"c","Key":"handle:0x81000001"}}`,
		`{"UpdatePollIntervalSeconds":"1800","HttpsClinet":{},"Security":{"AuthPrivateKey":"pkcs11:x"}}`,
		`{"ServerURL":"https://a","ServerURL":null,"TPM":{"Device":"/dev/tpmrm0"},"X":[1,{"a":[]}]}`,
		"{\n  \"ServerURL\": \"https://a\",\n}",
		`[]`, ``, `{"RetryPollCount":1e3}`, `{"DeviceTier":"micro","ServerURL":"ftp://x"}`,
	} {
		f.Add([]byte(seed))
	}
	for _, name := range []string{"stock-main.conf", "stock-fallback.conf"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		require.NoError(f, err)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		main := filepath.Join(dir, "mender.conf")
		require.NoError(t, os.WriteFile(main, data, 0o644))
		c, err := config.Load(config.LoadOptions{
			MainPath: main, DataDir: dir, DatastoreDir: dir, MTLSDir: dir,
		})
		if err != nil {
			assert.Nil(t, c)
			assert.ErrorIs(t, err, config.ErrInvalid)
			return
		}
		require.NotNil(t, c)
		assert.NotEmpty(t, c.Servers)
		assert.NotEmpty(t, c.AuthKeyFile)
	})
}

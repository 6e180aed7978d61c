package config_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/config"
)

// The agent-only overlay is read after mender.conf and wins key by key; it
// is optional, it does not count as a config file on its own, and its
// problems name it.
func TestLoadOverlay(t *testing.T) {
	tests := []struct {
		name                    string
		main, fallback, overlay string
		wantErr                 error  // matched with errors.Is
		wantErrText             string // a substring of the error
		check                   func(t *testing.T, e *env, c *config.Config)
	}{
		{
			name:    "overlay wins over main and fallback",
			main:    `{"ServerURL":"https://main.example.com","UpdatePollIntervalSeconds":60}`,
			overlay: `{"HttpsClient":{"Certificate":"/data/mender/cert.pem","Key":"handle:0x81000100"},"UpdatePollIntervalSeconds":30}`,
			check: func(t *testing.T, e *env, c *config.Config) {
				assert.Equal(t, []string{"https://main.example.com"}, c.Servers)
				assert.Equal(t, "/data/mender/cert.pem", c.CertFile)
				assert.Equal(t, "handle:0x81000100", c.KeyFile, "a TPM handle from the overlay signs auth requests too")
				assert.Equal(t, "handle:0x81000100", c.AuthKeyFile)
				assert.Equal(t, "30s", c.UpdatePollInterval.String(), "the overlay's value wins")
				assert.Equal(t, []string{e.main, overlayPath(e)}, c.Sources, "Sources name the overlay last")
			},
		},
		{
			name: "absent overlay is fine",
			main: `{"ServerURL":"https://main.example.com"}`,
			check: func(t *testing.T, e *env, c *config.Config) {
				assert.Equal(t, []string{e.main}, c.Sources)
				assert.Empty(t, c.CertFile)
			},
		},
		{
			name:        "overlay alone is not a configuration",
			overlay:     `{"ServerURL":"https://overlay.example.com"}`,
			wantErr:     config.ErrNoConfig,
			wantErrText: "mender.conf",
		},
		{
			name:        "overlay problems name the overlay",
			main:        `{"ServerURL":"https://main.example.com"}`,
			overlay:     `{"HttpsClient":{"Key":"handle:0x81000100"}}`,
			wantErr:     config.ErrInvalid,
			wantErrText: "device-agent.conf: key \"HttpsClient.Key\" is set but HttpsClient.Certificate is empty",
		},
		{
			name:        "missing ServerURL is reported against mender.conf, not the overlay",
			main:        `{"TenantToken":"x"}`,
			overlay:     `{"UpdatePollIntervalSeconds":30}`,
			wantErr:     config.ErrInvalid,
			wantErrText: "etc/mender.conf: key \"ServerURL\" is not set",
		},
		{
			name:        "malformed overlay",
			main:        `{"ServerURL":"https://main.example.com"}`,
			overlay:     `{"HttpsClient":`,
			wantErr:     config.ErrInvalid,
			wantErrText: "device-agent.conf:1:",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			write(t, e.main, tt.main)
			write(t, e.fallback, tt.fallback)
			write(t, overlayPath(e), tt.overlay)
			opts := e.opts()
			opts.OverlayPath = overlayPath(e)
			c, err := config.Load(opts)
			if tt.wantErr != nil {
				require.Error(t, err)
				assert.True(t, errors.Is(err, tt.wantErr), "error %q must match %v", err, tt.wantErr)
				assert.Contains(t, err.Error(), tt.wantErrText)
				return
			}
			require.NoError(t, err)
			tt.check(t, e, c)
		})
	}
}

func overlayPath(e *env) string { return filepath.Join(filepath.Dir(e.main), config.AgentConfFileName) }

func TestDefaultOverlayPath(t *testing.T) {
	assert.Equal(t, "/etc/mender/device-agent.conf", config.DefaultOverlayPath(""))
	assert.Equal(t, "/tmp/conf/device-agent.conf", config.DefaultOverlayPath("/tmp/conf"))
}

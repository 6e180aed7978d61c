package config_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/config"
)

// DeviceTier follows Mender 5.1: absent means standard; present, it must be
// exactly standard, micro or system (an explicit "" stops 5.1 too); the main
// file overrides the fallback's value.
func TestLoadDeviceTier(t *testing.T) {
	const srv = `"ServerURL":"https://mender.example.com"`
	tests := []struct {
		name, fallback, main string
		want                 string // "" = error
		wantErr              string
		wantWarn             string // substring of one warning; "" = no tier warning
	}{
		{name: "absent means standard", main: `{` + srv + `}`, want: "standard"},
		{name: "null means absent", main: `{` + srv + `,"DeviceTier":null}`, want: "standard"},
		{name: "micro", main: `{` + srv + `,"DeviceTier":"micro"}`, want: "micro"},
		{name: "system, with a warning about system_type", main: `{` + srv + `,"DeviceTier":"system"}`, want: "system",
			wantWarn: `DeviceTier is "system"`},
		{name: "from the fallback", fallback: `{"DeviceTier":"micro"}`, main: `{` + srv + `}`, want: "micro"},
		{name: "main overrides fallback", fallback: `{"DeviceTier":"micro"}`, main: `{` + srv + `,"DeviceTier":"standard"}`, want: "standard"},
		{name: "explicit empty string", main: `{` + srv + `,"DeviceTier":""}`,
			wantErr: `key "DeviceTier" is ""; remove the key for the default (standard), or set standard, micro or system`},
		{name: "unknown", main: `{` + srv + `,"DeviceTier":"gold"}`, wantErr: `"gold"; it must be one of standard, micro or system`},
		{name: "not a string", main: `{` + srv + `,"DeviceTier":1}`, wantErr: "DeviceTier"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c, err := e.load(t, tt.main, tt.fallback)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, config.ErrInvalid)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.DeviceTier)
			var tierWarnings []string
			for _, w := range c.Warnings {
				if strings.Contains(w, "DeviceTier") {
					tierWarnings = append(tierWarnings, w)
				}
			}
			if tt.wantWarn == "" {
				assert.Empty(t, tierWarnings)
				return
			}
			require.Len(t, tierWarnings, 1)
			assert.Contains(t, tierWarnings[0], tt.wantWarn)
			assert.Contains(t, tierWarnings[0], "device_type")
		})
	}
}

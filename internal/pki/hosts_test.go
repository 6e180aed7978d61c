package pki

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSplitHosts(t *testing.T) {
	tests := []struct {
		name    string
		hosts   []string
		cn      string
		dns     []string
		ips     []string
		wantErr bool
	}{
		{"defaults only", nil, "localhost", []string{"localhost"}, []string{"127.0.0.1"}, false},
		{"names and ips", []string{"Mender.Local", "10.0.0.1", "[::1]", " gw.example "}, "mender.local",
			[]string{"mender.local", "gw.example", "localhost"}, []string{"10.0.0.1", "::1", "127.0.0.1"}, false},
		{"duplicates and blanks", []string{"localhost", "", "127.0.0.1", "LOCALHOST"}, "localhost",
			[]string{"localhost"}, []string{"127.0.0.1"}, false},
		{"ip first names the cert", []string{"192.0.2.1"}, "192.0.2.1", []string{"localhost"}, []string{"192.0.2.1", "127.0.0.1"}, false},
		{"wildcard", []string{"*.example.com"}, "*.example.com", []string{"*.example.com", "localhost"}, []string{"127.0.0.1"}, false},
		{"port", []string{"host:8443"}, "", nil, nil, true},
		{"space inside", []string{"a b"}, "", nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cn, dns, ips, all, err := splitHosts(tt.hosts)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.cn, cn)
			assert.Equal(t, tt.dns, dns)
			var got []string
			for _, ip := range ips {
				got = append(got, ip.String())
			}
			assert.Equal(t, tt.ips, got)
			assert.Len(t, all, len(tt.dns)+len(tt.ips))
		})
	}
}

func TestCertCoversWildcard(t *testing.T) {
	ca, err := NewCA("ca", ECDSAP256, 24*time.Hour)
	require.NoError(t, err)
	k, err := GenerateKey(ECDSAP256)
	require.NoError(t, err)
	c, err := ca.IssueServer(k.Public(), "x", []string{"*.example.com"}, []net.IP{net.ParseIP("10.0.0.1")}, 24*time.Hour)
	require.NoError(t, err)
	assert.True(t, certCovers(c, "*.example.com"), "a wildcard host counts as covered literally")
	assert.True(t, certCovers(c, "a.example.com"), "and covers its names")
	assert.True(t, certCovers(c, "10.0.0.1"))
	assert.False(t, certCovers(c, "10.0.0.2"))
	assert.False(t, certCovers(c, "example.com"))
}

// A certificate serve made is renewed ServerCertRenewBefore its expiry.
func TestEnsureServerPKIRenewsExpiring(t *testing.T) {
	dir := t.TempDir()
	first, err := ensureServerPKI(dir, nil, time.Now())
	require.NoError(t, err)
	soon := first.Cert.NotAfter.Add(-ServerCertRenewBefore + time.Hour)
	res, err := ensureServerPKI(dir, nil, soon)
	require.NoError(t, err)
	assert.True(t, res.Reissued)
	assert.Contains(t, res.ReissueReason, "it expires on "+first.Cert.NotAfter.UTC().Format(time.DateOnly))
	assert.NotEqual(t, first.Cert.SerialNumber, res.Cert.SerialNumber)

	early := first.Cert.NotAfter.Add(-ServerCertRenewBefore - time.Hour)
	res, err = ensureServerPKI(dir, nil, early)
	require.NoError(t, err)
	assert.False(t, res.Reissued, "not yet within the renewal window")
}

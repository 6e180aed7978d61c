package client

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/retry"
)

// oddSigner is a crypto.Signer with a key type deviceauth does not accept.
type oddSigner struct{}

func (oddSigner) Public() crypto.PublicKey { return struct{}{} }
func (oddSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("unsupported")
}

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Options)
		want   []string // substrings that must all appear
		is     error
	}{
		{"no servers", func(o *Options) { o.Servers = nil }, []string{"Servers is empty"}, ErrNoServer},
		{"bad scheme", func(o *Options) { o.Servers = []string{"https://ok", "ftp://mender"} }, []string{`Servers[1] "ftp://mender"`, "scheme"}, nil},
		{"blank server", func(o *Options) { o.Servers = []string{" "} }, []string{"Servers[0]", "empty URL"}, nil},
		{"query in server", func(o *Options) { o.Servers = []string{"https://m/?a=b"} }, []string{"Servers[0]", "query"}, nil},
		{"no auth key", func(o *Options) { o.AuthKey = nil }, []string{"AuthKey is nil"}, nil},
		{"unsupported auth key", func(o *Options) { o.AuthKey = oddSigner{} }, []string{"AuthKey", "unsupported key type"}, nil},
		{"no identity", func(o *Options) { o.Identity = nil }, []string{"Identity is nil"}, nil},
		{"no device type", func(o *Options) { o.DeviceType = " " }, []string{"DeviceType is empty"}, nil},
		{"negative interval", func(o *Options) { o.RetryPollInterval = -time.Second }, []string{"RetryPollInterval is negative"}, nil},
		{"negative timeout", func(o *Options) { o.RequestTimeout = -1 }, []string{"RequestTimeout is negative"}, nil},
		{"jitter out of range", func(o *Options) { o.PollJitter = 1.5 }, []string{"PollJitter is 1.5"}, nil},
		{"jitter NaN", func(o *Options) { o.PollJitter = math.NaN() }, []string{"PollJitter is NaN"}, nil},
		{"all problems at once", func(o *Options) { o.AuthKey = nil; o.DeviceType = ""; o.UpdatePollInterval = -1 },
			[]string{"AuthKey is nil", "DeviceType is empty", "UpdatePollInterval is negative"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, _ := baseOptions(newTestKey(t), "https://mender.local")
			tt.mutate(&opts)
			c, err := New(opts)
			require.Error(t, err)
			assert.Nil(t, c)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			if tt.is != nil {
				assert.ErrorIs(t, err, tt.is)
			}
		})
	}
}

func TestNewDefaultsAndNormalisation(t *testing.T) {
	opts, _ := baseOptions(newTestKey(t), "mender.example.com/", "https://mender.example.com", "http://10.0.0.1:8080", " https://b.example:8443/ ")
	opts.TenantToken = " tok \n"
	opts.ArtifactName = ""
	c, err := New(opts)
	require.NoError(t, err)
	assert.Equal(t, []string{"https://mender.example.com", "http://10.0.0.1:8080", "https://b.example:8443"}, c.servers,
		"https:// added, one trailing slash removed, duplicates dropped")
	assert.Equal(t, DefaultUpdatePollInterval, c.opts.UpdatePollInterval)
	assert.Equal(t, DefaultInventoryPollInterval, c.opts.InventoryPollInterval)
	assert.Equal(t, DefaultRetryPollInterval, c.opts.RetryPollInterval)
	assert.Equal(t, DefaultRequestTimeout, c.opts.RequestTimeout)
	assert.InDelta(t, DefaultPollJitter, c.opts.PollJitter, 0)
	assert.Equal(t, "tok", c.opts.TenantToken)
	assert.Equal(t, "unknown", c.currentArtifactName())
	assert.Equal(t, 7500*time.Millisecond, c.backoff.Base, "min(RetryPollInterval, 60s)/8")
	assert.Equal(t, DefaultRetryPollInterval, c.backoff.Max)

	c.SetArtifactName("release-9")
	assert.Equal(t, "release-9", c.currentArtifactName())
	c.SetArtifactName("")
	assert.Equal(t, "unknown", c.currentArtifactName())
	assert.Empty(t, c.Token())
}

func TestNewBackoffForShortRetryInterval(t *testing.T) {
	opts, _ := baseOptions(newTestKey(t), "https://m")
	opts.RetryPollInterval = 16 * time.Second
	c, err := New(opts)
	require.NoError(t, err)
	assert.Equal(t, 2*time.Second, c.backoff.Base)
	assert.Equal(t, 16*time.Second, c.backoff.Max)
}

func TestNewWarnings(t *testing.T) {
	ca := newCA(t, "CA")
	otherKey := newTestKey(t)
	tests := []struct {
		name   string
		mutate func(*Options)
		want   string
	}{
		{"skip verify", func(o *Options) { o.SkipVerify = true }, "TLS server verification is disabled"},
		{"plain http", func(o *Options) { o.Servers = []string{"http://mender.local"} }, "plain http"},
		{"auth key is not the certificate key", func(o *Options) {
			cred := &testCred{Signer: otherKey}
			cred.set(ca.issue(t, leafSpec{cn: "d"}, &otherKey.PublicKey))
			o.TLSCredential = cred
		}, "auth key differs from the mTLS client certificate key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, logs := baseOptions(newTestKey(t), "https://mender.local")
			tt.mutate(&opts)
			_, err := New(opts)
			require.NoError(t, err)
			assert.Contains(t, logs.String(), tt.want)
		})
	}
	t.Run("no warning for a sound setup", func(t *testing.T) {
		key := newTestKey(t)
		opts, logs := baseOptions(key, "https://mender.local")
		cred := &testCred{Signer: key}
		cred.set(ca.issue(t, leafSpec{cn: "d"}, &key.PublicKey))
		opts.TLSCredential = cred
		_, err := New(opts)
		require.NoError(t, err)
		assert.NotContains(t, logs.String(), "level=WARN")
	})
}

func TestDecide(t *testing.T) {
	certErr := &url.Error{Op: "Post", URL: "https://m", Err: x509.UnknownAuthorityError{}}
	tests := []struct {
		name string
		err  error
		want retry.Decision
	}{
		{"success", nil, retry.DecisionDone},
		{"pending", &APIError{Op: OpAuth, StatusCode: 401}, retry.DecisionPending},
		{"pending on one of two servers", fmt.Errorf("x: %w", errors.Join(certErr, &APIError{Op: OpAuth, StatusCode: 401})), retry.DecisionPending},
		{"certificate error", fmt.Errorf("auth: %w", certErr), retry.DecisionPermanent},
		{"marked permanent", retry.Permanent(errors.New("bad token bytes")), retry.DecisionPermanent},
		{"server error", &APIError{Op: OpInventory, StatusCode: 503}, retry.DecisionBackoff},
		{"rate limited", &APIError{Op: OpNext, StatusCode: 429}, retry.DecisionBackoff},
		{"not found", &APIError{Op: OpNext, StatusCode: 404}, retry.DecisionPermanent},
		{"redirect", &APIError{Op: OpNext, StatusCode: 307, Location: "http://m/x"}, retry.DecisionPermanent},
		{"auth redirect", &APIError{Op: OpAuth, StatusCode: 308, Location: "http://m/x"}, retry.DecisionPermanent},
		{"bad request", &APIError{Op: OpInventory, StatusCode: 400}, retry.DecisionPermanent},
		{"401 after re-auth", &APIError{Op: OpInventory, StatusCode: 401}, retry.DecisionBackoff},
		{"auth server error", &APIError{Op: OpAuth, StatusCode: 500}, retry.DecisionBackoff},
		{"no server reachable", fmt.Errorf("%w: dial", ErrNoServer), retry.DecisionBackoff},
		{"local failure", errors.New("identity script failed"), retry.DecisionBackoff},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, decide(tt.err))
		})
	}
}

func TestHint(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{x509.UnknownAuthorityError{}, "set ServerCertificate"},
		{x509.HostnameError{Certificate: &x509.Certificate{}, Host: "mender.local"}, "subjectAltName=DNS:mender.local"},
		{x509.HostnameError{Certificate: &x509.Certificate{}, Host: "10.1.2.3"}, "subjectAltName=IP:10.1.2.3"},
		{x509.CertificateInvalidError{Reason: x509.Expired}, "device clock"},
		{x509.CertificateInvalidError{Reason: x509.IncompatibleUsage}, "key usage"},
		{&APIError{Op: OpNext, StatusCode: 404}, "check the server URL"},
		{&APIError{Op: OpNext, StatusCode: 307, Location: "http://m/x"}, "set ServerURL to the https address"},
		{&APIError{Op: OpNext, StatusCode: 409}, "mid-deployment"},
		{&APIError{Op: OpInventory, StatusCode: 400}, "malformed"},
		{&APIError{Op: OpInventory, StatusCode: 403, RequestID: "r9"}, `request_id "r9"`},
		{errors.New("other"), "configuration"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			assert.Contains(t, hint(fmt.Errorf("wrapped: %w", tt.err)), tt.want)
		})
	}
}

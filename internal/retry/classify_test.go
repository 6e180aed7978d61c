package retry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestClassifyStatus(t *testing.T) {
	tests := []struct {
		code int
		path string
		want Decision
	}{
		{200, "/api/devices/v1/inventory/device/attributes", DecisionDone},
		{204, "/api/devices/v1/deployments/device/deployments/x/status", DecisionDone},
		{206, "/artifact", DecisionDone},
		{401, "/api/devices/v1/inventory/device/attributes", DecisionReauth},
		{401, "/api/devices/v1/authentication/auth_requests", DecisionPending},
		{401, "/api/devices/v1/authentication/auth_requests/", DecisionPending},
		{429, "/api/devices/v1/authentication/auth_requests", DecisionBackoff},
		{429, "/api/devices/v2/deployments/device/deployments/next", DecisionBackoff},
		{500, "/x", DecisionBackoff},
		{502, "/x", DecisionBackoff},
		{503, "/x", DecisionBackoff},
		{504, "/x", DecisionBackoff},
		{400, "/x", DecisionPermanent},
		{403, "/x", DecisionPermanent},
		{404, "/x", DecisionPermanent},
		{405, "/x", DecisionPermanent},
		{409, "/x", DecisionPermanent},
		{413, "/x", DecisionPermanent},
		{415, "/x", DecisionPermanent},
		{301, "/x", DecisionPermanent},
		{100, "/x", DecisionPermanent},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %s", tt.code, tt.path), func(t *testing.T) {
			req := &http.Request{URL: &url.URL{Path: tt.path}}
			assert.Equal(t, tt.want, Classify(&http.Response{StatusCode: tt.code, Request: req}, nil))
		})
	}
}

func TestClassify401WithoutRequestIsReauth(t *testing.T) {
	assert.Equal(t, DecisionReauth, Classify(&http.Response{StatusCode: 401}, nil))
}

func TestClassifyErrors(t *testing.T) {
	leaf := &x509.Certificate{}
	wrapURL := func(err error) error { return &url.Error{Op: "Get", URL: "https://mender.local/", Err: err} }
	tests := []struct {
		name string
		err  error
		resp *http.Response
		want Decision
	}{
		{"connection refused", wrapURL(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}), nil, DecisionBackoff},
		{"timeout", wrapURL(context.DeadlineExceeded), nil, DecisionBackoff},
		{"unexpected EOF", wrapURL(io.ErrUnexpectedEOF), nil, DecisionBackoff},
		{"remote TLS alert", wrapURL(tls.AlertError(42)), nil, DecisionBackoff},
		{"tls verification error", wrapURL(&tls.CertificateVerificationError{Err: errors.New("x")}), nil, DecisionPermanent},
		{"unknown authority", wrapURL(x509.UnknownAuthorityError{Cert: leaf}), nil, DecisionPermanent},
		{"hostname mismatch", wrapURL(x509.HostnameError{Certificate: leaf, Host: "mender.local"}), nil, DecisionPermanent},
		{"expired", wrapURL(x509.CertificateInvalidError{Cert: leaf, Reason: x509.Expired}), nil, DecisionPermanent},
		{"hostname wrapped in verification error", &tls.CertificateVerificationError{Err: x509.HostnameError{Certificate: leaf, Host: "h"}}, nil, DecisionPermanent},
		{"marked permanent", fmt.Errorf("load config: %w", Permanent(errors.New("bad key"))), nil, DecisionPermanent},
		{"error wins over response", wrapURL(io.EOF), &http.Response{StatusCode: 200}, DecisionBackoff},
		{"nothing at all", nil, nil, DecisionBackoff},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, Classify(tt.resp, tt.err))
		})
	}
}

func TestPermanent(t *testing.T) {
	assert.NoError(t, Permanent(nil))
	assert.False(t, IsPermanent(nil))
	assert.False(t, IsPermanent(errors.New("plain")))

	base := x509.UnknownAuthorityError{}
	err := fmt.Errorf("auth at https://a: %w", Permanent(base))
	assert.True(t, IsPermanent(err))
	assert.Equal(t, "auth at https://a: "+base.Error(), err.Error(), "Permanent must not change the message")
	var ua x509.UnknownAuthorityError
	assert.ErrorAs(t, err, &ua, "Permanent must keep the wrapped error reachable")
	sentinel := errors.New("sentinel")
	assert.ErrorIs(t, Permanent(sentinel), sentinel)
}

func TestDecisionString(t *testing.T) {
	names := map[Decision]string{DecisionDone: "done", DecisionBackoff: "backoff", DecisionReauth: "reauth",
		DecisionPending: "pending", DecisionPermanent: "permanent", Decision(99): "unknown"}
	for d, want := range names {
		assert.Equal(t, want, d.String())
	}
}

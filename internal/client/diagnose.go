package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"syscall"
)

// Step is the stage of reaching the server at which a request failed.
type Step string

const (
	// StepConnect is resolving the server name and opening the TCP
	// connection (to the server, or to the proxy from the environment).
	StepConnect Step = "connect"
	// StepTLS is the TLS handshake: verifying the server's certificate, or
	// the server refusing the device's; also a scheme that does not match
	// the port (http:// to a TLS port, https:// to a plain HTTP port).
	StepTLS Step = "tls"
	// StepRequest is the HTTP exchange once connected: an unexpected
	// answer, or a failure Diagnose does not recognise.
	StepRequest Step = "request"
)

// Diagnosis explains the error of a request to the server for a person:
// what happened and what to do about it.
type Diagnosis struct {
	// Step is where the request failed.
	Step Step
	// Problem says what went wrong, with the likely causes, in one line
	// (e.g. "the server refused this device's certificate (TLS alert
	// \"bad certificate\"): ..."); "" when the error is not one Diagnose
	// recognises.
	Problem string
	// Fix says what to do; never empty.
	Fix string
}

// String returns "Problem; fix: Fix", or Fix alone when Problem is empty.
func (d Diagnosis) String() string {
	if d.Problem == "" {
		return d.Fix
	}
	return d.Problem + "; fix: " + d.Fix
}

// Diagnose classifies an error returned by the client's requests
// (Authenticate, SendInventory, CheckUpdate, Probe, ...) into the step that
// failed, the problem and its fix. It is the one classifier behind the
// daemon's log hints and `device-agent check`. Diagnose(nil) is the zero
// Diagnosis.
func Diagnose(err error) Diagnosis {
	if err == nil {
		return Diagnosis{}
	}
	if errors.Is(err, ErrPending) {
		return Diagnosis{Step: StepRequest,
			Problem: "the server has not accepted this device (it is pending, rejected or not preauthorized)",
			Fix:     "accept the device in the Mender UI or preauthorize its identity and public key; through an mTLS ambassador, check the ambassador's log (a certificate it trusts gets the device preauthorized)"}
	}
	// The client wraps every server verification failure in a
	// *tls.CertificateVerificationError, as crypto/tls does, so the specific
	// x509 errors come before it; the host name first, since a certificate
	// that is otherwise fine is the common case.
	if he, ok := errors.AsType[x509.HostnameError](err); ok {
		return hostnameDiagnosis(he)
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return Diagnosis{Step: StepTLS,
			Problem: "the server certificate is not trusted: it is not signed by a CA this device trusts",
			Fix:     "set ServerCertificate in mender.conf to the PEM file of the server's CA (or of the server certificate)"}
	}
	if ie, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		if ie.Reason == x509.Expired {
			return Diagnosis{Step: StepTLS,
				Problem: "the server certificate is expired or not yet valid",
				Fix:     "check the device clock (NTP) and the server certificate's dates; renew it if it has expired"}
		}
		return Diagnosis{Step: StepTLS,
			Problem: "the server certificate chain is not valid for TLS server authentication",
			Fix:     "check its key usage (serverAuth) and CA constraints, and reissue it"}
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return Diagnosis{Step: StepTLS,
			Problem: "the server certificate could not be verified, so the server is not trusted",
			Fix:     "set ServerCertificate in mender.conf to the PEM file of the server's CA, and check the server certificate"}
	}
	if a, ok := remoteAlert(err); ok {
		return alertDiagnosis(a)
	}
	if errors.Is(err, http.ErrSchemeMismatch) {
		return plainHTTPAnswer
	}
	if rh, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		if strings.HasPrefix(string(rh.RecordHeader[:]), "HTTP/") {
			return plainHTTPAnswer
		}
		return Diagnosis{Step: StepTLS,
			Problem: fmt.Sprintf("the server did not answer with TLS (it sent %q)", rh.RecordHeader[:]),
			Fix:     "check the port in ServerURL: it must be the server's https port"}
	}
	if plainHTTPToTLS(err) {
		return Diagnosis{Step: StepTLS,
			Problem: "ServerURL uses http:// but the server speaks TLS (https) on this port",
			Fix:     "use https:// in ServerURL"}
	}
	if de, ok := errors.AsType[*net.DNSError](err); ok {
		return Diagnosis{Step: StepConnect,
			Problem: fmt.Sprintf("the server name %q does not resolve", de.Name),
			Fix:     "check the host in ServerURL and the device's DNS (/etc/resolv.conf)"}
	}
	if oe, ok := errors.AsType[*net.OpError](err); ok && (oe.Op == "dial" || oe.Op == "proxyconnect") {
		return dialDiagnosis(oe)
	}
	if ae, ok := errors.AsType[*APIError](err); ok {
		return apiDiagnosis(ae)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Diagnosis{Step: StepConnect,
			Problem: "the server did not answer in time",
			Fix:     "check ServerURL, the network and firewalls (and the proxy, if HTTPS_PROXY is set)"}
	}
	if _, ok := errors.AsType[*net.OpError](err); ok || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		if strings.Contains(err.Error(), "http://") {
			// A TLS server answers a plain request with 400 and closes
			// the connection, often before the answer can be read.
			return Diagnosis{Step: StepConnect,
				Problem: "the connection broke on a plain http:// request, as it does when the port speaks TLS",
				Fix:     "if the server speaks TLS (https) on this port, use https:// in ServerURL; otherwise check the network and firewalls"}
		}
		return Diagnosis{Step: StepConnect,
			Problem: "the connection to the server broke",
			Fix:     "check ServerURL (host and port), the network and firewalls; a server that closes TLS connections at once may not trust this device's certificate"}
	}
	if errors.Is(err, ErrNoServer) {
		return Diagnosis{Step: StepConnect, Problem: "no server could be reached", Fix: "check ServerURL and the network"}
	}
	return Diagnosis{Step: StepRequest, Fix: "check the agent configuration and the error message"}
}

// plainHTTPAnswer is the diagnosis of a plain HTTP answer to a TLS handshake.
var plainHTTPAnswer = Diagnosis{Step: StepTLS,
	Problem: "the server answered in plain HTTP: this port does not speak TLS (https)",
	Fix:     "use the server's https port in ServerURL (http:// only for a server without TLS: tokens then travel in clear text)"}

// hostnameDiagnosis is the fix for a server certificate that does not name
// the host of ServerURL: use a name it has, or reissue it with this one.
func hostnameDiagnosis(he x509.HostnameError) Diagnosis {
	host := he.Host
	names := certNames(he.Certificate)
	list := strings.Join(names, ", ")
	if net.ParseIP(host) != nil {
		reissue := "or reissue the certificate with subjectAltName=IP:" + host
		if !hasIPSAN(he.Certificate) {
			problem := fmt.Sprintf("this certificate has no IP SANs, so it cannot be verified for the IP address %s in ServerURL", host)
			if cn := legacyCN(he.Certificate); cn != "" {
				return Diagnosis{Step: StepTLS, Problem: problem,
					Fix: fmt.Sprintf("use the host name in its CN (%s) in ServerURL, resolving to the server (DNS or /etc/hosts); %s", cn, reissue)}
			}
			if list != "" {
				return Diagnosis{Step: StepTLS, Problem: problem,
					Fix: fmt.Sprintf("ServerURL must use a name in the server certificate: %s; %s", list, reissue)}
			}
			return Diagnosis{Step: StepTLS, Problem: problem, Fix: "reissue the certificate with subjectAltName=IP:" + host}
		}
		return Diagnosis{Step: StepTLS, Problem: fmt.Sprintf("the server certificate is not valid for %s", host),
			Fix: fmt.Sprintf("ServerURL must use a name in the server certificate: %s; %s", list, reissue)}
	}
	if list == "" {
		return Diagnosis{Step: StepTLS, Problem: "the server certificate names no host",
			Fix: "reissue the server certificate with subjectAltName=DNS:" + host}
	}
	return Diagnosis{Step: StepTLS, Problem: fmt.Sprintf("the server certificate is not valid for %q", host),
		Fix: fmt.Sprintf("ServerURL must use a name in the server certificate: %s; or reissue the certificate with subjectAltName=DNS:%s", list, host)}
}

// maxNames is how many certificate names a diagnosis lists.
const maxNames = 8

// certNames lists the names a server certificate is valid for, as the
// client verifies them: its DNS and IP SANs, or its Common Name when it has
// no subjectAltName extension at all (see verifyServer).
func certNames(c *x509.Certificate) []string {
	if c == nil {
		return nil
	}
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if cn := legacyCN(c); cn != "" {
		names = append(names, cn)
	}
	if len(names) > maxNames {
		names = append(names[:maxNames], fmt.Sprintf("and %d more", len(names)-maxNames))
	}
	return names
}

// legacyCN is the Common Name of a certificate without subjectAltName, the
// only name such a certificate is accepted for; "" otherwise.
func legacyCN(c *x509.Certificate) string {
	if c == nil || hasSAN(c) {
		return ""
	}
	return c.Subject.CommonName
}

func hasIPSAN(c *x509.Certificate) bool { return c != nil && len(c.IPAddresses) > 0 }

// remoteAlert returns the TLS alert the server sent. crypto/tls reports it
// as a *net.OpError with Op "remote error" whose Err has an unexported
// uint8 type (only QUIC connections use the exported tls.AlertError), so
// its value is read by reflection and returned as a tls.AlertError, whose
// Error text is the alert's name.
func remoteAlert(err error) (tls.AlertError, bool) {
	var found *net.OpError
	walk(err, func(e error) bool {
		if oe, ok := e.(*net.OpError); ok && oe.Op == "remote error" && oe.Err != nil {
			found = oe
			return true
		}
		return false
	})
	if found == nil {
		return 0, false
	}
	if a, ok := errors.AsType[tls.AlertError](found.Err); ok {
		return a, true
	}
	v := reflect.ValueOf(found.Err)
	if v.Kind() == reflect.Uint8 && v.Type().PkgPath() == "crypto/tls" {
		return tls.AlertError(v.Uint()), true
	}
	return 0, false
}

// walk calls f on err and every error it wraps, depth first, until f
// returns true.
func walk(err error, f func(error) bool) bool {
	if err == nil {
		return false
	}
	if f(err) {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return walk(u.Unwrap(), f)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if walk(e, f) {
				return true
			}
		}
	}
	return false
}

// TLS alert numbers (RFC 8446, 6.2) that Diagnose tells apart.
const (
	alertHandshakeFailure     tls.AlertError = 40
	alertBadCertificate       tls.AlertError = 42
	alertUnsupportedCert      tls.AlertError = 43
	alertCertificateRevoked   tls.AlertError = 44
	alertCertificateExpired   tls.AlertError = 45
	alertCertificateUnknown   tls.AlertError = 46
	alertUnknownCA            tls.AlertError = 48
	alertAccessDenied         tls.AlertError = 49
	alertProtocolVersion      tls.AlertError = 70
	alertInsufficientSecurity tls.AlertError = 71
	alertUnrecognizedName     tls.AlertError = 112
	alertCertificateRequired  tls.AlertError = 116
)

// refusedFix is what to do when the server refused the device certificate.
const refusedFix = "compare the device certificate (openssl x509 -in <HttpsClient.Certificate> -noout -issuer -serial -dates) with the CA the server (mTLS ambassador) trusts and its revocation list, read the ambassador's log for the reason, and issue the device a new certificate from the device CA if needed"

// alertDiagnosis explains a TLS alert from the server. With TLS 1.3 the
// server checks the client certificate after the client's handshake is
// done, so these alerts arrive with the first request, not the handshake.
func alertDiagnosis(a tls.AlertError) Diagnosis {
	name := strings.TrimPrefix(a.Error(), "tls: ")
	refused := func(causes string) Diagnosis {
		return Diagnosis{Step: StepTLS,
			Problem: fmt.Sprintf("the server refused this device's certificate (TLS alert %q): %s", name, causes),
			Fix:     refusedFix}
	}
	switch a {
	case alertUnknownCA:
		return refused("it is not signed by a CA the server (the mTLS ambassador) trusts")
	case alertCertificateRevoked:
		return refused("it is revoked")
	case alertCertificateExpired:
		return refused("it has expired, or is not yet valid, by the server's clock")
	case alertBadCertificate, alertUnsupportedCert, alertCertificateUnknown, alertAccessDenied:
		return refused("likely it is not signed by a CA the server (the mTLS ambassador) trusts, it is revoked, or it has expired")
	case alertCertificateRequired:
		return Diagnosis{Step: StepTLS,
			Problem: "the server requires a client certificate and this device sent none",
			Fix:     "set HttpsClient.Certificate and HttpsClient.Key in mender.conf to the device certificate and its key"}
	case alertHandshakeFailure, alertProtocolVersion, alertInsufficientSecurity:
		return Diagnosis{Step: StepTLS,
			Problem: fmt.Sprintf("the server refused the TLS handshake (TLS alert %q): no TLS version, cipher suite or signature scheme in common, or a client certificate it does not accept", name),
			Fix:     "the agent needs TLS 1.2 or later with ECDHE; check the server's TLS settings and log"}
	case alertUnrecognizedName:
		return Diagnosis{Step: StepTLS,
			Problem: "the server does not serve the host name in ServerURL (TLS alert \"unrecognized name\")",
			Fix:     "use the host name the server is configured for in ServerURL"}
	}
	return Diagnosis{Step: StepTLS,
		Problem: fmt.Sprintf("the server ended the TLS handshake with alert %q", name),
		Fix:     "check the server's log for the reason"}
}

// plainHTTPToTLS reports whether err shows a plain HTTP request answered by
// a TLS server: Go and nginx answer it with 400 and a telling body; other
// servers answer with a TLS alert record, which net/http cannot parse.
func plainHTTPToTLS(err error) bool {
	if ae, ok := errors.AsType[*APIError](err); ok && ae.StatusCode == http.StatusBadRequest {
		m := strings.ToLower(ae.Message)
		return strings.Contains(m, "http request to an https server") || strings.Contains(m, "plain http request was sent to https port")
	}
	return strings.Contains(err.Error(), `malformed HTTP response "\x15\x03`)
}

// dialDiagnosis explains a failed TCP connection.
func dialDiagnosis(oe *net.OpError) Diagnosis {
	where := "the server"
	if oe.Op == "proxyconnect" {
		where = "the proxy (HTTPS_PROXY/HTTP_PROXY)"
	}
	switch {
	case errors.Is(oe, syscall.ECONNREFUSED):
		return Diagnosis{Step: StepConnect,
			Problem: fmt.Sprintf("%s is unreachable: connection refused (nothing listens on that port)", where),
			Fix:     "check the host and port in ServerURL and that the server (or mTLS ambassador) is running"}
	case oe.Timeout():
		return Diagnosis{Step: StepConnect,
			Problem: fmt.Sprintf("%s is unreachable: the connection timed out", where),
			Fix:     "check ServerURL, the network and firewalls"}
	}
	return Diagnosis{Step: StepConnect,
		Problem: fmt.Sprintf("%s is unreachable", where),
		Fix:     "check ServerURL, the network and firewalls"}
}

// apiDiagnosis explains an unexpected HTTP answer.
func apiDiagnosis(ae *APIError) Diagnosis {
	d := Diagnosis{Step: StepRequest}
	switch {
	case ae.StatusCode >= 300 && ae.StatusCode < 400:
		d.Problem = "the server redirects API calls, and the agent does not follow redirects"
		d.Fix = "set ServerURL to the https address the server redirects to, or remove the redirect on the server or proxy"
	case ae.StatusCode == http.StatusNotFound:
		d.Problem = "the endpoint does not exist on this server"
		d.Fix = "check the server URL: it must be the Mender server (or the mTLS ambassador in front of it), without a path"
	case ae.StatusCode == http.StatusConflict:
		d.Problem = "the server refused a change during an active deployment"
		d.Fix = "artifact name or device type must not change mid-deployment"
	case ae.StatusCode == http.StatusUnsupportedMediaType, ae.StatusCode == http.StatusBadRequest:
		d.Problem = "the server refused the request as malformed"
		d.Fix = "check DeviceType, ArtifactName and inventory values"
	case ae.StatusCode == http.StatusForbidden && ae.Op == OpAuth:
		d.Problem = "the server refused the auth request"
		d.Fix = fmt.Sprintf("through an mTLS ambassador: the auth request must be signed with the certificate's key (Security.AuthPrivateKey unset or equal to HttpsClient.Key) and the certificate must not be revoked; check the server logs for request_id %q", ae.RequestID)
	default:
		d.Fix = fmt.Sprintf("the server refused the request with %d: check the server logs for request_id %q", ae.StatusCode, ae.RequestID)
	}
	return d
}

// maxProbeBody is how much of the probe's answer is read.
const maxProbeBody = 4096

// maxProbeAttempts bounds the probes of one server (see Probe).
const maxProbeAttempts = 3

// closedByPeer reports whether err is the peer closing or resetting the
// connection without a TLS alert we could read.
func closedByPeer(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// Probe checks that server, a server base URL as in Options.Servers, can be
// reached the way every request reaches it: through the proxy from the
// environment, and for https with the client's one TLS configuration (full
// server verification, the client certificate from TLSCredential). It sends
// GET to the server's root and accepts any HTTP answer, which also proves
// that a TLS 1.3 server accepted the client certificate (such a server
// refuses it only after the client's handshake is done). It returns the TLS
// connection state, nil for http://. Errors are for [Diagnose]; nothing is
// authenticated and nothing is logged.
func (c *Client) Probe(ctx context.Context, server string) (*tls.ConnectionState, error) {
	srv, err := normalizeServer(server)
	if err != nil {
		return nil, fmt.Errorf("probe %q: %w", server, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	var resp *http.Response
	// A server that refuses the client certificate after a TLS 1.3
	// handshake sends its alert and closes; now and then the request's
	// write sees the closed connection before the read sees the alert.
	// Another attempt on a new connection shows the alert.
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv+"/", nil)
		if err != nil {
			return nil, fmt.Errorf("probe %s: %w", srv, err)
		}
		if c.opts.UserAgent != "" {
			req.Header.Set("User-Agent", c.opts.UserAgent)
		}
		resp, err = c.hc.Do(req)
		if err == nil {
			break
		}
		if attempt >= maxProbeAttempts || !closedByPeer(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("probe: %w", err)
		}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxProbeBody))
	if resp.StatusCode == http.StatusBadRequest {
		ae := &APIError{Op: "probe " + srv, StatusCode: resp.StatusCode, Message: strings.TrimSpace(string(body))}
		if plainHTTPToTLS(ae) {
			return nil, ae
		}
	}
	return resp.TLS, nil
}

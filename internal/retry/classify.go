package retry

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
)

// Decision is what a caller should do after an HTTP exchange.
type Decision int

// The decisions [Classify] returns. They carry a Decision prefix because
// [Backoff] and [Permanent] already name the backoff type and the marker
// function.
const (
	// DecisionDone means the exchange succeeded (2xx): reset the backoff.
	DecisionDone Decision = iota
	// DecisionBackoff means a transient failure (transport error, timeout,
	// 429, 5xx): wait a [Backoff] delay, or the server's Retry-After, and try
	// again.
	DecisionBackoff
	// DecisionReauth means the device token was refused (401 on a device
	// API): drop the token, authenticate again and retry the request once.
	DecisionReauth
	// DecisionPending means the auth request got 401: the device is not
	// accepted (yet); wait the retry poll interval and try again.
	DecisionPending
	// DecisionPermanent means retrying soon cannot help (TLS certificate
	// verification failure, other 4xx, an error marked with [Permanent]):
	// report it loudly and retry only at the slow poll interval.
	DecisionPermanent
)

// String returns the lowercase name of d.
func (d Decision) String() string {
	switch d {
	case DecisionDone:
		return "done"
	case DecisionBackoff:
		return "backoff"
	case DecisionReauth:
		return "reauth"
	case DecisionPending:
		return "pending"
	case DecisionPermanent:
		return "permanent"
	}
	return "unknown"
}

// authRequestsSuffix ends the device auth request path
// (/api/devices/v1/authentication/auth_requests); a 401 there means pending.
const authRequestsSuffix = "/authentication/auth_requests"

// Classify maps the outcome of one HTTP exchange to a Decision.
//
// With a non-nil err: an error marked with [Permanent] or a certificate
// verification failure (*tls.CertificateVerificationError,
// x509.UnknownAuthorityError, x509.HostnameError,
// x509.CertificateInvalidError, anywhere in the chain) is DecisionPermanent;
// any other error (transport failure, timeout, cancellation) is
// DecisionBackoff.
//
// With a response: 2xx is DecisionDone; 401 is DecisionReauth, or
// DecisionPending when the request (resp.Request) was the device auth request;
// 429 and 5xx are DecisionBackoff; every other status (other 4xx, and
// unexpected 1xx/3xx) is DecisionPermanent. Both nil yields DecisionBackoff.
func Classify(resp *http.Response, err error) Decision {
	if err != nil {
		if IsPermanent(err) || isCertError(err) {
			return DecisionPermanent
		}
		return DecisionBackoff
	}
	if resp == nil {
		return DecisionBackoff
	}
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return DecisionDone
	case code == http.StatusUnauthorized:
		if resp.Request != nil && resp.Request.URL != nil &&
			strings.HasSuffix(strings.TrimSuffix(resp.Request.URL.Path, "/"), authRequestsSuffix) {
			return DecisionPending
		}
		return DecisionReauth
	case code == http.StatusTooManyRequests || code >= 500:
		return DecisionBackoff
	}
	return DecisionPermanent
}

// isCertError reports whether err is a certificate verification failure.
func isCertError(err error) bool {
	var (
		verr *tls.CertificateVerificationError
		uerr x509.UnknownAuthorityError
		herr x509.HostnameError
		ierr x509.CertificateInvalidError
	)
	return errors.As(err, &verr) || errors.As(err, &uerr) || errors.As(err, &herr) || errors.As(err, &ierr)
}

// permanentError marks an error as not worth retrying soon.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err so that [Classify] and [IsPermanent] treat it as not
// worth retrying soon. The message is unchanged and errors.Is/As still see err.
// Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or any error it wraps, was marked with
// [Permanent].
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

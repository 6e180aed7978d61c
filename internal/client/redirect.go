package client

import (
	"fmt"
	"net/http"
	"net/url"
)

// maxDownloadRedirects is how many redirects an artifact download follows.
const maxDownloadRedirects = 3

// refuseRedirect is the CheckRedirect of API calls: the 3xx answer itself
// is returned (nothing is sent to its Location) and becomes an *APIError
// naming the Location. Following it could carry the device token, the
// tenant token or the inventory to another server, or over plain http.
func refuseRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// downloadRedirectError is a redirect that an artifact download refused to
// follow. Its message names the target without its query (the signature of
// a presigned link).
type downloadRedirectError struct{ msg string }

func (e *downloadRedirectError) Error() string { return e.msg }

// followDownloadRedirect is the CheckRedirect of artifact downloads: at most
// maxDownloadRedirects redirects, each from https to https, and never with
// an Authorization header (net/http drops it only for another domain).
func followDownloadRedirect(req *http.Request, via []*http.Request) error {
	to := redactURL(req.URL)
	if len(via) > maxDownloadRedirects {
		return &downloadRedirectError{fmt.Sprintf("refused redirect number %d (to %s): artifact downloads follow at most %d redirects; serve the artifact from fewer hops",
			len(via), to, maxDownloadRedirects)}
	}
	if from := via[len(via)-1].URL; from.Scheme != "https" || req.URL.Scheme != "https" {
		return &downloadRedirectError{fmt.Sprintf("refused redirect from %s to %s: artifact downloads follow redirects only from https to https; serve the artifact storage over https",
			from.Scheme, to)}
	}
	req.Header.Del("Authorization")
	return nil
}

// redactURL returns u without user info, query and fragment: safe to log
// and to put in errors (a presigned link's signature is in its query).
func redactURL(u *url.URL) string {
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

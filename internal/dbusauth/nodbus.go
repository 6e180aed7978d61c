//go:build nodbus

package dbusauth

import "context"

// Service is the D-Bus service; built with -tags nodbus there is none, and
// [Start] never returns one.
type Service struct{}

// Start reports that this build has no D-Bus support.
func Start(Options) (*Service, error) { return nil, ErrNoDBus }

// Close does nothing.
func (*Service) Close() error { return nil }

// Done is never closed.
func (*Service) Done() <-chan struct{} { return nil }

// Session has no token.
func (*Service) Session() (token, serverURL string) { return "", "" }

// Publish does nothing.
func (*Service) Publish(string) {}

// Fetch starts nothing.
func (*Service) Fetch() bool { return false }

// Probe reports that this build has no D-Bus support.
func Probe(context.Context, string) (ProbeResult, error) { return ProbeResult{}, ErrNoDBus }

//go:build !unix

package pki

// lockFile is a no-op where flock does not exist: concurrent signing
// commands on one CA directory may then lose index entries.
func lockFile(string) (unlock func(), err error) { return func() {}, nil }

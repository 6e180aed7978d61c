//go:build !unix

package provision

import "os"

// lockFD does nothing where flock does not exist.
func lockFD(*os.File) (unlock func(), err error) { return func() {}, nil }

//go:build !unix

package serialport

import "os"

// tryLockFD always succeeds where flock does not exist.
func tryLockFD(*os.File) (bool, error) { return true, nil }

//go:build unix

package provision

import (
	"os"
	"syscall"
)

// lockFD takes an exclusive flock on f, waiting for it.
func lockFD(f *os.File) (unlock func(), err error) {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return nil, err
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }, nil
}

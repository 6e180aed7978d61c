//go:build unix

package serialport

import (
	"os"
	"syscall"
)

// tryLockFD takes an exclusive flock on f without waiting; false when
// another process holds it.
func tryLockFD(f *os.File) (bool, error) {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == syscall.EWOULDBLOCK {
		return false, nil
	}
	return err == nil, err
}

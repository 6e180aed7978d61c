//go:build unix

package rlimit

import (
	"fmt"
	"syscall"
)

// CurrentFiles returns the open-file limits in force (Before = Soft).
func CurrentFiles() (Files, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return Files{}, fmt.Errorf("read the open-file limit: %w", err)
	}
	return Files{Before: l.Cur, Soft: l.Cur, Hard: l.Max}, nil
}

// RaiseFiles raises the soft open-file limit to the hard one and returns
// both. When the raise is refused the limits in force are returned with
// the error, so a caller can still size its bounds on them.
func RaiseFiles() (Files, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return Files{}, fmt.Errorf("read the open-file limit: %w", err)
	}
	f := Files{Before: l.Cur, Soft: l.Cur, Hard: l.Max}
	if l.Cur >= l.Max {
		return f, nil
	}
	want := l
	want.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return f, fmt.Errorf("raise the open-file limit from %d to %d: %w", l.Cur, l.Max, err)
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return f, fmt.Errorf("read the open-file limit: %w", err)
	}
	f.Soft, f.Hard = l.Cur, l.Max
	return f, nil
}

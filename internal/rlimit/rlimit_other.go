//go:build !unix

package rlimit

import "errors"

// RaiseFiles is not supported on this system: it returns zero limits and
// an error.
func RaiseFiles() (Files, error) {
	return Files{}, errors.New("open-file limits are not supported on this system")
}

// CurrentFiles is not supported on this system: it returns zero limits and
// an error.
func CurrentFiles() (Files, error) {
	return Files{}, errors.New("open-file limits are not supported on this system")
}

//go:build !linux

package main

// monotonicMicros reports no clock: MONOTONIC_USEC is only sent on Linux.
func monotonicMicros() (uint64, bool) { return 0, false }

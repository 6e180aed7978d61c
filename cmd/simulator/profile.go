package main

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
)

// profileEnv names a file that receives a CPU profile (pprof format) of the
// whole command, for finding where a fleet run or a server spends its time:
// SIMULATOR_CPU_PROFILE=serve.prof simulator serve --mtls ...
const profileEnv = "SIMULATOR_CPU_PROFILE"

// startProfile starts the CPU profile that $SIMULATOR_CPU_PROFILE asks for
// and returns the function that stops it and closes the file; with the
// variable unset it does nothing.
func startProfile(stderr io.Writer) (stop func(), err error) {
	path := os.Getenv(profileEnv)
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: give a writable file path", profileEnv, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", profileEnv, err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(stderr, "simulator: %s: %v\n", profileEnv, err)
		}
	}, nil
}

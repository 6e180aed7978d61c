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

// allocProfileEnv names a file that receives, when the command ends, the
// allocation profile (pprof "allocs": every sampled allocation since the
// start, with the bytes and objects still live) for finding what feeds the
// garbage collector.
const allocProfileEnv = "SIMULATOR_ALLOC_PROFILE"

// startProfile starts the profiles that $SIMULATOR_CPU_PROFILE and
// $SIMULATOR_ALLOC_PROFILE ask for and returns the function that writes
// them and closes their files; with both variables unset it does nothing.
// Both files are created at once, so that a bad path fails before the
// command runs.
func startProfile(stderr io.Writer) (stop func(), err error) {
	var stops []func() error
	stopAll := func() {
		for _, s := range stops {
			if err := s(); err != nil {
				fmt.Fprintf(stderr, "simulator: %v\n", err)
			}
		}
	}
	if path := os.Getenv(profileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: give a writable file path", profileEnv, err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", profileEnv, err)
		}
		stops = append(stops, func() error {
			pprof.StopCPUProfile()
			if err := f.Close(); err != nil {
				return fmt.Errorf("%s: %w", profileEnv, err)
			}
			return nil
		})
	}
	if path := os.Getenv(allocProfileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			stopAll()
			return nil, fmt.Errorf("%s: %w: give a writable file path", allocProfileEnv, err)
		}
		stops = append(stops, func() error {
			err := pprof.Lookup("allocs").WriteTo(f, 0)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", allocProfileEnv, err)
			}
			return nil
		})
	}
	if len(stops) == 0 {
		return func() {}, nil
	}
	return stopAll, nil
}

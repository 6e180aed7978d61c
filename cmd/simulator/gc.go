package main

import "runtime/debug"

// serveGCPercent is the garbage collector's target of `simulator serve`
// when $GOGC is unset. The fake backend keeps every device of the fleet in
// memory, so each collection scans a large live heap; with Go's default of
// 100 a 100,000-device start spent about a third of serve's CPU in the
// collector (CPU profile of simulator serve --mtls, 2 cores). 400 lets the
// heap grow to five times the live data between collections, memory a
// test server on a build machine can spare. $GOGC still wins.
const serveGCPercent = 400

// applyServeGC sets serveGCPercent unless getenv("GOGC") is set, and
// reports whether it did.
func applyServeGC(getenv func(string) string) bool {
	if getenv("GOGC") != "" {
		return false
	}
	debug.SetGCPercent(serveGCPercent)
	return true
}

// Package rlimit raises the process's open-file limit (RLIMIT_NOFILE), for
// the processes that hold many connections: the ambassador and the fleet
// simulator. A server that reaches the limit can no longer accept, and one
// that does not know its limit cannot bound its connections below it.
package rlimit

import "fmt"

// Files is the open-file limit of the process before and after Raise.
type Files struct {
	// Before is the soft limit found at start.
	Before uint64
	// Soft and Hard are the limits in force after Raise.
	Soft, Hard uint64
}

// String renders the limits for a start-up log line.
func (f Files) String() string {
	if f.Before == f.Soft {
		return fmt.Sprintf("open-file limit %d (hard %d)", f.Soft, f.Hard)
	}
	return fmt.Sprintf("open-file limit raised from %d to %d (hard %d)", f.Before, f.Soft, f.Hard)
}

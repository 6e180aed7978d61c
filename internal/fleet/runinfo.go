package fleet

import (
	"runtime"
	"strings"
	"time"
)

// RunInfo describes the command that ran the fleet and the host it ran on.
type RunInfo struct {
	// Command is the simulator command, e.g. "run" or "demo".
	Command string `json:"command"`
	// Version is the simulator's version; GoVersion the Go it was built with.
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	// Cores is the number of logical CPUs of the host; MemTotalBytes its
	// memory (MemTotal of /proc/meminfo, 0 when unknown).
	Cores         int    `json:"cores"`
	MemTotalBytes uint64 `json:"mem_total_bytes"`
	// Started is when the run began.
	Started time.Time `json:"started"`
	// Flags lists every flag of the command with its value, secrets
	// redacted (see RedactFlag).
	Flags []FlagValue `json:"flags"`
}

// FlagValue is one flag and its value.
type FlagValue struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// NewRunInfo returns the host's figures with command and version filled.
func NewRunInfo(command, version string, started time.Time) *RunInfo {
	return &RunInfo{Command: command, Version: version, GoVersion: runtime.Version(),
		Cores: runtime.NumCPU(), MemTotalBytes: hostMemory(), Started: started}
}

// AddFlag records a flag, redacting the value of secrets: a flag whose
// name holds "token", "password" or "secret" shows "(set)", or "" when
// empty.
func (ri *RunInfo) AddFlag(name, value string) {
	ri.Flags = append(ri.Flags, FlagValue{Name: name, Value: RedactFlag(name, value)})
}

// RedactFlag returns value, or "(set)" for a non-empty secret.
func RedactFlag(name, value string) string {
	n := strings.ToLower(name)
	for _, s := range []string{"token", "password", "secret"} {
		if strings.Contains(n, s) && value != "" {
			return "(set)"
		}
	}
	return value
}

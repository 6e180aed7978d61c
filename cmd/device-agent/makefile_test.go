package main

import (
	"debug/elf"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// makeDryRun returns the commands `make -n TARGET` would run from the
// repository root, with env added to make's environment.
func makeDryRun(t *testing.T, target string, env ...string) string {
	t.Helper()
	cmd := exec.Command("make", "-n", "-s", "-C", "../..", target, "BIN="+t.TempDir())
	cmd.Env = append(freshMakeEnv(cmd.Environ()), env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "make -n %s: %s", target, out)
	return string(out)
}

// freshMakeEnv drops what an enclosing make (make test) passes to the
// make this test runs: its flags and command-line variables (MAKEFLAGS,
// MAKEOVERRIDES) and a GOARCH that would decide the build-agent cases.
func freshMakeEnv(env []string) []string {
	return slices.DeleteFunc(env, func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL", "GOARCH", "GOARM":
			return true
		}
		return false
	})
}

// TestMakefileARM32LinkerRounding: the 32-bit ARM agents are linked with
// 4 KiB segment alignment (-R 0x1000; Linux on 32-bit ARM has 4 KiB pages
// only), which drops about 0.12 MB of padding from the stripped armv7
// agent; arm64, whose kernels may use 64 KiB pages, and the host build
// keep Go's default. build-agent follows $GOARCH, as Yocto exports it.
func TestMakefileARM32LinkerRounding(t *testing.T) {
	for _, tt := range []struct {
		target string
		env    []string
		want   bool
	}{
		{"build-armv6", nil, true},
		{"build-armv7", nil, true},
		{"build-arm64", nil, false},
		{"build-agent", []string{"GOARCH=arm", "GOARM=7"}, true},
		{"build-agent", []string{"GOARCH=arm64"}, false},
		{"build-agent", []string{"GOARCH=amd64"}, false},
	} {
		t.Run(tt.target+" "+strings.Join(tt.env, " "), func(t *testing.T) {
			cmds := makeDryRun(t, tt.target, tt.env...)
			require.Contains(t, cmds, "go build", "the target builds the agent")
			assert.Equal(t, tt.want, strings.Contains(cmds, "-R 0x1000"), "4 KiB linker rounding in: %s", cmds)
		})
	}
}

// TestARMv7AgentSegmentsAre4KiBAligned builds the armv7 agent as `make
// build-armv7` does and checks its ELF: every loadable segment aligned to
// 4 KiB, none to Go's 64 KiB default. (The armtest target runs the same
// binary under qemu-arm.)
func TestARMv7AgentSegmentsAre4KiBAligned(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the armv7 agent")
	}
	bin := t.TempDir()
	cmd := exec.Command("make", "-s", "-C", "../..", "build-armv7", "BIN="+bin)
	cmd.Env = freshMakeEnv(cmd.Environ())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "make build-armv7: %s", out)
	f, err := elf.Open(filepath.Join(bin, "linux_armv7", "device-agent"))
	require.NoError(t, err)
	defer f.Close()
	assert.Equal(t, elf.EM_ARM, f.Machine)
	loads := 0
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			loads++
			assert.Equal(t, uint64(0x1000), p.Align, "alignment of the segment at %#x", p.Vaddr)
		}
	}
	assert.Positive(t, loads, "loadable segments")
}

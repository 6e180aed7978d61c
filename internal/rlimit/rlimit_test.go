//go:build unix

package rlimit

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestRaiseFilesInChild lowers the soft limit in a child process, raises
// it there and checks the result; the test process keeps its own limit.
func TestRaiseFilesInChild(t *testing.T) {
	if os.Getenv("RLIMIT_CHILD") == "1" {
		var l syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			t.Fatal(err)
		}
		if l.Max < 128 {
			t.Skipf("hard limit %d too low for this test", l.Max)
		}
		low := syscall.Rlimit{Cur: 64, Max: l.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
			t.Fatal(err)
		}
		f, err := RaiseFiles()
		if err != nil {
			t.Fatal(err)
		}
		if f.Before != 64 || f.Soft != l.Max || f.Hard != l.Max {
			t.Fatalf("RaiseFiles() = %+v, want before 64, soft = hard = %d", f, l.Max)
		}
		if !strings.Contains(f.String(), "raised from 64") {
			t.Fatalf("String() = %q", f.String())
		}
		cur, err := CurrentFiles()
		if err != nil || cur.Soft != l.Max || cur.Hard != l.Max || cur.Before != cur.Soft {
			t.Fatalf("CurrentFiles() = %+v, %v: want soft = hard = %d", cur, err, l.Max)
		}
		again, err := RaiseFiles()
		if err != nil || again.Before != l.Max || strings.Contains(again.String(), "raised") {
			t.Fatalf("second RaiseFiles() = %+v, %v: want no change", again, err)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRaiseFilesInChild$", "-test.v")
	cmd.Env = append(os.Environ(), "RLIMIT_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

//go:build unix

package identity

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// killProcessGroup runs cmd in its own process group and makes cancellation
// kill the whole group, so that a timed-out script's children die with it.
func killProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
}

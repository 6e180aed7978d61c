//go:build !unix

package identity

import "os/exec"

// killProcessGroup keeps exec's default cancellation, which kills only the
// script itself; Cmd.WaitDelay still bounds the wait for its children.
func killProcessGroup(cmd *exec.Cmd) {}

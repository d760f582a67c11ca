package harness

import (
	"os/exec"
	"syscall"
)

// setProcAttr has the kernel kill a child process when the test binary dies (a panic, a timeout's
// SIGQUIT), so no service outlives its test.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

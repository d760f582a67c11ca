package natstest

import (
	"os/exec"
	"syscall"
)

// setProcAttr has the kernel kill nats-server when the test binary dies (a panic, a timeout's
// SIGQUIT), so no server outlives its test.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

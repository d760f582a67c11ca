//go:build !linux

package natstest

import "os/exec"

// setProcAttr does nothing where the kernel cannot kill a child with its parent; Cleanup kills
// the servers.
func setProcAttr(*exec.Cmd) {}

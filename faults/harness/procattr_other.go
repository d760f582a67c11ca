//go:build !linux

package harness

import "os/exec"

// setProcAttr does nothing where the kernel cannot kill a child with its parent; Cleanup kills
// the process.
func setProcAttr(*exec.Cmd) {}

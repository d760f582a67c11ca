//go:build !linux

package radicaletest

import "os/exec"

// setProcAttr does nothing where the kernel cannot kill a child with its parent; Cleanup kills
// the server.
func setProcAttr(*exec.Cmd) {}

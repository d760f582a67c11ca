package deploy_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/postamt/postamt/deploy"
)

// imageRefs are the image references the prod overlay's containers and the Dockerfile's FROM
// lines name (a FROM naming an earlier stage excepted), read from the tree at root.
func imageRefs(t *testing.T, root string) []string {
	t.Helper()
	m, err := deploy.Render(filepath.Join(root, "deploy/k8s/overlays/prod"))
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, w := range m.Workloads() {
		for _, c := range append(slices.Clone(w.Template.Spec.InitContainers), w.Template.Spec.Containers...) {
			refs = append(refs, c.Image)
		}
	}
	f, err := os.Open(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stages := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || !strings.EqualFold(fields[0], "FROM") {
			continue
		}
		fields = slices.DeleteFunc(fields[1:], func(s string) bool { return strings.HasPrefix(s, "--") })
		if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
			stages[fields[2]] = true
		}
		if !stages[fields[0]] || len(fields) == 3 {
			refs = append(refs, fields[0])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(refs)
	return slices.Compact(refs)
}

// unpinnedList reads deploy/unpinned-images.txt under root: the first field of each line that
// is not a comment.
func unpinnedList(t *testing.T, root string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "deploy/unpinned-images.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 0 && !strings.HasPrefix(f[0], "#") {
			out = append(out, f[0])
		}
	}
	return out
}

var digestRef = regexp.MustCompile(`@sha256:[0-9a-f]{64}$`)

// TestImagesPinnedOrListed (issue 19): every image of the prod overlay and the Dockerfile is
// pinned by digest, or listed in deploy/unpinned-images.txt as to be pinned at release by
// tools/pin-images.sh — no registry is reachable where this tree is tested, and a digest is
// never written by hand. A new image cannot slip in unpinned and unlisted, and the list holds
// nothing that is pinned already or no longer used.
func TestImagesPinnedOrListed(t *testing.T) {
	refs := imageRefs(t, "..")
	listed := unpinnedList(t, "..")
	for _, ref := range refs {
		if !digestRef.MatchString(ref) && !slices.Contains(listed, ref) {
			t.Errorf("image %q is neither pinned by digest nor listed in deploy/unpinned-images.txt (to be pinned at release by tools/pin-images.sh)", ref)
		}
	}
	for _, l := range listed {
		if !slices.Contains(refs, l) {
			t.Errorf("deploy/unpinned-images.txt lists %q, which the prod overlay and the Dockerfile do not name unpinned: remove the line", l)
		}
	}
}

// TestPinImagesScript runs the release step, tools/pin-images.sh, on a copy of the tree with a
// stand-in resolver (PIN_IMAGES_RESOLVER) in place of a registry: every listed image gets its
// digest in the prod overlay and the Dockerfile, the list is left empty, -check passes, and the
// rendered overlay names every image with its tag and digest.
func TestPinImagesScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("tools/pin-images.sh needs bash")
	}
	root := t.TempDir()
	for _, p := range []string{"tools/pin-images.sh", "Dockerfile", "deploy/unpinned-images.txt", "deploy/k8s"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cp", "-a", filepath.Join("..", p), filepath.Join(root, p)).CombinedOutput(); err != nil {
			t.Fatalf("copy %s: %v\n%s", p, err, out)
		}
	}
	resolver := filepath.Join(root, "resolver.sh")
	// Not a real digest: the sha256 of the reference, for this copy only.
	if err := os.WriteFile(resolver, []byte("#!/bin/sh\nprintf 'sha256:%s\\n' \"$(printf '%s' \"$1\" | sha256sum | cut -c1-64)\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	before := imageRefs(t, root)
	script := filepath.Join(root, "tools/pin-images.sh")
	if out, err := exec.Command(script, "-check").CombinedOutput(); err == nil && len(unpinnedList(t, root)) > 0 {
		t.Errorf("-check passed with images listed:\n%s", out)
	}
	cmd := exec.Command(script)
	cmd.Env = append(os.Environ(), "PIN_IMAGES_RESOLVER="+resolver)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pin-images.sh: %v\n%s", err, out)
	}
	if out, err := exec.Command(script, "-check").CombinedOutput(); err != nil {
		t.Errorf("-check after pinning: %v\n%s", err, out)
	}
	if left := unpinnedList(t, root); len(left) > 0 {
		t.Errorf("still listed after pinning: %v", left)
	}
	after := imageRefs(t, root)
	for _, ref := range after {
		name, _, _ := strings.Cut(ref, "@")
		if !digestRef.MatchString(ref) || !slices.Contains(before, name) && !slices.Contains(before, ref) {
			t.Errorf("after pinning: %q, want one of %v with its digest", ref, before)
		}
	}
	if len(after) != len(before) {
		t.Errorf("images after pinning %v, before %v", after, before)
	}
}

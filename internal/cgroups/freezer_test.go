package cgroups_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phaul/phaul/internal/cgroups"
	"github.com/phaul/phaul/internal/testutil"
)

// TestFreezerDir runs on the host's real freezer hierarchy: a tree alone in
// its cgroup can be frozen with it; in the root cgroup, or with a stranger
// in its cgroup, it cannot.
func TestFreezerDir(t *testing.T) {
	testutil.RequireRoot(t)
	l, err := cgroups.Detect()
	if err != nil {
		t.Fatal(err)
	}
	mnt := l.V1["freezer"]
	if mnt == "" {
		testutil.SkipOrFail(t, "no v1 freezer hierarchy on this host")
	}
	start := func() int {
		cmd := exec.Command("sleep", "100")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd.Process.Pid
	}
	a, b := start(), start()

	if dir, why := cgroups.FreezerDir(l, []int{a}); dir != "" || !strings.Contains(why, "root freezer cgroup") {
		t.Errorf("in the root cgroup: %q, %q", dir, why)
	}

	cg := filepath.Join(mnt, fmt.Sprintf("phaul-test-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cg) })
	move := func(pid int, dir string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(fmt.Sprint(pid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	move(a, cg)
	t.Cleanup(func() { move(a, mnt); move(b, mnt) })
	if dir, why := cgroups.FreezerDir(l, []int{a}); dir != cg {
		t.Errorf("alone in %s: %q, %q", cg, dir, why)
	}
	// A stranger joins: no longer alone.
	move(b, cg)
	if dir, why := cgroups.FreezerDir(l, []int{a}); dir != "" || !strings.Contains(why, fmt.Sprint(b)) {
		t.Errorf("with pid %d beside it: %q, %q", b, dir, why)
	}
	// Both in the tree: alone again.
	if dir, why := cgroups.FreezerDir(l, []int{a, b}); dir != cg {
		t.Errorf("both in the tree: %q, %q", dir, why)
	}
}

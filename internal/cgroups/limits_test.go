package cgroups

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// A v2 cgroup as recorded from a pure cgroup v2 host (systemd service with
// MemoryMax=100M, CPUQuota=50%, TasksMax=64), in a temporary directory.
func fakeV2(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for f, v := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestReadLimits(t *testing.T) {
	src := fakeV2(t, map[string]string{
		"memory.max": "104857600", "memory.high": "max", "memory.low": "0", "memory.min": "0",
		"memory.swap.max": "max", "cpu.max": "50000 100000", "cpu.weight": "100", "pids.max": "64",
		"cgroup.procs": "123", // not a limit
	})
	got, err := ReadLimits(src)
	if err != nil {
		t.Fatal(err)
	}
	want := []Limit{{"memory.max", "104857600"}, {"cpu.max", "50000 100000"}, {"pids.max", "64"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ReadLimits = %v, want %v (only what differs from the defaults)", got, want)
	}
}

func TestApplyLimits(t *testing.T) {
	dst := fakeV2(t, map[string]string{"memory.max": "max", "cpu.max": "max 100000", "pids.max": "max"})
	applied, err := ApplyLimits(dst, []Limit{{"memory.max", "104857600"}, {"cpu.max", "50000 100000"}, {"pids.max", "64"}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(applied, " ") != "memory.max=104857600 cpu.max=50000 100000 pids.max=64" {
		t.Errorf("applied %q", applied)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "pids.max")); string(b) != "64" {
		t.Errorf("pids.max = %q", b)
	}
	// A controller not enabled here: the file is missing; say what to do.
	_, err = ApplyLimits(dst, []Limit{{"io.weight", "default 200"}})
	if err == nil || !strings.Contains(err.Error(), "subtree_control") {
		t.Errorf("missing file: %v", err)
	}
	// A peer cannot make phaul write any other file.
	for _, bad := range []string{"cgroup.procs", "../../etc/passwd", "memory.max/../x"} {
		if _, err := ApplyLimits(dst, []Limit{{bad, "1"}}); err == nil {
			t.Errorf("ApplyLimits(%q) accepted", bad)
		}
	}
}

func TestV2Dir(t *testing.T) {
	sets := []Set{{ID: "4", Controllers: "memory", Path: "/a"}, {ID: "0", Controllers: "", Path: "/user.slice/session-2.scope"}}
	l := &Layout{Kind: "v2", V2: "/sys/fs/cgroup", V2Controllers: []string{"memory", "pids"}}
	if d := l.V2Dir(sets); d != "/sys/fs/cgroup/user.slice/session-2.scope" {
		t.Errorf("V2Dir = %q", d)
	}
	// A hybrid host whose unified hierarchy holds no controllers.
	l = &Layout{Kind: "hybrid", V2: "/sys/fs/cgroup/unified"}
	if d := l.V2Dir(sets); d != "" {
		t.Errorf("V2Dir without controllers = %q", d)
	}
}

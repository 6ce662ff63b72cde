package migrate

import (
	"strings"
	"testing"

	"github.com/phaul/phaul/internal/cgroups"
	"github.com/phaul/phaul/internal/pb"
)

func TestCgroupRoots(t *testing.T) {
	hybrid := &cgroups.Layout{Kind: "hybrid", V2: "/sys/fs/cgroup/unified", V1: map[string]string{
		"cpu": "x", "cpuacct": "x", "cpuset": "x", "memory": "x", "pids": "x", "freezer": "x", "name=systemd": "x"}}
	v2 := &cgroups.Layout{Kind: "v2", V2: "/sys/fs/cgroup", V1: map[string]string{}}
	sets := func(lines ...string) []*pb.CgroupSet {
		var out []*pb.CgroupSet
		for _, l := range lines {
			c, p, _ := strings.Cut(l, ":")
			out = append(out, &pb.CgroupSet{Controllers: c, Path: p})
		}
		return out
	}
	tests := []struct {
		name   string
		src    []*pb.CgroupSet
		layout *cgroups.Layout
		want   string // "ctrl:path ..." in order, or "error: ..."
	}{
		{"at the top: only the simple controllers", sets("cpuset:/", "memory:/", "freezer:/", "pids:/", ":/"), hybrid,
			"memory:/r pids:/r"},
		{"own cgroups: every controller it is below the top of", sets("cpuset:/app", "memory:/app", "freezer:/", "name=systemd:/user/1000.user/c2.session", ":/"), hybrid,
			"cpuset:/r memory:/r name=systemd:/r"},
		{"controller missing on the destination", sets("blkio:/app", "memory:/app"), hybrid,
			"error: the destination has no cgroup v1 hierarchy for blkio"},
		{"pure v2: one default root", sets(":/user.slice/user-1000.slice/session-2.scope"), v2, ":/r"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roots, err := CgroupRoots(tt.src, "/r", tt.layout)
			var got []string
			for _, r := range roots {
				got = append(got, r.Controllers+":"+r.Path)
			}
			s := strings.Join(got, " ")
			if err != nil {
				s = "error: " + err.Error()
			}
			if !strings.HasPrefix(s, tt.want) {
				t.Errorf("got %q, want %q", s, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "relative", "/a/../b", "/a/"} {
		if _, err := CgroupRoots(nil, bad, hybrid); err == nil {
			t.Errorf("root %q accepted", bad)
		}
	}
}

func TestDumpControllers(t *testing.T) {
	sets := []cgroups.Set{
		{ID: "8", Controllers: "pids", Path: "/user.slice/session-c2.scope"},
		{ID: "7", Controllers: "blkio", Path: "/"},
		{ID: "1", Controllers: "name=systemd", Path: "/user.slice/session-c2.scope"},
		{ID: "0", Controllers: "", Path: "/"},
	}
	if got := strings.Join(dumpControllers(sets), " "); got != "pids name=systemd" {
		t.Errorf("dumpControllers = %q, want the hierarchies the tree is below the top of", got)
	}
	if got := dumpControllers([]cgroups.Set{{ID: "7", Controllers: "blkio", Path: "/"}}); len(got) != 1 || got[0] != "phaul-none" {
		t.Errorf("all at the top: %q, want a name matching none", got)
	}
}

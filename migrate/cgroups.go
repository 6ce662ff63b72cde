package migrate

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-restore/go-criu/v7/rpc"

	"github.com/phaul/phaul/internal/cgroups"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

// alwaysMapped are v1 controllers whose cgroups can be created anywhere
// without filling anything in: the tree is placed under the destination's
// root for them even where it lived at the source's root.
var alwaysMapped = map[string]bool{"memory": true, "cpu": true, "cpuacct": true, "cpu,cpuacct": true, "pids": true, "blkio": true, "name=systemd": true}

// CgroupRoots computes CRIU's --cgroup-root list for restoring a tree whose
// root task had the cgroup sets src under root on a host laid out as dst.
//
// CRIU moves the tree's own cgroup (the deepest common one) to the given
// root and keeps the sub-paths of tasks below it. One root for all
// controllers is a trap: CRIU then creates, for example, a cpuset cgroup
// with empty cpus and fails. So roots are given per controller: for every
// v1 hierarchy the tree lives below the top of, and for the simple
// controllers (alwaysMapped) even where it lives at the top; on the v2
// hierarchy (pure v2 hosts) one default root.
func CgroupRoots(src []*pb.CgroupSet, root string, dst *cgroups.Layout) ([]*pb.CgroupRoot, error) {
	if root == "" || !path.IsAbs(root) || path.Clean(root) != root {
		return nil, fmt.Errorf("cgroup root %q: want a clean absolute path such as /phaul", root)
	}
	var out []*pb.CgroupRoot
	var missing []string
	for _, s := range src {
		if s.Controllers == "" {
			// The unified hierarchy: on a hybrid host it holds no
			// controllers and CRIU leaves it alone.
			if dst.Kind == "v2" {
				out = append(out, &pb.CgroupRoot{Path: root})
			}
			continue
		}
		if s.Path == "/" && !alwaysMapped[s.Controllers] {
			continue
		}
		if _, ok := dst.V1[s.Controllers]; !ok {
			missing = append(missing, s.Controllers)
			continue
		}
		out = append(out, &pb.CgroupRoot{Controllers: s.Controllers, Path: root})
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("the destination has no cgroup v1 hierarchy for %s, where the tree lives on the source", strings.Join(missing, ", "))
	}
	return out, nil
}

// criuRoots converts roots to CRIU's options.
func criuRoots(roots []*pb.CgroupRoot) []*rpc.CgroupRoot {
	var out []*rpc.CgroupRoot
	for _, r := range roots {
		cr := &rpc.CgroupRoot{Path: &r.Path}
		if r.Controllers != "" {
			ctrl := r.Controllers
			cr.Ctrl = &ctrl
		}
		out = append(out, cr)
	}
	return out
}

// setsToPB converts /proc/PID/cgroup sets to their message form.
func setsToPB(sets []cgroups.Set) []*pb.CgroupSet {
	out := make([]*pb.CgroupSet, 0, len(sets))
	for _, s := range sets {
		out = append(out, &pb.CgroupSet{Controllers: s.Controllers, Path: s.Path})
	}
	return out
}

// placeTree moves a restored, still stopped tree into the cgroup roots
// where CRIU did not put it. CRIU records no cgroups for a tree that lived
// in the same cgroups as CRIU itself on the source ("All tasks in criu's
// cgroups"), and restores such a tree into its own cgroups on the
// destination; the service's cgroup root must hold it all the same.
func placeTree(l *cgroups.Layout, roots []*pb.CgroupRoot, pid int) ([]string, error) {
	sets, err := cgroups.ProcessSets(pid)
	if err != nil {
		return nil, err
	}
	var moved []string
	for _, r := range roots {
		mnt := l.Mount(r.Controllers)
		if mnt == "" {
			continue
		}
		var have string
		for _, s := range sets {
			if s.Controllers == r.Controllers {
				have = s.Path
			}
		}
		if have == r.Path || strings.HasPrefix(have, r.Path+"/") {
			continue // CRIU placed it
		}
		dir := path.Join(mnt, r.Path)
		if err := mkdirCgroup(mnt, r.Path, r.Controllers == "cpuset"); err != nil {
			return moved, err
		}
		for _, p := range proc.Tree(pid) {
			if err := os.WriteFile(path.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(p)), 0o644); err != nil && !errors.Is(err, unix.ESRCH) {
				return moved, fmt.Errorf("move pid %d to cgroup %s: %w", p, dir, err)
			}
		}
		moved = append(moved, strings.TrimPrefix(r.Controllers+":"+r.Path, ":"))
	}
	return moved, nil
}

// mkdirCgroup creates rel and its parents below a hierarchy mounted at
// mnt. In cpuset, each new cgroup gets its parent's cpus and mems: CRIU
// and the kernel refuse tasks in an empty cpuset.
func mkdirCgroup(mnt, rel string, cpuset bool) error {
	cur := mnt
	for _, p := range strings.Split(strings.Trim(rel, "/"), "/") {
		if p == "" {
			continue
		}
		next := path.Join(cur, p)
		if err := os.Mkdir(next, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create cgroup %s: %w", next, err)
		}
		if cpuset {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if v, _ := os.ReadFile(path.Join(next, f)); strings.TrimSpace(string(v)) != "" {
					continue
				}
				pv, err := os.ReadFile(path.Join(cur, f))
				if err != nil {
					return fmt.Errorf("cgroup %s: %w", cur, err)
				}
				if err := os.WriteFile(path.Join(next, f), pv, 0o644); err != nil {
					return fmt.Errorf("cgroup %s: %w", next, err)
				}
			}
		}
		cur = next
	}
	return nil
}

// v2Limits reads the cgroup v2 limits of the tree's cgroup (sets are its
// root's, l this host's layout), which CRIU does not carry, for the
// destination to apply.
func v2Limits(l *cgroups.Layout, sets []cgroups.Set) []*pb.CgroupLimit {
	if l == nil {
		return nil
	}
	dir := l.V2Dir(sets)
	if dir == "" {
		return nil
	}
	ls, err := cgroups.ReadLimits(dir)
	if err != nil {
		return nil
	}
	out := make([]*pb.CgroupLimit, 0, len(ls))
	for _, x := range ls {
		out = append(out, &pb.CgroupLimit{File: x.File, Value: x.Value})
	}
	return out
}

// applyV2Limits writes the source's v2 limits on the restored tree's
// cgroup.
func applyV2Limits(l *cgroups.Layout, pid int, limits []*pb.CgroupLimit) ([]string, error) {
	if len(limits) == 0 {
		return nil, nil
	}
	sets, err := cgroups.ProcessSets(pid)
	if err != nil {
		return nil, err
	}
	dir := l.V2Dir(sets)
	if dir == "" {
		return nil, fmt.Errorf("the source's tree had cgroup v2 limits (%d), but this host has no cgroup v2 controllers to apply them", len(limits))
	}
	ls := make([]cgroups.Limit, 0, len(limits))
	for _, x := range limits {
		ls = append(ls, cgroups.Limit{File: x.File, Value: x.Value})
	}
	return cgroups.ApplyLimits(dir, ls)
}

// dumpControllers are the hierarchies CRIU is to record (its
// cgroup_dump_controller), named as /proc/PID/cgroup names them: those
// where the tree lives below the top. Where it lives at the top, CRIU
// would record every cgroup of the whole hierarchy as the tree's own and
// recreate them all below the destination's root; phaul places the tree
// there itself instead (placeTree). If there is no such hierarchy, a name
// that matches none keeps CRIU from recording any.
func dumpControllers(sets []cgroups.Set) []string {
	var out []string
	for _, s := range sets {
		if s.Path != "/" {
			out = append(out, s.Controllers)
		}
	}
	if len(out) == 0 {
		out = []string{"phaul-none"}
	}
	return out
}

// Package cgroups reads the cgroup layout of a host and the cgroups of a
// process from /proc.
package cgroups

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Layout is how cgroups are mounted on a host.
type Layout struct {
	// Kind is "v1" (only v1 hierarchies), "v2" (only the unified
	// hierarchy) or "hybrid" (both).
	Kind string `json:"kind"`
	// V1 maps each v1 hierarchy's controller list as /proc/PID/cgroup
	// names it ("cpu", "cpu,cpuacct", "name=systemd") to its mount point.
	V1 map[string]string `json:"v1,omitempty"`
	// V2 is where the unified hierarchy is mounted, if it is.
	V2 string `json:"v2,omitempty"`
	// V2Controllers are the controllers enabled in the unified hierarchy.
	V2Controllers []string `json:"v2_controllers,omitempty"`
}

// Mount returns where the hierarchy of controllers ("memory",
// "cpu,cpuacct", "" for the unified one) is mounted, or "".
func (l *Layout) Mount(controllers string) string {
	if controllers == "" {
		return l.V2
	}
	return l.V1[controllers]
}

// Detect reads the layout from /proc/self/mountinfo.
func Detect() (*Layout, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("detect cgroups: %w", err)
	}
	defer f.Close()
	l, err := ParseMountinfo(f)
	if err != nil {
		return nil, err
	}
	if l.V2 != "" {
		if data, err := os.ReadFile(l.V2 + "/cgroup.controllers"); err == nil {
			l.V2Controllers = strings.Fields(string(data))
		}
	}
	return l, nil
}

// ParseMountinfo finds the cgroup mounts in a mountinfo file.
func ParseMountinfo(r io.Reader) (*Layout, error) {
	l := &Layout{V1: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		mnt := unescape(pf[4])
		switch qf[0] {
		case "cgroup2":
			if l.V2 == "" {
				l.V2 = mnt
			}
		case "cgroup":
			var ctrls []string
			for _, o := range strings.Split(qf[2], ",") {
				if isController(o) {
					ctrls = append(ctrls, o)
				}
			}
			sort.Strings(ctrls)
			key := strings.Join(ctrls, ",")
			if _, seen := l.V1[key]; !seen && key != "" {
				l.V1[key] = mnt
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	switch {
	case len(l.V1) > 0 && l.V2 != "":
		l.Kind = "hybrid"
	case len(l.V1) > 0:
		l.Kind = "v1"
	case l.V2 != "":
		l.Kind = "v2"
	default:
		l.Kind = "none"
	}
	return l, nil
}

// isController tells controller names apart from the other super options
// of a v1 cgroup mount.
func isController(opt string) bool {
	if strings.HasPrefix(opt, "name=") {
		return true
	}
	switch opt {
	case "rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime", "xattr", "clone_children", "noprefix", "cpuset_v2_mode", "favordynmods":
		return false
	}
	return !strings.Contains(opt, "=")
}

func unescape(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// Set is one line of /proc/PID/cgroup: a hierarchy and the process's path
// in it.
type Set struct {
	ID          string `json:"id"`          // hierarchy ID ("0" for v2)
	Controllers string `json:"controllers"` // "cpu,cpuacct", "name=systemd", "" for v2
	Path        string `json:"path"`
}

// ProcessSets reads /proc/PID/cgroup.
func ProcessSets(pid int) ([]Set, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, fmt.Errorf("read cgroups of %d: %w", pid, err)
	}
	defer f.Close()
	return ParseProcCgroup(f)
}

// ParseProcCgroup parses the format of /proc/PID/cgroup.
func ParseProcCgroup(r io.Reader) ([]Set, error) {
	var sets []Set
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("bad cgroup line %q", line)
		}
		sets = append(sets, Set{ID: parts[0], Controllers: parts[1], Path: parts[2]})
	}
	return sets, sc.Err()
}

// FreezerDir returns the freezer cgroup directory that holds exactly the
// tasks of tree (tree[0] its root) and nothing else, so that CRIU can
// freeze the tree at once with it (its freeze_cgroup option) instead of
// seizing task by task; or "" and why not.
func FreezerDir(l *Layout, tree []int) (string, string) {
	if len(tree) == 0 {
		return "", "no tasks"
	}
	mnt := l.V1["freezer"]
	if mnt == "" {
		return "", "no v1 freezer hierarchy"
	}
	var path string // the root's
	in := make(map[int]bool, len(tree))
	for i, p := range tree {
		in[p] = true
		pp, err := freezerPath(p)
		if err != nil {
			return "", err.Error()
		}
		switch {
		case i == 0 && (pp == "/" || pp == ""):
			return "", "the tree is in the root freezer cgroup"
		case i == 0:
			path = pp
		case pp != path && !strings.HasPrefix(pp, path+"/"):
			return "", fmt.Sprintf("pid %d is in freezer cgroup %s, outside the root's %s", p, pp, path)
		}
	}
	dir := filepath.Join(mnt, path)
	var why string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		data, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, _ := strconv.Atoi(f); !in[pid] {
				why = fmt.Sprintf("freezer cgroup %s also holds pid %d, which is not in the tree", path, pid)
				return filepath.SkipAll
			}
		}
		return nil
	})
	if err != nil {
		return "", fmt.Sprintf("read freezer cgroup %s: %v", path, err)
	}
	if why != "" {
		return "", why
	}
	return dir, ""
}

func freezerPath(pid int) (string, error) {
	sets, err := ProcessSets(pid)
	if err != nil {
		return "", err
	}
	for _, s := range sets {
		for _, c := range strings.Split(s.Controllers, ",") {
			if c == "freezer" {
				return s.Path, nil
			}
		}
	}
	return "", fmt.Errorf("pid %d is in no freezer cgroup", pid)
}

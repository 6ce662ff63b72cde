package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Limit is the content of one cgroup v2 interface file.
type Limit struct {
	File  string `json:"file"`
	Value string `json:"value"`
}

func (l Limit) String() string { return l.File + "=" + l.Value }

// V2Limits are the cgroup v2 files that hold limits, each with its
// default value. CRIU does not carry them; phaul reads them from the
// tree's cgroup on the source and writes them on the destination.
var V2Limits = []Limit{
	{"memory.max", "max"},
	{"memory.high", "max"},
	{"memory.low", "0"},
	{"memory.min", "0"},
	{"memory.swap.max", "max"},
	{"cpu.max", "max 100000"},
	{"cpu.weight", "100"},
	{"pids.max", "max"},
	{"io.weight", "default 100"},
}

// ReadLimits reads the limits of the v2 cgroup dir that differ from their
// defaults. Files that do not exist (their controller is not enabled
// there) are skipped.
func ReadLimits(dir string) ([]Limit, error) {
	var out []Limit
	for _, l := range V2Limits {
		data, err := os.ReadFile(filepath.Join(dir, l.File))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read cgroup limit: %w", err)
		}
		v := strings.TrimSpace(string(data))
		if v != l.Value {
			out = append(out, Limit{File: l.File, Value: v})
		}
	}
	return out, nil
}

// ApplyLimits writes limits into the v2 cgroup dir. Only the files of
// V2Limits are written; any other name is refused, so that a peer cannot
// make phaul write elsewhere. It returns what it applied; an error names
// the first limit that could not be.
func ApplyLimits(dir string, limits []Limit) ([]string, error) {
	known := map[string]bool{}
	for _, l := range V2Limits {
		known[l.File] = true
	}
	var applied []string
	for _, l := range limits {
		if !known[l.File] {
			return applied, fmt.Errorf("cgroup limit %q: not a limit phaul carries (%s)", l.File, limitNames())
		}
		p := filepath.Join(dir, l.File)
		if err := writeExisting(p, l.Value); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return applied, fmt.Errorf("cgroup limit %s: %s has no such file: enable its controller in the parent's cgroup.subtree_control", l, dir)
			}
			return applied, fmt.Errorf("cgroup limit %s: %w", l, err)
		}
		applied = append(applied, l.String())
	}
	return applied, nil
}

func limitNames() string {
	var n []string
	for _, l := range V2Limits {
		n = append(n, l.File)
	}
	return strings.Join(n, ", ")
}

// V2Dir is the directory of pid's v2 cgroup, or "" when the host has no
// unified hierarchy with controllers or pid is in none.
func (l *Layout) V2Dir(sets []Set) string {
	if l.V2 == "" || len(l.V2Controllers) == 0 {
		return ""
	}
	for _, s := range sets {
		if s.ID == "0" && s.Controllers == "" {
			return filepath.Join(l.V2, s.Path)
		}
	}
	return ""
}

// writeExisting writes an interface file, which must exist (a cgroup
// directory's files are the kernel's; none is ever created).
func writeExisting(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

package criu

import (
	"fmt"
	"sort"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
)

// CgroupModes maps the names of --manage-cgroups (CRIU's own names) to
// CRIU's cgroup modes.
var CgroupModes = map[string]rpc.CriuCgMode{
	"ignore": rpc.CriuCgMode_IGNORE,
	"none":   rpc.CriuCgMode_CG_NONE,
	"props":  rpc.CriuCgMode_PROPS,
	"soft":   rpc.CriuCgMode_SOFT,
	"full":   rpc.CriuCgMode_FULL,
	"strict": rpc.CriuCgMode_STRICT,
}

// ParseCgroupMode parses a --manage-cgroups value.
func ParseCgroupMode(s string) (rpc.CriuCgMode, error) {
	m, ok := CgroupModes[s]
	if !ok {
		names := make([]string, 0, len(CgroupModes))
		for n := range CgroupModes {
			names = append(names, n)
		}
		sort.Strings(names)
		return 0, fmt.Errorf("unknown cgroup mode %q: want one of %s", s, strings.Join(names, ", "))
	}
	return m, nil
}

// CgroupModeName is the --manage-cgroups name of m.
func CgroupModeName(m rpc.CriuCgMode) string {
	for n, v := range CgroupModes {
		if v == m {
			return n
		}
	}
	return m.String()
}

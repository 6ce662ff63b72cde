// Package precheck decides, before anything is frozen, whether a migration
// can work: the source gathers facts about its host and the process tree
// (GatherSource), the destination judges them against its own
// (JudgeDestination), and the source adds what only it can see
// (JudgeSource). Each check yields a verdict: pass, warn or fail, and
// whether waiting could help (transient).
//
// The checks: cpu, modules (kernel features the tree uses), files,
// network, address (the addresses moved with the tree), cgroups, criu
// (versions, kernel, memory), session (shell jobs),
// pids (the PIDs the restore needs, nested PID namespaces),
// procfs (the /proc CRIU mounts for a PID namespace without one), terminals
// (from outside the tree) and transient conditions.
package precheck

import (
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/pb"
)

// Names of the checks, in report order.
var Names = []string{"criu", "cpu", "modules", "files", "network", "address", "cgroups", "session", "pids", "procfs", "terminals", "postcopy", "transient"}

// ValidName reports whether name is a check (for --skip-check).
func ValidName(name string) bool {
	for _, n := range Names {
		if n == name {
			return true
		}
	}
	return false
}

func pass(check, detail string, items ...string) *pb.Verdict {
	return &pb.Verdict{Check: check, Result: pb.Verdict_PASS, Detail: detail, Items: items}
}

func warn(check, detail string, items ...string) *pb.Verdict {
	return &pb.Verdict{Check: check, Result: pb.Verdict_WARN, Detail: detail, Items: items}
}

func fail(check, detail string, items ...string) *pb.Verdict {
	return &pb.Verdict{Check: check, Result: pb.Verdict_FAIL, Detail: detail, Items: items}
}

func failTransient(check, detail string, items ...string) *pb.Verdict {
	v := fail(check, detail, items...)
	v.Transient = true
	return v
}

// Merge combines verdicts from both sides into one per check, in the
// order of Names: the worst result wins, a failure is transient only if
// all its failing parts are, the details and items of the parts with that
// result are joined (a failure lists what fails, not what merely warned).
// Skipped checks are reported as such.
func Merge(skip []string, vs ...[]*pb.Verdict) []*pb.Verdict {
	by := map[string]*pb.Verdict{}
	for _, list := range vs {
		for _, v := range list {
			m, ok := by[v.Check]
			if !ok {
				by[v.Check] = proto.Clone(v).(*pb.Verdict)
				continue
			}
			switch {
			case rank(v.Result) > rank(m.Result):
				m.Result, m.Transient, m.Detail, m.Items = v.Result, v.Transient, v.Detail, v.Items
			case v.Result == m.Result && v.Result == pb.Verdict_FAIL:
				m.Transient = m.Transient && v.Transient
				m.Detail += "; " + v.Detail
				m.Items = append(m.Items, v.Items...)
			case v.Result == m.Result && v.Result == pb.Verdict_WARN:
				m.Detail += "; " + v.Detail
				m.Items = append(m.Items, v.Items...)
			case v.Result == m.Result:
				m.Items = append(m.Items, v.Items...)
			}
		}
	}
	for _, s := range skip {
		by[s] = &pb.Verdict{Check: s, Result: pb.Verdict_SKIPPED, Detail: "skipped (--skip-check): the migration may fail after the freeze"}
	}
	var out []*pb.Verdict
	for _, n := range Names {
		if v, ok := by[n]; ok {
			out = append(out, v)
			delete(by, n)
		}
	}
	var rest []string
	for n := range by {
		rest = append(rest, n)
	}
	sort.Strings(rest)
	for _, n := range rest {
		out = append(out, by[n])
	}
	return out
}

func rank(r pb.Verdict_Result) int {
	switch r {
	case pb.Verdict_FAIL:
		return 3
	case pb.Verdict_WARN:
		return 2
	case pb.Verdict_SKIPPED:
		return 1
	}
	return 0
}

// Outcome sums verdicts up.
type Outcome int

const (
	OK        Outcome = iota // the migration can go ahead
	Transient                // only transient failures: retry later
	Permanent                // at least one permanent failure
)

// Judge returns the outcome of a list of verdicts.
func Judge(vs []*pb.Verdict) Outcome {
	out := OK
	for _, v := range vs {
		if v.Result != pb.Verdict_FAIL {
			continue
		}
		if !v.Transient {
			return Permanent
		}
		out = Transient
	}
	return out
}

// Error is a migration stopped by its checks.
type Error struct {
	Outcome  Outcome
	Verdicts []*pb.Verdict
}

func (e *Error) Error() string {
	var failed []string
	for _, v := range e.Verdicts {
		if v.Result == pb.Verdict_FAIL {
			s := v.Check + ": " + v.Detail
			if len(v.Items) > 0 {
				s += " (" + strings.Join(v.Items, "; ") + ")"
			}
			failed = append(failed, s)
		}
	}
	kind := "cannot work"
	if e.Outcome == Transient {
		kind = "cannot work now (transient: retry later)"
	}
	return fmt.Sprintf("the checks say the migration %s: %s", kind, strings.Join(failed, " | "))
}

// Verdict is a verdict in reports (JSON: check, result, transient,
// detail, items).
type Verdict struct {
	Check     string   `json:"check"`
	Result    string   `json:"result"` // pass, warn, fail, skipped
	Transient bool     `json:"transient"`
	Detail    string   `json:"detail"`
	Items     []string `json:"items,omitempty"`
}

// ForReport converts verdicts to their report form.
func ForReport(vs []*pb.Verdict) []Verdict {
	out := make([]Verdict, 0, len(vs))
	for _, v := range vs {
		out = append(out, Verdict{Check: v.Check, Result: strings.ToLower(v.Result.String()), Transient: v.Transient, Detail: v.Detail, Items: v.Items})
	}
	return out
}

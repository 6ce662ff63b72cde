package precheck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

// shortLived is how young a task holding a PID the restore needs may be
// for the check to call it transient: a command that will likely be gone
// in a moment, not a daemon.
const shortLived = time.Minute

// restorePids are the PIDs CRIU's restore of the tree (its tasks, root
// first) will ask for, every thread's, as the tree's PID namespace numbers
// them, and that namespace (SourceFacts.restore_pids, pid_ns). A tree
// whose root is the init of a PID namespace of its own needs none: the
// restore makes a new namespace.
func restorePids(tree []int) ([]int32, string) {
	if len(tree) == 0 {
		return nil, ""
	}
	ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", tree[0]))
	if isPidnsInit(tree[0]) {
		return nil, ns
	}
	var out []int32
	for _, p := range tree {
		threads, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, th := range threads {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", p, th.Name()))
			if err != nil {
				continue
			}
			st, err := proc.ParseStatus(string(data))
			if err != nil || st.NSPid == 0 {
				continue
			}
			out = append(out, int32(st.NSPid))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, ns
}

// JudgeNestedPidns is the source's part of the "pids" check: a task of
// the tree in a PID namespace below the root's (`unshare -p -f CMD`, named
// by the unshare) makes CRIU fail the dump ("Can't dump nested pid
// namespace"), after the freeze. It names the task that starts that
// namespace and its init, the PID to migrate instead.
func JudgeNestedPidns(pid int, o Options) []*pb.Verdict {
	if o.skipped("pids") {
		return nil
	}
	tree := proc.Tree(pid)
	nsOf := map[int]string{}
	for _, p := range tree {
		nsOf[p], _ = os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", p))
	}
	var items []string
	for _, p := range tree[1:] {
		st, err := proc.ReadStat(p)
		if err != nil || nsOf[p] == "" || nsOf[p] == nsOf[pid] || nsOf[st.PPid] != nsOf[pid] {
			continue
		}
		parent := "?"
		if pst, err := proc.ReadStat(st.PPid); err == nil {
			parent = pst.Comm
		}
		items = append(items, fmt.Sprintf("pid %d (%s) starts a PID namespace whose init is pid %d (%s): migrate that init instead (phaul migrate %d)", st.PPid, parent, p, st.Comm, p))
	}
	if len(items) > 0 {
		return []*pb.Verdict{fail("pids", "the tree holds a PID namespace below its root's, which CRIU cannot dump (\"Can't dump nested pid namespace\")", items...)}
	}
	return nil
}

// judgePids is the destination's part of the "pids" check: every PID the
// restore will ask for (SourceFacts.restore_pids) must be free in this
// host's PID namespace and within its pid_max. A PID held by a task that
// is exiting or only just started is a transient failure; the source tree
// itself (one kernel, one PID namespace) and anything else, permanent.
func judgePids(ctx context.Context, f *pb.SourceFacts, o Options, env *Env) *pb.Verdict {
	if len(f.RestorePids) == 0 {
		return pass("pids", "the tree is a PID namespace of its own: the restore makes a new one, where its PIDs are free")
	}
	pidMax := readInt(filepath.Join(env.Proc, "sys/kernel/pid_max"))
	myNs, _ := os.Readlink(filepath.Join(env.Proc, "self/ns/pid"))
	sameNs := f.PidNs != "" && f.PidNs == myNs && f.GetHost().GetBootId() == BootID()
	var items []string
	transient := true
	for _, p := range f.RestorePids {
		why, short := pidTaken(int(p), pidMax, sameNs, env)
		if why != "" {
			items = append(items, why)
			transient = transient && short
		}
	}
	n := len(f.RestorePids)
	switch {
	case len(items) == 0:
		return pass("pids", fmt.Sprintf("the %d PIDs the restore needs here (the tree is not a PID namespace of its own) are free", n))
	case transient:
		return failTransient("pids", fmt.Sprintf("%d of the %d PIDs the restore needs here are held by tasks that are exiting or just started: retry in a moment (--retry-transient N); to be free of this, start the workload in a PID namespace of its own (unshare -p -f setsid CMD)", len(items), n), items...)
	}
	return fail("pids", fmt.Sprintf("%d of the %d PIDs the restore needs here are taken or out of range: CRIU restores every task with its PID, and the tree is not a PID namespace of its own; start the workload in one (unshare -p -f setsid CMD), whose PIDs are its own wherever it goes", len(items), n), items...)
}

// pidTaken says why the restore cannot have pid here ("" if it can), and
// whether that may pass by itself.
func pidTaken(pid, pidMax int, sameNs bool, env *Env) (why string, short bool) {
	if pidMax > 0 && pid >= pidMax {
		return fmt.Sprintf("pid %d: this host's pid_max is %d", pid, pidMax), false
	}
	data, err := os.ReadFile(filepath.Join(env.Proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return "", false
	}
	if sameNs {
		return fmt.Sprintf("pid %d is the source tree's own: both hosts share one PID namespace, where the frozen source keeps it until the commit", pid), false
	}
	st, err := proc.ParseStat(string(data))
	if err != nil {
		return fmt.Sprintf("pid %d is taken here", pid), false
	}
	if st.State == 'Z' || st.State == 'X' {
		return fmt.Sprintf("pid %d is taken here by %s, which has exited and waits for its parent to reap it", pid, st.Comm), true
	}
	up := uptime(env)
	if up < 0 {
		return fmt.Sprintf("pid %d is taken here by %s", pid, st.Comm), false
	}
	age := up - time.Duration(st.StartTime)*time.Second/clockTicks
	if age < shortLived {
		return fmt.Sprintf("pid %d is taken here by %s, started %v ago", pid, st.Comm, age.Round(time.Second)), true
	}
	return fmt.Sprintf("pid %d is taken here by %s (running for %v)", pid, st.Comm, age.Round(time.Second)), false
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture phaul runs on.
const clockTicks = 100

// uptime is how long this host has been up (/proc/uptime), or -1.
func uptime(env *Env) time.Duration {
	data, err := os.ReadFile(filepath.Join(env.Proc, "uptime"))
	if err != nil {
		return -1
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return -1
	}
	s, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return time.Duration(s * float64(time.Second))
}

// readInt reads a number from a file such as /proc/sys/kernel/pid_max; 0
// if it cannot.
func readInt(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return n
}

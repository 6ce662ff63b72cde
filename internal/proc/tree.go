package proc

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Children returns the PIDs of the children of every thread of pid.
func Children(pid int) ([]int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// Tree returns pid and all its descendants, parents before children.
func Tree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		kids, _ := Children(out[i])
		out = append(out, kids...)
	}
	return out
}

// SignalTree sends sig to pid and all its descendants.
func SignalTree(pid int, sig unix.Signal) error {
	var first error
	for _, p := range Tree(pid) {
		if p <= 1 {
			continue
		}
		if err := unix.Kill(p, sig); err != nil && err != unix.ESRCH && first == nil {
			first = fmt.Errorf("signal %d: %w", p, err)
		}
	}
	return first
}

// RSS returns the resident memory of pid and its descendants, in bytes.
func RSS(pid int) uint64 {
	var total uint64
	for _, p := range Tree(pid) {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += kb * 1024
			}
		}
		f.Close()
	}
	return total
}

// ShellJobReason says why the tree rooted at pid must be checkpointed as a
// shell job (CRIU's --shell-job), or "" if it need not: the root does not
// lead its own session, or a task of the tree is in a session or process
// group whose leader lives outside the tree, as for a command started from
// an interactive shell (the shell leads the session) or a pipeline member.
// A leader that has exited, its session or group living on in tasks of the
// tree, is no reason: CRIU recreates it on restore (a helper task).
func ShellJobReason(pid int) string {
	tree := Tree(pid)
	in := make(map[int]bool, len(tree))
	for _, p := range tree {
		in[p] = true
	}
	for _, p := range tree {
		st, err := ReadStat(p)
		if err != nil {
			continue // gone: the checks say so if it matters
		}
		status, _ := ReadStatus(p)
		if why := outsideLeader(st, status, p == pid, in); why != "" {
			return why
		}
	}
	return ""
}

// outsideLeader says why task st (its status, root: the tree's root) ties
// the tree to a leader outside it, or "".
func outsideLeader(st Stat, status Status, root bool, in map[int]bool) string {
	switch {
	case !in[st.Session] && (root || !leaderGone(st.Session, status.NSSid)):
		// The root must lead its session: CRIU recreates an exited
		// leader only below the root.
		return fmt.Sprintf("pid %d (%s) is in session %d, whose leader is not in the tree (started from a shell)", st.Pid, st.Comm, st.Session)
	case !in[st.PGrp] && !leaderGone(st.PGrp, status.NSPgid):
		return fmt.Sprintf("pid %d (%s) is in process group %d, whose leader is not in the tree", st.Pid, st.Comm, st.PGrp)
	}
	return ""
}

// leaderGone says whether the leader of a session or process group (id, as
// seen here; nsID, as seen in the task's own PID namespace) has exited:
// no task has that PID any more (the kernel keeps the number while the
// session or group lives, so no other task can have it), and the leader
// was inside the task's PID namespace (nsID is 0 for one outside it,
// which CRIU cannot recreate).
func leaderGone(id, nsID int) bool {
	if id <= 0 || nsID == 0 {
		return false
	}
	_, err := os.Stat(fmt.Sprintf("/proc/%d", id))
	return errors.Is(err, os.ErrNotExist)
}

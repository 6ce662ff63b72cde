package migrate

import (
	"fmt"
	"path/filepath"
	"slices"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/criuimg"
	"github.com/phaul/phaul/internal/proc"
)

// The destination restores the tree stopped (CRIU's leave_stopped: it
// sends every task SIGSTOP) and resumes it at the commit. A task that was
// stopped already when the source froze it (a job suspended with ^Z, a
// task held by its parent) must stay stopped: it is not sent SIGCONT.

// taskStopped is CRIU's task_state of a stopped task (TASK_STOPPED,
// compel's COMPEL_TASK_STOPPED).
const taskStopped = 3

// stoppedTasks lists the tasks of the images in dir that were stopped when
// dumped, by their PIDs as CRIU saw them (in the tree's PID namespace).
func stoppedTasks(dir string) ([]int, error) {
	img, err := criuimg.Read(filepath.Join(dir, "pstree.img"), "PSTREE", &pstree.PstreeEntry{})
	if err != nil {
		return nil, fmt.Errorf("which tasks were stopped: %w", err)
	}
	var out []int
	for _, e := range img.Entries {
		pid := int(e.Message.(*pstree.PstreeEntry).GetPid())
		core, err := criuimg.Read(filepath.Join(dir, fmt.Sprintf("core-%d.img", pid)), "CORE", &criucore.CoreEntry{})
		if err != nil {
			return nil, fmt.Errorf("which tasks were stopped: %w", err)
		}
		if len(core.Entries) != 1 {
			return nil, fmt.Errorf("which tasks were stopped: core-%d.img has %d entries", pid, len(core.Entries))
		}
		if core.Entries[0].Message.(*criucore.CoreEntry).GetTc().GetTaskState() == taskStopped {
			out = append(out, pid)
		}
	}
	return out, nil
}

// resumeTree resumes the restored tree rooted at root: SIGCONT to every
// task but those that were stopped at the dump (stopped, by their PIDs in
// the tree's PID namespace).
func resumeTree(root int, stopped []int) error {
	var first error
	for _, p := range proc.Tree(root) {
		if p <= 1 {
			continue
		}
		if len(stopped) > 0 {
			// A task whose PID cannot be read is left alone: better
			// a task left stopped than a stopped one run.
			st, err := proc.ReadStatus(p)
			if err != nil || slices.Contains(stopped, st.NSPid) {
				continue
			}
		}
		if err := unix.Kill(p, unix.SIGCONT); err != nil && err != unix.ESRCH && first == nil {
			first = fmt.Errorf("resume %d: %w", p, err)
		}
	}
	return first
}

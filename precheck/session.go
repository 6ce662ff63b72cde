package precheck

import (
	"fmt"
	"os"
	"strings"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

// JudgeSession is the "session" check, judged on the source from the live
// tree: whether CRIU can dump its session and process groups, and how
// (shell-job mode, o.ShellJob, when a leader is outside the tree). It
// returns nothing when the check is skipped.
func JudgeSession(pid int, o Options) []*pb.Verdict {
	if o.skipped("session") {
		return nil
	}
	why := proc.ShellJobReason(pid)
	switch {
	case why == "":
		return []*pb.Verdict{pass("session", "the tree leads its own session")}
	case isPidnsInit(pid):
		return []*pb.Verdict{fail("session", "the tree is a PID namespace whose session leader is outside it: CRIU cannot checkpoint that, even as a shell job; start its root with setsid (for example unshare -p -f setsid CMD)", why)}
	case !o.ShellJob:
		return []*pb.Verdict{fail("session", "a session or process group leader is outside the tree: it needs CRIU's shell-job mode (--shell-job)", why)}
	}
	return []*pb.Verdict{pass("session", "dumped as a shell job: "+why)}
}

// isPidnsInit reports whether pid is PID 1 of a PID namespace below ours.
func isPidnsInit(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(strings.TrimPrefix(line, "NSpid:")); strings.HasPrefix(line, "NSpid:") {
			return len(f) > 1 && f[len(f)-1] == "1"
		}
	}
	return false
}

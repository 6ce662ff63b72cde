package precheck

import (
	"fmt"
	"path"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

// JudgeProcfs is the "procfs" check, judged on the source from the live
// tree: whether CRIU can get a /proc of the tree's PID namespace. When the
// tree's /proc is not one, CRIU's parasite, running as the tree's root,
// creates proc.crtools in the root's working directory and mounts one
// there: that needs CAP_SYS_ADMIN, a directory it may write in, and no
// proc.crtools already there. It returns nothing when the check is
// skipped.
func JudgeProcfs(pid int, o Options) []*pb.Verdict {
	if o.skipped("procfs") {
		return nil
	}
	p, err := proc.ReadParasiteProc(pid)
	if err != nil {
		return []*pb.Verdict{fail("procfs", "cannot tell whether CRIU can get a /proc of the tree's PID namespace", err.Error())}
	}
	if !p.Mounts {
		return []*pb.Verdict{judgeParasiteProc(p, proc.Status{}, false)}
	}
	s, err := proc.ReadStatus(pid)
	if err != nil {
		return []*pb.Verdict{fail("procfs", "cannot read the credentials of the tree's root", err.Error())}
	}
	return []*pb.Verdict{judgeParasiteProc(p, s, criu.DumpDirBusy(p))}
}

// judgeParasiteProc judges the facts of JudgeProcfs: p of the root's
// working directory, s the root's credentials, busy whether another dump
// through phaul holds that directory now.
func judgeParasiteProc(p proc.ParasiteProc, s proc.Status, busy bool) *pb.Verdict {
	if !p.Mounts {
		return pass("procfs", "CRIU uses the /proc the tree sees")
	}
	const remedy = "give the tree a /proc of its own (unshare -p -f --mount-proc CMD)"
	dir := p.Cwd
	where := fmt.Sprintf("the tree's /proc is not of its PID namespace, so CRIU mounts one at %s in its root's working directory", path.Join(dir, proc.ParasiteProcDir))
	if ok, why := s.MayCreateIn(p); !ok {
		return fail("procfs", where+", but "+why+": "+remedy+" or run it from a directory it may write in", dir)
	}
	if p.ReadOnly {
		return fail("procfs", where+", but that directory is on a read-only mount: "+remedy+" or run it from a writable directory", dir)
	}
	if busy {
		return pass("procfs", where+"; another dump there runs now, and this one waits for it before freezing anything")
	}
	if p.Leftover {
		// No dump through phaul holds the directory: a CRIU run by
		// hand is at it, or an interrupted one left it.
		return failTransient("procfs", where+", but "+proc.ParasiteProcDir+" is already there: another CRIU dumping a tree with that working directory (wait and retry), or one interrupted; if no CRIU runs, remove it (rmdir "+path.Join(dir, proc.ParasiteProcDir)+")", dir)
	}
	return pass("procfs", where+" (dumps of trees sharing it take turns)")
}

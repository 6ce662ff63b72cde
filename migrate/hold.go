package migrate

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/cgroup"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/cgroups"
	"github.com/phaul/phaul/internal/criuimg"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

// The destination holds the restored tree until the commit, in one of two
// ways:
//
//   - frozen (holdFrozen): the images put the whole tree in a cgroup v1
//     freezer cgroup of its own, recorded FROZEN. CRIU writes that state
//     just before it lets the tasks go (restore_freezer_state), and they
//     stop in the freezer before running an instruction of their own; the
//     commit thaws them. The tree sees nothing of it: no signal, no
//     SIGCHLD, no waitpid event.
//   - stopped (holdStopped): CRIU's leave_stopped sends every task
//     SIGSTOP, and the commit sends SIGCONT to every task but those that
//     were stopped at the dump. A parent sees its children stop and
//     continue (SIGCHLD pending, waitpid WUNTRACED and WCONTINUED events).
//     It is what is left where the freezer cannot hold the tree: no v1
//     freezer hierarchy (CRIU restores no cgroup v2 freeze), cgroups
//     ignored or not made by CRIU, or a freezer cgroup that exists already
//     (other tasks may be in it).
const (
	holdFrozen  = "frozen"
	holdStopped = "stopped"
)

// errNoFreezerHold says the images do not let the tree be held frozen.
var errNoFreezerHold = errors.New("cannot hold the tree in a freezer cgroup")

// holdName is the freezer cgroup the edited images name; the freezer's
// --cgroup-root renames it to the hold's path.
const holdName = "phaul-hold"

// freezerHold says whether the restored tree can be held frozen in the
// freezer cgroup root (the tree's cgroup root on this host): its
// directory, or why not.
func freezerHold(l *cgroups.Layout, mode rpc.CriuCgMode, root string) (dir, whyNot string) {
	switch mode {
	case rpc.CriuCgMode_IGNORE, rpc.CriuCgMode_CG_NONE:
		return "", fmt.Sprintf("CRIU's cgroup mode %s restores no freezer state", strings.ToLower(mode.String()))
	}
	mnt := l.V1["freezer"]
	if mnt == "" {
		return "", "this host has no cgroup v1 freezer hierarchy"
	}
	dir = filepath.Join(mnt, root)
	if _, err := os.Stat(dir); err == nil {
		return "", fmt.Sprintf("freezer cgroup %s exists already (other tasks may be in it)", root)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err.Error()
	}
	return dir, ""
}

// withFreezerRoot adds the freezer hold at rel to the cgroup roots.
func withFreezerRoot(roots []*pb.CgroupRoot, rel string) []*pb.CgroupRoot {
	out := slices.DeleteFunc(slices.Clone(roots), func(r *pb.CgroupRoot) bool { return r.Controllers == "freezer" })
	return append(out, &pb.CgroupRoot{Controllers: "freezer", Path: rel})
}

// freezeInImages edits the images in dir so that CRIU restores the tree
// frozen in one freezer cgroup, the one its freezer root names: the tree's
// own freezer cgroup if the source recorded one, or else holdName, which
// every task joins.
func freezeInImages(dir string) error {
	cgPath := filepath.Join(dir, "cgroup.img")
	cg := &crit.CriuImage{Magic: "CGROUP"}
	if _, err := os.Stat(cgPath); err == nil {
		if cg, err = criuimg.Read(cgPath, "CGROUP", &cgroup.CgroupEntry{}); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(cg.Entries) > 1 {
		return fmt.Errorf("%w: cgroup.img has %d entries, want one", errNoFreezerHold, len(cg.Entries))
	}
	invPath := filepath.Join(dir, "inventory.img")
	inv, err := criuimg.Read(invPath, "INVENTORY", &inventory.InventoryEntry{})
	if err != nil {
		return err
	}
	if len(inv.Entries) != 1 || inv.Entries[0].Message.(*inventory.InventoryEntry).RootCgSet == nil {
		return fmt.Errorf("%w: inventory.img names no cgroup set of CRIU's own", errNoFreezerHold)
	}
	ie := inv.Entries[0].Message.(*inventory.InventoryEntry)
	e := &cgroup.CgroupEntry{}
	if len(cg.Entries) == 1 {
		e = cg.Entries[0].Message.(*cgroup.CgroupEntry)
	} else {
		// The tree was in CRIU's own cgroups: CRIU recorded none, and
		// every task names CRIU's set.
		e.Sets = []*cgroup.CgSetEntry{{Id: proto.Uint32(ie.GetRootCgSet())}}
	}
	if err := freezeEntry(e); err != nil {
		return err
	}
	// CRIU moves no task whose set is the one it had itself at the dump
	// (root_cg_set): name one no set has, so that the root moves too.
	unused := uint32(1)
	for _, s := range e.Sets {
		unused = max(unused, s.GetId()+1)
	}
	ie.RootCgSet = proto.Uint32(unused)
	cg.Entries = []*crit.CriuEntry{{Message: e}}
	if err := criuimg.Write(cgPath, cg); err != nil {
		return fmt.Errorf("write %s: %w", cgPath, err)
	}
	if err := criuimg.Write(invPath, inv); err != nil {
		return fmt.Errorf("write %s: %w", invPath, err)
	}
	return nil
}

// freezeEntry makes e restore the tree in one freezer cgroup, FROZEN.
func freezeEntry(e *cgroup.CgroupEntry) error {
	frozen := &cgroup.CgroupPropEntry{Name: proto.String("freezer.state"), Value: proto.String("FROZEN"),
		Perms: &cgroup.CgroupPerms{Mode: proto.Uint32(0o100644), Uid: proto.Uint32(0), Gid: proto.Uint32(0)}}
	for _, c := range e.Controllers {
		if !slices.Contains(c.Cnames, "freezer") {
			continue
		}
		if len(c.Dirs) != 1 {
			return fmt.Errorf("%w: the tree was in %d freezer cgroups side by side", errNoFreezerHold, len(c.Dirs))
		}
		head := c.Dirs[0]
		dropFreezerState(head.Children)
		head.Properties = slices.DeleteFunc(head.Properties, isFreezerState)
		head.Properties = append(head.Properties, frozen)
		return nil
	}
	for _, s := range e.Sets {
		s.Ctls = slices.DeleteFunc(s.Ctls, func(m *cgroup.CgMemberEntry) bool { return m.GetName() == "freezer" })
		s.Ctls = append(s.Ctls, &cgroup.CgMemberEntry{Name: proto.String("freezer"), Path: proto.String("/" + holdName)})
	}
	e.Controllers = append(e.Controllers, &cgroup.CgControllerEntry{Cnames: []string{"freezer"}, Dirs: []*cgroup.CgroupDirEntry{{
		DirName:    proto.String(holdName),
		DirPerms:   &cgroup.CgroupPerms{Mode: proto.Uint32(0o40755), Uid: proto.Uint32(0), Gid: proto.Uint32(0)},
		Properties: []*cgroup.CgroupPropEntry{frozen},
	}}})
	return nil
}

func isFreezerState(p *cgroup.CgroupPropEntry) bool { return p.GetName() == "freezer.state" }

// dropFreezerState removes freezer.state below the head: CRIU restores
// one (their common prefix), which must be the head's.
func dropFreezerState(dirs []*cgroup.CgroupDirEntry) {
	for _, d := range dirs {
		d.Properties = slices.DeleteFunc(d.Properties, isFreezerState)
		dropFreezerState(d.Children)
	}
}

// checkFrozen confirms that the restored tree rooted at pid is held in
// the freezer cgroup dir (rel in its hierarchy): every task in it or
// below, and the cgroup FROZEN. CRIU only logs a freezer state it could
// not write, and a task CRIU left elsewhere would be running.
func checkFrozen(pid int, dir, rel string) error {
	for _, p := range proc.Tree(pid) {
		if st, err := proc.ReadStat(p); err != nil || st.State == 'Z' {
			continue // gone, or a zombie (it runs nothing; v1 lists it in no cgroup)
		}
		sets, err := cgroups.ProcessSets(p)
		if err != nil {
			continue // gone
		}
		for _, s := range sets {
			if s.Controllers == "freezer" && s.Path != rel && !strings.HasPrefix(s.Path, rel+"/") {
				return fmt.Errorf("task %d of the restored tree is in freezer cgroup %s, not in the hold %s", p, s.Path, rel)
			}
		}
	}
	return waitFreezer(dir, "FROZEN", 5*time.Second)
}

// waitFreezer waits until the freezer cgroup dir is in state (a cgroup
// being frozen is FREEZING until its last task is).
func waitFreezer(dir, state string, within time.Duration) error {
	file := filepath.Join(dir, "freezer.state")
	deadline := time.Now().Add(within)
	for ; ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("freezer cgroup: %w", err)
		}
		got := strings.TrimSpace(string(b))
		switch {
		case got == state:
			return nil
		case state == "FROZEN" && got == "THAWED":
			return fmt.Errorf("freezer cgroup %s is THAWED: CRIU did not freeze it", dir)
		case time.Now().After(deadline):
			return fmt.Errorf("freezer cgroup %s is %s, not %s, after %s", dir, got, state, within)
		}
	}
}

// thaw thaws the freezer cgroup dir and waits until it is.
func thaw(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0o644); err != nil {
		return fmt.Errorf("thaw: %w", err)
	}
	return waitFreezer(dir, "THAWED", 5*time.Second)
}

// releaseTree lets the held tree rooted at root run: it thaws the freezer
// cgroup it is held in, or, held stopped, sends SIGCONT to every task but
// those stopped at the dump. A task that does not stop again after the
// thaw is logged: the tree runs, and the commit stands.
func releaseTree(log *slog.Logger, root int, freezer string, stopped []int) error {
	if freezer == "" {
		return resumeTree(root, stopped)
	}
	if err := thaw(freezer); err != nil {
		return err
	}
	if err := waitStopped(root, stopped, 5*time.Second); err != nil {
		log.Warn("a task stopped on the source runs here", "err", err)
	}
	return nil
}

// waitStopped waits until the tasks of the tree rooted at root that were
// stopped at the dump (by their PIDs in the tree's namespace) are stopped
// again: CRIU queued their stop signal, which they take once thawed.
func waitStopped(root int, stopped []int, within time.Duration) error {
	if len(stopped) == 0 {
		return nil
	}
	deadline := time.Now().Add(within)
	for _, p := range proc.Tree(root) {
		st, err := proc.ReadStatus(p)
		if err != nil || !slices.Contains(stopped, st.NSPid) {
			continue
		}
		for {
			s, err := proc.ReadStat(p)
			if err != nil || s.State == 'T' || s.State == 't' {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("task %d, stopped at the dump, is %c after the thaw, not stopped", p, s.State)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

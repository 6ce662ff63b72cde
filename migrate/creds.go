package migrate

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"

	"github.com/phaul/phaul/internal/criuimg"
	"github.com/phaul/phaul/internal/pb"
)

// ErrPrivilege: the images would give the restored tree privileges the
// source tree did not have.
var ErrPrivilege = errors.New("the images ask for more privilege than the source tree had")

// checkCreds compares the credentials in the images (each task's core
// image) with those the source announced in the checks: no capability in
// any set that no source task had in that set, no uid or gid no source
// task had, no user namespace where the source tree had none. Without
// facts (a source that skipped the checks) the tree may have nothing: the
// comparison fails closed.
func checkCreds(imgs string, facts *pb.SourceFacts) error {
	var inh, prm, eff, bnd uint64
	uids, gids := map[uint32]bool{}, map[uint32]bool{}
	ownUserNS := false
	for _, t := range facts.GetTasks() {
		inh, prm, eff, bnd = inh|t.CapInh, prm|t.CapPrm, eff|t.CapEff, bnd|t.CapBnd
		for _, u := range t.Uids {
			uids[u] = true
		}
		for _, g := range append(t.Gids, t.Groups...) {
			gids[g] = true
		}
		ownUserNS = ownUserNS || t.OwnUserNs
	}
	if userns, _ := filepath.Glob(filepath.Join(imgs, "userns*.img")); len(userns) > 0 && !ownUserNS {
		return fmt.Errorf("%w: a user namespace (%s), the source tree had none", ErrPrivilege, filepath.Base(userns[0]))
	}
	cores, _ := filepath.Glob(filepath.Join(imgs, "core-*.img"))
	if len(cores) == 0 {
		return fmt.Errorf("%w: no core image to compare", ErrPrivilege)
	}
	for _, path := range cores {
		img, err := criuimg.Read(path, "CORE", &criucore.CoreEntry{})
		if err != nil {
			return fmt.Errorf("%w: %v", ErrPrivilege, err)
		}
		name := filepath.Base(path)
		if len(img.Entries) != 1 {
			return fmt.Errorf("%w: %s has %d entries", ErrPrivilege, name, len(img.Entries))
		}
		core := img.Entries[0].Message.(*criucore.CoreEntry)
		if isZombie(core) {
			continue // CRIU recreates it as a task that exits at once
		}
		c := core.GetThreadCore().GetCreds()
		if c == nil {
			return fmt.Errorf("%w: %s has no credentials", ErrPrivilege, name)
		}
		for _, set := range []struct {
			name    string
			got     []uint32
			allowed uint64
		}{{"inheritable", c.CapInh, inh}, {"permitted", c.CapPrm, prm}, {"effective", c.CapEff, eff}, {"bounding", c.CapBnd, bnd}} {
			if extra := capMask(set.got) &^ set.allowed; extra != 0 {
				return fmt.Errorf("%w: %s: %s capabilities %#x", ErrPrivilege, name, set.name, extra)
			}
		}
		var bad []string
		for _, u := range []uint32{c.GetUid(), c.GetEuid(), c.GetSuid(), c.GetFsuid()} {
			if !uids[u] {
				bad = append(bad, fmt.Sprintf("uid %d", u))
			}
		}
		for _, g := range append([]uint32{c.GetGid(), c.GetEgid(), c.GetSgid(), c.GetFsgid()}, c.Groups...) {
			if !gids[g] {
				bad = append(bad, fmt.Sprintf("gid %d", g))
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("%w: %s: %s", ErrPrivilege, name, strings.Join(bad, ", "))
		}
	}
	return nil
}

// taskDead is CRIU's task_state of a zombie (TASK_DEAD, compel's
// COMPEL_TASK_DEAD).
const taskDead = 2

// isZombie says whether core is CRIU's image of a zombie: task state dead,
// and nothing else of a task (no thread core, so no credentials: CRIU's
// dump_one_zombie writes only the name and the exit code). A zombie runs
// no code after the restore, so it has no privilege to compare; an image
// claiming to be a zombie that carries more than that is compared as any
// other (and fails closed without credentials).
func isZombie(core *criucore.CoreEntry) bool {
	return core.GetTc().GetTaskState() == taskDead && core.ThreadCore == nil && core.ThreadInfo == nil
}

// capMask joins CRIU's 32-bit capability words into one mask.
func capMask(words []uint32) uint64 {
	var m uint64
	for i, w := range words {
		if i < 2 {
			m |= uint64(w) << (32 * i)
		}
	}
	return m
}

package precheck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

// HeldBy lists what the tree holds (fds, as TreeFds read them) that it
// keeps while frozen until the commit and that CRIU's restore on the
// destination needs for itself; the destination judges each (judgeHeld):
//
//   - a lock on a file (not a deleted one: CRIU restores that as a ghost
//     file of its own, whose locks collide with nothing);
//   - a FIFO, with the bytes queued in it;
//   - a pty master, with its index.
func HeldBy(fds []TreeFd) []*pb.Held {
	var out []*pb.Held
	for _, f := range fds {
		if h := heldBy(f); h != nil {
			out = append(out, h)
		}
	}
	return out
}

func heldBy(f TreeFd) *pb.Held {
	var fd int
	fmt.Sscan(f.Fd, &fd)
	h := &pb.Held{Pid: int32(f.Pid), Fd: int32(fd), Path: f.Link}
	if idx := fdinfoField(f.Info, "tty-index"); idx != "" && (f.Link == "/dev/ptmx" || strings.HasSuffix(f.Link, "/ptmx")) {
		n, err := strconv.ParseUint(idx, 10, 32)
		if err != nil {
			return nil
		}
		h.Kind, h.Index, h.Path = "pty", uint32(n), fmt.Sprintf("/dev/pts/%d", n)
		return h
	}
	if !strings.HasPrefix(f.Link, "/") || strings.HasSuffix(f.Link, " (deleted)") {
		return nil
	}
	fdPath := fmt.Sprintf("/proc/%d/fd/%s", f.Pid, f.Fd)
	st, err := os.Stat(fdPath)
	if err != nil {
		return nil
	}
	h.Dev, h.Inode = devInode(st)
	h.FsType = fsMagic(fdPath)
	switch {
	case fdinfoField(f.Info, "lock") != "":
		h.Kind = "lock"
	case st.Mode()&os.ModeNamedPipe != 0:
		h.Kind, h.Queued = "fifo", uint64(queued(f.Pid, f.Fd))
	default:
		return nil
	}
	return h
}

// judgeHeld is the destination's part of the "files" check for what the
// frozen source keeps until the commit (SourceFacts.held): a file locked,
// or a FIFO with data queued, that this host sees as the very same file;
// a FIFO missing here; a pty index taken here. nil when the tree holds
// none of these.
func judgeHeld(ctx context.Context, f *pb.SourceFacts, o Options, env *Env) *pb.Verdict {
	if len(f.Held) == 0 {
		return nil
	}
	var items []string
	for _, h := range f.Held {
		if why := heldItem(h, f.GetHost().GetBootId(), f.Tasks, env); why != "" {
			items = append(items, why)
		}
	}
	if len(items) > 0 {
		return fail("files", "the restore needs for itself what this host already has taken or shares with the frozen source tree", items...)
	}
	return pass("files", fmt.Sprintf("the %d locks, FIFOs and pty masters the tree holds are its own here", len(f.Held)))
}

// heldItem says why the restore here would collide with h, or "".
func heldItem(h *pb.Held, sourceBoot string, tasks []*pb.TaskFact, env *Env) string {
	who := fmt.Sprintf("pid %d fd %d", h.Pid, h.Fd)
	if h.Kind == "pty" {
		return ptyTaken(h, who, sourceBoot, tasks, env)
	}
	st, err := os.Stat(h.Path)
	switch {
	case h.Kind == "fifo" && err != nil:
		return fmt.Sprintf("%s is the FIFO %s, missing here: CRIU reopens a FIFO at its path; create it on this host (mkfifo)", who, h.Path)
	case h.Kind == "fifo" && st.Mode()&os.ModeNamedPipe == 0:
		return fmt.Sprintf("%s is the FIFO %s, which is not a FIFO here: CRIU reopens a FIFO at its path", who, h.Path)
	case err != nil:
		return "" // a locked file missing here: the files check says so
	}
	where := sameObject(h.Dev, h.Inode, h.FsType, st, h.Path, sourceBoot)
	switch {
	case where == "":
		return ""
	case h.Kind == "lock":
		return fmt.Sprintf("%s holds a lock on %s, and this host sees the same file (%s): the restore would wait for ever for the lock the frozen source keeps until the commit; release it before migrating, or migrate to a host that does not share the file", who, h.Path, where)
	case h.Queued > 0:
		return fmt.Sprintf("%s is the FIFO %s with %d bytes queued, and this host sees the same FIFO (%s): the restore would queue them again, and the tree would read them twice; let the tree drain it first, or migrate to a host that does not share it", who, h.Path, h.Queued, where)
	}
	return ""
}

// ptyTaken says why pty h's index is not free here, or "".
func ptyTaken(h *pb.Held, who, sourceBoot string, tasks []*pb.TaskFact, env *Env) string {
	slave := filepath.Join(env.devPts(), strconv.Itoa(int(h.Index)))
	if _, err := os.Lstat(slave); err != nil {
		return ""
	}
	holder := ptyHolder(env, slave, h.Index)
	if holder > 0 && sourceBoot == BootID() {
		for _, t := range tasks {
			if int(t.Pid) == holder {
				holder = -holder
			}
		}
	}
	by := ""
	switch {
	case holder < 0:
		by = fmt.Sprintf(", by pid %d of the source tree itself: both hosts share one /dev/pts, and the frozen source keeps the pty until the commit", -holder)
	case holder > 0:
		comm := "?"
		if st, err := proc.ReadStat(holder); err == nil {
			comm = st.Comm
		}
		by = fmt.Sprintf(", by pid %d (%s)", holder, comm)
	}
	return fmt.Sprintf("%s is the master of pty %d, and pty %d is taken here%s: CRIU reopens a pty master with its index; free it here, or migrate to a host where it is free", who, h.Index, h.Index, by)
}

// ptyHolder finds a task of this host holding pty index: its slave (the
// same device and inode as slave) or its master (tty-index in fdinfo, in
// this mount namespace); 0 if none is seen.
func ptyHolder(env *Env, slave string, index uint32) int {
	st, err := os.Stat(slave)
	if err != nil {
		return 0
	}
	dev, ino := devInode(st)
	myMnt, _ := os.Readlink(filepath.Join(env.Proc, "self/ns/mnt"))
	ents, _ := os.ReadDir(env.Proc)
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("%s/%d/fd", env.Proc, p))
		for _, fd := range fds {
			fp := fmt.Sprintf("%s/%d/fd/%s", env.Proc, p, fd.Name())
			if fst, err := os.Stat(fp); err == nil {
				if d, i := devInode(fst); d == dev && i == ino {
					return p
				}
			}
			link, _ := os.Readlink(fp)
			if !strings.HasSuffix(link, "/ptmx") {
				continue
			}
			info, _ := os.ReadFile(fmt.Sprintf("%s/%d/fdinfo/%s", env.Proc, p, fd.Name()))
			mnt, _ := os.Readlink(fmt.Sprintf("%s/%d/ns/mnt", env.Proc, p))
			if fdinfoField(string(info), "tty-index") == strconv.Itoa(int(index)) && mnt == myMnt {
				return p
			}
		}
	}
	return 0
}

// queued is how many bytes wait in the pipe of task p's fd (FIONREAD, alias TIOCINQ, on a
// copy of the fd taken with pidfd_getfd); 0 if that cannot be told.
func queued(p int, fd string) int {
	var n int
	fmt.Sscan(fd, &n)
	pidfd, err := unix.PidfdOpen(p, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(pidfd)
	mine, err := unix.PidfdGetfd(pidfd, n, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(mine)
	q, err := unix.IoctlGetInt(mine, unix.TIOCINQ) // FIONREAD
	if err != nil {
		return 0
	}
	return q
}

// JudgeUnfaithful is the source's part of the "criu" check: state of the
// tree that CRIU 4.2 would checkpoint and restore wrongly, refused before
// anything is frozen.
//
//   - an eventfd in semaphore mode (fdinfo eventfd-semaphore: 1): CRIU
//     recreates it as a plain eventfd, which reads its whole count at once.
func JudgeUnfaithful(fds []TreeFd, o Options) []*pb.Verdict {
	if o.skipped("criu") {
		return nil
	}
	var items []string
	for _, f := range fds {
		if fdinfoField(f.Info, "eventfd-semaphore") == "1" {
			items = append(items, fmt.Sprintf("pid %d fd %s is an eventfd in semaphore mode (EFD_SEMAPHORE): CRIU restores it as a plain eventfd, whose reads take the whole count at once", f.Pid, f.Fd))
		}
	}
	if len(items) > 0 {
		return []*pb.Verdict{fail("criu", "the tree holds state CRIU cannot restore faithfully", items...)}
	}
	return nil
}

// TreeFd is a file descriptor of a task of the tree, as /proc shows it.
type TreeFd struct {
	Pid  int
	Fd   string // its number
	Link string // where /proc/PID/fd/FD leads
	Info string // /proc/PID/fdinfo/FD
}

// TreeFds reads the descriptors of every task of the tree rooted at pid,
// once for all the looks at them (FileLocks, HeldBy, JudgeUnfaithful).
func TreeFds(pid int) []TreeFd {
	var out []TreeFd
	for _, p := range proc.Tree(pid) {
		infos, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", p))
		for _, fi := range infos {
			fd := filepath.Base(fi)
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p, fd))
			info, ierr := os.ReadFile(fi)
			if err != nil || ierr != nil {
				continue // closed since
			}
			out = append(out, TreeFd{Pid: p, Fd: fd, Link: link, Info: string(info)})
		}
	}
	return out
}

// fdinfoField is the value of field name in an fdinfo file, "" if absent.
func fdinfoField(fdinfo, name string) string {
	for _, line := range strings.Split(fdinfo, "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

package precheck

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

// JudgeShared is the source's part of the "files" check: what the frozen
// source tree still holds that the destination sees too (destBoot is the
// destination's boot ID: equal to this host's when both share one kernel,
// as network namespaces or containers on one machine do), and that the
// restore would therefore find taken or doubled. The source tree keeps it
// until the commit, which comes only after the restore:
//
//   - a file lock on a file the destination shares (any file on one
//     kernel; one on a network filesystem otherwise): the restore waits for
//     the source's lock for ever;
//   - a FIFO with data queued, on one kernel (the same pipe on both sides):
//     the restore queues the data again, and the tree reads it twice;
//   - a pty master, on one kernel (one /dev/pts): CRIU restores the pty
//     with its index, which the source holds.
func JudgeShared(fds []TreeFd, destBoot string, o Options) []*pb.Verdict {
	if o.skipped("files") {
		return nil
	}
	sameKernel := destBoot != "" && destBoot == BootID()
	var items []string
	for _, f := range fds {
		if why := sharedItem(f, sameKernel); why != "" {
			items = append(items, why)
		}
	}
	if len(items) > 0 {
		return []*pb.Verdict{fail("files", "the source tree holds, until the commit, what the destination shares with it and its restore needs", items...)}
	}
	return nil
}

// sharedItem says why descriptor f would collide with the restore, or "".
func sharedItem(f TreeFd, sameKernel bool) string {
	p, fd, link := f.Pid, f.Fd, f.Link
	// A deleted file is restored as a copy of its own (a ghost file):
	// its locks collide with nothing.
	if fdinfoField(f.Info, "lock") != "" && strings.HasPrefix(link, "/") && !strings.HasSuffix(link, " (deleted)") {
		where := ""
		if sameKernel {
			where = "the destination runs on the same kernel"
		} else if fs, ok := sharedFS[fsMagic(link)]; ok {
			where = "it is on " + fs + ", shared with the destination"
		}
		if where != "" {
			return fmt.Sprintf("pid %d fd %s holds a lock on %s, and %s: the destination's restore would wait for the lock the frozen source keeps; release it before migrating, or migrate between hosts that do not share the file", p, fd, link, where)
		}
	}
	if idx := fdinfoField(f.Info, "tty-index"); sameKernel && idx != "" && (link == "/dev/ptmx" || strings.HasSuffix(link, "/ptmx")) {
		return fmt.Sprintf("pid %d fd %s is the master of pty %s, and the destination runs on the same kernel (one /dev/pts): CRIU restores a pty with its index, which the frozen source holds until the commit", p, fd, idx)
	}
	st, err := os.Stat(fmt.Sprintf("/proc/%d/fd/%s", p, fd))
	if !sameKernel || err != nil || st.Mode()&os.ModeNamedPipe == 0 || !strings.HasPrefix(link, "/") {
		return ""
	}
	if n := queued(p, fd); n > 0 {
		return fmt.Sprintf("pid %d fd %s is the FIFO %s with %d bytes queued, and the destination runs on the same kernel: the restore would queue them again in the same FIFO, and the tree would read them twice; let the tree drain it first", p, fd, link, n)
	}
	return ""
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
// once for all the looks at them (FileLocks, JudgeShared, JudgeUnfaithful).
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

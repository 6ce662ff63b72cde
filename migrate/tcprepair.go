package migrate

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/netmove"
)

// A CRIU dump with tcp_established puts the tree's connections in TCP
// repair mode and locks them (an nftables table "CRIU-<run id>"); when the
// dump fails, CRIU undoes both before the tree resumes. A CRIU that dies
// (killed) undoes neither: the tree runs on with connections that neither
// send nor receive. releaseConnections does it for CRIU.

// criuTables lists this host's CRIU lock tables (nil if they cannot be
// listed).
func criuTables() []string {
	ts, _ := netmove.Tables()
	return slices.DeleteFunc(ts, func(s string) bool { return !strings.HasPrefix(s, "CRIU-") })
}

// releaseConnections removes the CRIU lock tables that appeared since
// before, and turns repair mode off on every TCP socket of the tree
// rooted at root that is still in it.
func (m *source) releaseConnections(root int, before []string) {
	for _, t := range criuTables() {
		if slices.Contains(before, t) {
			continue
		}
		if err := netmove.DropTable(t); err != nil {
			m.log.Error("CRIU's lock of the tree's connections stays", "table", t, "err", err)
		} else {
			m.log.Warn("removed the lock CRIU left on the tree's connections", "table", t)
		}
	}
	forEachSocket(root, func(pid, fd int) {
		if done, err := repairOff(pid, fd); err != nil {
			m.log.Error("a connection of the tree stays in repair mode", "pid", pid, "fd", fd, "err", err)
		} else if done {
			m.log.Warn("turned repair mode off on a connection CRIU left in it", "pid", pid, "fd", fd)
		}
	})
}

// silenceConnections puts every TCP socket of the tree rooted at root
// in repair mode, so that killing the tree sends nothing for them (the
// kernel closes a socket in repair mode without a FIN or a reset, as CRIU
// kills a dumped tree): the destination's copy of a connection must never
// end the connection the source's copy still holds. Listeners cannot be
// put in repair mode; they have no peer to tell.
func silenceConnections(root int, log *slog.Logger) {
	forEachSocket(root, func(pid, fd int) {
		if err := repairOn(pid, fd); err != nil {
			log.Warn("a connection of the copy may say goodbye when it is killed", "pid", pid, "fd", fd, "err", err)
		}
	})
}

// forEachSocket calls f for every socket descriptor of the tree.
func forEachSocket(root int, f func(pid, fd int)) {
	for _, pid := range proc.Tree(root) {
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
		for _, p := range fds {
			if link, err := os.Readlink(p); err == nil && strings.HasPrefix(link, "socket:") {
				fd, _ := strconv.Atoi(filepath.Base(p))
				f(pid, fd)
			}
		}
	}
}

// tcpSocket gets a copy of fd of pid if it is a TCP socket (-1 if not,
// or gone).
func tcpSocket(pid, fd int) int {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1
	}
	defer unix.Close(pidfd)
	s, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return -1
	}
	if p, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || p != unix.IPPROTO_TCP {
		unix.Close(s)
		return -1
	}
	return s
}

// repairOn puts fd of pid in repair mode if it is a TCP socket (not a
// listener: the kernel refuses one with EPERM, and it has no peer).
func repairOn(pid, fd int) error {
	s := tcpSocket(pid, fd)
	if s < 0 {
		return nil
	}
	defer unix.Close(s)
	if err := unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR, 1); err != nil && !errors.Is(err, unix.EPERM) {
		return err
	}
	return nil
}

// repairOff turns TCP repair mode off on fd of pid if it is a TCP socket
// in that mode (only there: turning it off also clears SO_REUSEADDR, as
// CRIU's own unlock does).
func repairOff(pid, fd int) (bool, error) {
	s := tcpSocket(pid, fd)
	if s < 0 {
		return false, nil
	}
	defer unix.Close(s)
	// TCP_REPAIR_WINDOW can be read only in repair mode.
	var win [20]byte
	n := uint32(len(win))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s), unix.SOL_TCP, unix.TCP_REPAIR_WINDOW,
		uintptr(unsafe.Pointer(&win[0])), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		return false, nil
	}
	if err := unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF); err != nil {
		return false, err
	}
	return true, nil
}

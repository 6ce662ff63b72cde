package precheck

import (
	"fmt"
	"strings"

	"github.com/phaul/phaul/internal/pb"
)

// Some state needs a CRIU option to be checkpointed at all; phaul chooses
// it itself when the tree holds that state and the option can only help,
// as it does for shell jobs, and says why in the report.

// InTreeConnections says whether the tree has established TCP connections
// and every one of them has its other end in the tree too: then both ends
// move together, and CRIU's tcp_established carries them. n is how many
// such sockets there are.
func InTreeConnections(socks []*pb.SocketFact) (n int, all bool) {
	all = true
	for _, s := range socks {
		if s.Proto == "tcp" && s.State == "ESTABLISHED" {
			n++
			all = all && peerInTree(socks, s)
		}
	}
	return n, n > 0 && all
}

// peerInTree says whether the other end of connection s is a socket of
// the tree too (socks).
func peerInTree(socks []*pb.SocketFact, s *pb.SocketFact) bool {
	for _, p := range socks {
		if p.Proto == s.Proto && p.State == "ESTABLISHED" && p.LocalAddr == s.RemoteAddr && p.LocalPort == s.RemotePort &&
			p.RemoteAddr == s.LocalAddr && p.RemotePort == s.LocalPort {
			return true
		}
	}
	return false
}

// FileLocks says which file descriptor of the tree (fds) holds a file
// lock (flock, POSIX or OFD: a "lock:" line in its fdinfo), or "" if none
// does. CRIU dumps a tree with locks only with file_locks.
func FileLocks(fds []TreeFd) string {
	for _, f := range fds {
		if lock := fdinfoField(f.Info, "lock"); lock != "" {
			return fmt.Sprintf("pid %d fd %s (%s) holds a lock: %s", f.Pid, f.Fd, f.Link, strings.Join(strings.Fields(lock), " "))
		}
	}
	return ""
}

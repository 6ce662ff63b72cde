package criu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/phaul/phaul/internal/proc"
	"golang.org/x/sys/unix"
)

// LockDir is where dumps take their locks (see Client.Dump): one file per
// working directory in which CRIU's parasite mounts a /proc.
const LockDir = "/run/phaul/locks"

// lockPoll is how often a dump waiting for its lock tries again.
const lockPoll = 50 * time.Millisecond

// DumpLockPath is the lock file of the working directory p names.
func DumpLockPath(p proc.ParasiteProc) string {
	return filepath.Join(LockDir, fmt.Sprintf("dump-cwd-%d-%d.lock", p.Dev, p.Ino))
}

// DumpDirBusy reports whether a dump through this package holds the lock
// of p's working directory now (so a proc.crtools there is its own, and a
// new dump would wait for it).
func DumpDirBusy(p proc.ParasiteProc) bool {
	if !p.Mounts {
		return false
	}
	f, err := os.Open(DumpLockPath(p))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// lockDump takes the lock of the working directory of pid's root where
// CRIU's parasite will mount a /proc, waiting for another dump that holds
// it, until ctx ends. CRIU's parasite creates proc.crtools there (see
// proc.ParasiteProcDir), so two such dumps at once of trees sharing the
// directory fail one of them. Nothing is locked when the tree has a /proc
// of its own or shares CRIU's PID namespace; when the facts cannot be
// read, CRIU will say what is wrong.
func (c *Client) lockDump(ctx context.Context, pid int) (unlock func(), err error) {
	p, err := proc.ReadParasiteProc(pid)
	if err != nil || !p.Mounts {
		return func() {}, nil
	}
	if err := os.MkdirAll(LockDir, 0o700); err != nil {
		return nil, fmt.Errorf("criu dump: lock: %w", err)
	}
	f, err := os.OpenFile(DumpLockPath(p), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("criu dump: lock: %w", err)
	}
	logged := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("criu dump: lock %s: %w", f.Name(), err)
		}
		if !logged {
			c.logger().Info("waiting for another dump of a tree with the same working directory (CRIU mounts its /proc there)", "pid", pid, "dir", p.Cwd)
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("criu dump: waiting for another dump in %s: %w", p.Cwd, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

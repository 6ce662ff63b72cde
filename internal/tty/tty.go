// Package tty handles the terminals a process tree uses but does not own:
// an ssh session's pty, a console bind-mounted into a container, a serial
// line. It finds them in /proc (External), makes a new pty for the
// restored tree (Open), records what the tree writes to it (Record), and
// fixes the images of a tree whose controlling terminal belonged to a
// session outside it (DetachSessions).
//
// CRIU dumps such a terminal as external when told its key (tty[RDEV:DEV],
// CRIU's --external), and on restore connects the tree's descriptors to
// whatever fd is inherited under that key; that fd must be a terminal,
// since CRIU sets the dumped termios and window size on it.
package tty

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/proc"
)

// Terminal is one terminal from outside the tree.
type Terminal struct {
	Key   string   // tty[rdev:dev] in hex, as CRIU names it
	Path  string   // /dev/pts/3, as the tree's fds show it
	Ctty  bool     // some task of the tree has it as controlling terminal
	Users []string // "pid 42 fd 1"
}

// Device majors (linux/major.h).
const (
	ttyMajor         = 4   // VTs and the first serial ports
	ttyAuxMajor      = 5   // /dev/tty (0), /dev/console (1), /dev/ptmx (2)
	ptyMasterMajor   = 128 // legacy numbering of the masters: 128-135
	ptySlaveMajor    = 136 // /dev/pts/N: 136-143
	ptySlaveMajorEnd = 143
	usbSerialMajor   = 188
	lowDenseSerial   = 204
)

// Key is CRIU's name of the terminal with device number rdev on the
// filesystem dev (an external resource "tty[rdev:dev]").
func Key(rdev, dev uint64) string { return fmt.Sprintf("tty[%x:%x]", rdev, dev) }

// kind classifies a character device: "master", "slave", "ctty" (the
// /dev/tty alias), "other" (console, VT, serial) or "" (not a terminal).
func kind(rdev uint64) string {
	maj, min := unix.Major(rdev), unix.Minor(rdev)
	switch {
	case maj == ttyAuxMajor && min == 2, maj >= ptyMasterMajor && maj < ptySlaveMajor:
		return "master"
	case maj >= ptySlaveMajor && maj <= ptySlaveMajorEnd:
		return "slave"
	case maj == ttyAuxMajor && min == 0:
		return "ctty"
	case maj == ttyAuxMajor && min == 1, maj == ttyMajor, maj == usbSerialMajor, maj == lowDenseSerial:
		return "other"
	}
	return ""
}

// ptsIndex is the N of /dev/pts/N.
func ptsIndex(rdev uint64) int {
	return int(unix.Major(rdev)-ptySlaveMajor)*256 + int(unix.Minor(rdev))
}

// External lists the terminals the tasks of tree use and do not own: every
// terminal except the ptys whose master a task of the tree holds and the
// /dev/tty alias. Tasks that vanish meanwhile are skipped.
func External(tree []int) ([]Terminal, error) {
	type use struct {
		rdev, dev uint64
		path      string
		who       string
	}
	var uses []use
	owned := map[int]bool{} // pts indexes whose master is in the tree
	cttys := map[uint64]bool{}
	for _, pid := range tree {
		if st, err := proc.ReadStat(pid); err == nil && st.TtyNr != 0 {
			cttys[unix.Mkdev(uint32(st.TtyNr>>8&0xfff), uint32(st.TtyNr&0xff|st.TtyNr>>12&0xfff00))] = true
		}
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(dir)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("list the files of pid %d: %w", pid, err)
		}
		for _, e := range ents {
			var st unix.Stat_t
			p := filepath.Join(dir, e.Name())
			if unix.Stat(p, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
				continue
			}
			switch kind(st.Rdev) {
			case "master":
				if n, ok := ptmxIndex(pid, e.Name()); ok {
					owned[n] = true
				}
			case "slave", "other":
				target, _ := os.Readlink(p)
				uses = append(uses, use{st.Rdev, st.Dev, target, fmt.Sprintf("pid %d fd %s", pid, e.Name())})
			}
		}
	}
	byKey := map[string]*Terminal{}
	var keys []string
	for _, u := range uses {
		if kind(u.rdev) == "slave" && owned[ptsIndex(u.rdev)] {
			continue
		}
		k := Key(u.rdev, u.dev)
		t := byKey[k]
		if t == nil {
			t = &Terminal{Key: k, Path: u.path, Ctty: cttys[u.rdev]}
			byKey[k] = t
			keys = append(keys, k)
		}
		t.Users = append(t.Users, u.who)
	}
	sort.Strings(keys)
	out := make([]Terminal, 0, len(keys))
	for _, k := range keys {
		out = append(out, *byKey[k])
	}
	return out, nil
}

// ptmxIndex reads the pty index of a master fd from its fdinfo.
func ptmxIndex(pid int, fd string) (int, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "tty-index:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return n, err == nil
		}
	}
	return 0, false
}

// Open makes a new pty and returns its master and slave (neither becomes
// this process's controlling terminal).
func Open() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open a pty: %w", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("unlock the pty: %w", err)
	}
	// TIOCGPTPEER opens the slave through the master, whatever devpts
	// is mounted where.
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, m.Fd(), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		m.Close()
		return nil, nil, fmt.Errorf("open the pty's slave: %w", errno)
	}
	return m, os.NewFile(fd, "pty-slave"), nil
}

// Mode is where a restored tree's terminals lead: ModePTY (a new pty whose
// output is recorded in a log), ModeNull (a new pty whose output is
// dropped) or ModeFile (a new pty whose output is appended to Path).
type Mode struct {
	Kind string
	Path string // for ModeFile
}

// The kinds of Mode.
const (
	ModePTY  = "pty"
	ModeNull = "null"
	ModeFile = "file"
)

func (m Mode) String() string {
	if m.Kind == ModeFile {
		return "file:" + m.Path
	}
	return m.Kind
}

// ParseMode parses --tty: "pty" (also ""), "null" or "file:PATH" with an
// absolute PATH.
func ParseMode(s string) (Mode, error) {
	switch {
	case s == "" || s == ModePTY:
		return Mode{Kind: ModePTY}, nil
	case s == ModeNull:
		return Mode{Kind: ModeNull}, nil
	case strings.HasPrefix(s, "file:"):
		p := strings.TrimPrefix(s, "file:")
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return Mode{}, fmt.Errorf("--tty %q: want file:PATH with a clean absolute PATH (a file on the destination)", s)
		}
		return Mode{Kind: ModeFile, Path: p}, nil
	}
	return Mode{}, fmt.Errorf("--tty %q: want pty, null or file:PATH", s)
}

// Recording is the output of one pty being copied to its sink.
type Recording struct {
	Bytes   atomic.Int64 // copied so far
	done    chan struct{}
	master  *os.File
	dropped atomic.Bool
}

// Record copies what is written to the pty of master into w until every
// slave is closed (or Stop), and then closes master and w. After limit
// bytes (0: no limit) the output is drained and dropped, with one line
// saying so, so that the tree never blocks on a full terminal.
func Record(master *os.File, w io.WriteCloser, limit int64) *Recording {
	r := &Recording{done: make(chan struct{}), master: master}
	go func() {
		defer close(r.done)
		defer w.Close()
		defer master.Close()
		buf := make([]byte, 32*1024)
		for {
			n, err := master.Read(buf)
			if n > 0 {
				if limit > 0 && r.Bytes.Load()+int64(n) > limit {
					if !r.dropped.Swap(true) {
						fmt.Fprintf(w, "\n[phaul: this log reached its limit of %d bytes; further output is dropped]\n", limit)
					}
				} else if _, werr := w.Write(buf[:n]); werr == nil {
					r.Bytes.Add(int64(n))
				}
			}
			if err != nil {
				// EIO: the last slave was closed.
				return
			}
		}
	}()
	return r
}

// Done is closed when the recording has ended.
func (r *Recording) Done() <-chan struct{} { return r.done }

// Stop ends the recording: the tree's terminal is hung up.
func (r *Recording) Stop() {
	r.master.Close()
	<-r.done
}

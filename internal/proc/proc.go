// Package proc reads facts about processes from /proc and says whether a
// PID may be the root of a checkpointed tree.
package proc

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat holds the fields of /proc/PID/stat that phaul uses.
type Stat struct {
	Pid     int
	Comm    string
	State   byte
	PPid    int
	PGrp    int
	Session int
	TtyNr   int // the controlling terminal's device number, as the kernel encodes it; 0 for none
	Flags   uint64
	// StartTime is when the task started, in clock ticks after boot:
	// with the PID, it names one process (PIDs are reused).
	StartTime uint64
}

// pfKthread is PF_KTHREAD in /proc/PID/stat's flags.
const pfKthread = 0x00200000

// IsKernelThread reports whether the task is a kernel thread.
func (s Stat) IsKernelThread() bool { return s.Flags&pfKthread != 0 }

// ReadStat reads /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(string(data))
}

// ParseStat parses the content of /proc/PID/stat.
func ParseStat(s string) (Stat, error) {
	// pid (comm) state ppid pgrp session tty_nr tpgid flags ...; comm
	// may hold spaces and parentheses, so split at the last ')'.
	open := strings.IndexByte(s, '(')
	closing := strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return Stat{}, fmt.Errorf("malformed stat %q", s)
	}
	var st Stat
	var err error
	if st.Pid, err = strconv.Atoi(strings.TrimSpace(s[:open])); err != nil {
		return Stat{}, fmt.Errorf("malformed stat pid: %w", err)
	}
	st.Comm = s[open+1 : closing]
	f := strings.Fields(s[closing+1:])
	if len(f) < 7 {
		return Stat{}, fmt.Errorf("malformed stat: %d fields after comm", len(f))
	}
	st.State = f[0][0]
	ints := []*int{&st.PPid, &st.PGrp, &st.Session}
	for i, p := range ints {
		if *p, err = strconv.Atoi(f[1+i]); err != nil {
			return Stat{}, fmt.Errorf("malformed stat field %d: %w", 4+i, err)
		}
	}
	if st.TtyNr, err = strconv.Atoi(f[4]); err != nil {
		return Stat{}, fmt.Errorf("malformed stat tty_nr: %w", err)
	}
	if st.Flags, err = strconv.ParseUint(f[6], 10, 64); err != nil {
		return Stat{}, fmt.Errorf("malformed stat flags: %w", err)
	}
	if len(f) > 19 {
		if st.StartTime, err = strconv.ParseUint(f[19], 10, 64); err != nil {
			return Stat{}, fmt.Errorf("malformed stat starttime: %w", err)
		}
	}
	return st, nil
}

// ErrBadTarget is matched (errors.Is) by every refusal of ValidateTarget.
var ErrBadTarget = errors.New("not a process tree phaul can checkpoint")

// TargetError says why a PID cannot be checkpointed.
type TargetError struct {
	Pid    int
	Reason string
}

func (e *TargetError) Error() string {
	return fmt.Sprintf("pid %d: %s", e.Pid, e.Reason)
}

func (e *TargetError) Is(target error) bool { return target == ErrBadTarget }

// ValidateTarget refuses PIDs that must never be checkpointed: PID 1, a
// kernel thread, this process or one of its ancestors (freezing it would
// freeze phaul), a PID that does not exist or has exited.
func ValidateTarget(pid int) error {
	bad := func(format string, args ...any) error {
		return &TargetError{Pid: pid, Reason: fmt.Sprintf(format, args...)}
	}
	if pid <= 0 {
		return bad("not a valid PID")
	}
	if pid == 1 {
		return bad("is the init process of this PID namespace; migrating it would take the whole system with it")
	}
	st, err := ReadStat(pid)
	if errors.Is(err, os.ErrNotExist) {
		return bad("no such process")
	}
	if err != nil {
		return bad("cannot read its state: %v", err)
	}
	if st.IsKernelThread() {
		return bad("%q is a kernel thread; only user processes can be checkpointed", st.Comm)
	}
	if st.State == 'Z' || st.State == 'X' {
		return bad("%q has exited (state %c)", st.Comm, st.State)
	}
	for p := os.Getpid(); p > 1; {
		if p == pid {
			if p == os.Getpid() {
				return bad("is phaul itself")
			}
			return bad("%q is an ancestor of phaul (checkpointing it would freeze phaul too); run phaul from outside that tree", st.Comm)
		}
		ps, err := ReadStat(p)
		if err != nil {
			break
		}
		p = ps.PPid
	}
	return nil
}

// Same reports whether pid is alive (not a zombie) and is the process that
// started at start (a StartTime).
func Same(pid int, start uint64) bool {
	st, err := ReadStat(pid)
	return err == nil && st.StartTime == start && st.State != 'Z' && st.State != 'X'
}

// Status is what phaul reads of /proc/PID/status: the tracer, the PID in
// the task's own PID namespace and the credentials.
type Status struct {
	TracerPid int // 0 when not traced
	NSPid     int // the PID in the innermost PID namespace (NSpid's last); 0 if absent
	// NSSid and NSPgid are the session and process group in the
	// innermost PID namespace (NSsid's and NSpgid's last): 0 when their
	// leader's PID is outside that namespace; -1 if absent.
	NSSid, NSPgid                  int
	CapInh, CapPrm, CapEff, CapBnd uint64
	Uids, Gids                     []uint32 // real, effective, saved, filesystem
	Groups                         []uint32 // supplementary
}

// ReadStatus reads /proc/PID/status.
func ReadStatus(pid int) (Status, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Status{}, err
	}
	return ParseStatus(string(data))
}

// ParseStatus parses the content of /proc/PID/status; the credential lines
// must be there.
func ParseStatus(status string) (Status, error) {
	c := Status{NSSid: -1, NSPgid: -1}
	seen := 0
	for _, line := range strings.Split(status, "\n") {
		key, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var caps *uint64
		switch key {
		case "TracerPid":
			c.TracerPid, _ = strconv.Atoi(v)
			continue
		case "NSpid", "NSsid", "NSpgid":
			n := -1
			if f := strings.Fields(v); len(f) > 0 {
				n, _ = strconv.Atoi(f[len(f)-1])
			}
			switch key {
			case "NSpid":
				c.NSPid = max(n, 0)
			case "NSsid":
				c.NSSid = n
			default:
				c.NSPgid = n
			}
			continue
		case "CapInh":
			caps = &c.CapInh
		case "CapPrm":
			caps = &c.CapPrm
		case "CapEff":
			caps = &c.CapEff
		case "CapBnd":
			caps = &c.CapBnd
		case "Uid", "Gid", "Groups":
			var ids []uint32
			for _, f := range strings.Fields(v) {
				n, err := strconv.ParseUint(f, 10, 32)
				if err != nil {
					return Status{}, fmt.Errorf("status %s: %w", key, err)
				}
				ids = append(ids, uint32(n))
			}
			switch key {
			case "Uid":
				c.Uids = ids
				seen++
			case "Gid":
				c.Gids = ids
				seen++
			default:
				c.Groups = ids
			}
			continue
		default:
			continue
		}
		n, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			return Status{}, fmt.Errorf("status %s: %w", key, err)
		}
		*caps = n
		seen++
	}
	if seen != 6 {
		return Status{}, fmt.Errorf("status: %d of the 6 credential lines", seen)
	}
	return c, nil
}

// OwnNamespace reports whether pid is in a namespace of kind ("pid",
// "mnt", "user", ...: a name in /proc/PID/ns) other than this process's.
func OwnNamespace(pid int, kind string) (bool, error) {
	theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	if err != nil {
		return false, err
	}
	ours, err := os.Readlink("/proc/self/ns/" + kind)
	if err != nil {
		return false, err
	}
	return theirs != ours, nil
}

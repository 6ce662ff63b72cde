package proc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// ParasiteProcDir is the directory CRIU's parasite creates, in the working
// directory of a tree's root task, to mount a /proc of the tree's PID
// namespace on when the tree's own /proc is not one (criu/pie/parasite.c,
// get_proc_fd). It removes it again once it holds the mount.
const ParasiteProcDir = "proc.crtools"

// ParasiteProc is what a CRIU dump of the tree rooted at a PID will need of
// its root's working directory. Dumps of two trees whose roots share that
// directory collide there ("Can't create a directory (-17)"), a read-only
// or unwritable one fails the dump, and so does a proc.crtools left behind.
type ParasiteProc struct {
	// Mounts: the tree is in a PID namespace other than CRIU's and its
	// root's /proc is not of that namespace, so the parasite mounts one
	// in the root's working directory. When false (the tree shares
	// CRIU's PID namespace, or has a /proc of its own) nothing is
	// created and the other fields are unset.
	Mounts bool
	// Cwd is the root's working directory as the root sees it.
	Cwd string
	// Dev and Ino name the directory for a lock; Uid, Gid and Mode
	// (permission bits) say who may create in it.
	Dev, Ino uint64
	Uid, Gid uint32
	Mode     uint32
	// ReadOnly: the directory is on a read-only mount.
	ReadOnly bool
	// Leftover: a proc.crtools is there (another dump's, running or
	// interrupted).
	Leftover bool
}

// ReadParasiteProc reads what a dump, by a CRIU in this process's PID
// namespace, of the tree rooted at pid needs of its root's working
// directory.
func ReadParasiteProc(pid int) (ParasiteProc, error) {
	if own, err := OwnNamespace(pid, "pid"); err != nil || !own {
		return ParasiteProc{}, err
	}
	if own, err := ownProc(pid); err != nil || own {
		return ParasiteProc{}, err
	}
	dir := fmt.Sprintf("/proc/%d/cwd", pid)
	p := ParasiteProc{Mounts: true}
	var err error
	if p.Cwd, err = os.Readlink(dir); err != nil {
		return p, fmt.Errorf("working directory of %d: %w", pid, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir+"/", &st); err != nil {
		return p, fmt.Errorf("working directory of %d: %w", pid, err)
	}
	p.Dev, p.Ino, p.Uid, p.Gid, p.Mode = st.Dev, st.Ino, st.Uid, st.Gid, st.Mode&0o7777
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir+"/", &sfs); err != nil {
		return p, fmt.Errorf("working directory of %d: %w", pid, err)
	}
	p.ReadOnly = sfs.Flags&unix.ST_RDONLY != 0
	if _, err := os.Lstat(filepath.Join(dir, ParasiteProcDir)); err == nil {
		p.Leftover = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return p, fmt.Errorf("working directory of %d: %w", pid, err)
	}
	return p, nil
}

// ownProc reports whether the /proc that pid sees is of its own PID
// namespace: whether its PID there names the same process (the same start
// time), as the parasite's readlink of /proc/self would tell.
func ownProc(pid int) (bool, error) {
	st, err := ReadStat(pid)
	if err != nil {
		return false, err
	}
	s, err := ReadStatus(pid)
	if err != nil {
		return false, err
	}
	if s.NSPid == 0 {
		return false, fmt.Errorf("status of %d: no NSpid", pid)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/proc/%d/stat", pid, s.NSPid))
	if err != nil {
		return false, nil // no /proc there, or not of its namespace
	}
	inner, err := ParseStat(string(data))
	return err == nil && inner.Pid == s.NSPid && inner.StartTime == st.StartTime, nil
}

// MayCreateIn reports whether a task with these credentials may create a
// directory in p's working directory, by its permission bits (or
// CAP_DAC_OVERRIDE), and may mount a proc there (CAP_SYS_ADMIN). It is
// the kernel's rule for a plain directory without ACLs.
func (s Status) MayCreateIn(p ParasiteProc) (ok bool, why string) {
	const capDACOverride, capSysAdmin = 1, 21
	if s.CapEff&(1<<capSysAdmin) == 0 {
		return false, "its root lacks CAP_SYS_ADMIN to mount one"
	}
	if s.CapEff&(1<<capDACOverride) != 0 {
		return true, ""
	}
	var fsuid, fsgid uint32
	if len(s.Uids) == 4 && len(s.Gids) == 4 {
		fsuid, fsgid = s.Uids[3], s.Gids[3]
	}
	var bits uint32
	switch {
	case fsuid == p.Uid:
		bits = p.Mode >> 6
	case fsgid == p.Gid || slices.Contains(s.Groups, p.Gid):
		bits = p.Mode >> 3
	default:
		bits = p.Mode
	}
	if bits&0o3 != 0o3 { // write and search
		return false, fmt.Sprintf("its root (uid %d) may not create in it (mode %04o, owner %d:%d)", fsuid, p.Mode, p.Uid, p.Gid)
	}
	return true, ""
}

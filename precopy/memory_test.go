package precopy

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// The mappings a round reads, as /proc/PID/maps shows them.
func TestMappings(t *testing.T) {
	const shm = "00:01"
	for _, c := range []struct {
		line    string
		private bool
		file    bool // of a private region
		shared  bool
		id, off uint64
		sysv    bool
	}{
		{line: "7f0000000000-7f0000004000 rw-p 00000000 00:00 0", private: true},
		{line: "55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0          [heap]", private: true},
		{line: "7f0000000000-7f0000002000 r--p 00001000 fe:01 1234  /usr/lib/libc.so.6", private: true, file: true},
		{line: "7ffd00000000-7ffd00002000 r--p 00000000 00:00 0  [vvar]"},
		{line: "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]"},
		{line: "7f0000000000-7f0000001000 ---p 00000000 00:00 0"},
		{line: "7f0000000000-7f0000011000 rw-s 00000000 00:01 2048  /dev/zero (deleted)", shared: true, id: 2048},
		{line: "7f0000000000-7f0000002000 rw-s 00003000 00:01 77  /memfd:cache (deleted)", shared: true, id: 77, off: 0x3000},
		{line: "7f0000000000-7f0000040000 rw-s 00000000 00:01 32769  /SYSV00000000 (deleted)", shared: true, id: 32769, sysv: true},
		{line: "7f0000000000-7f0000040000 rw-s 00000000 00:01 0  /SYSV0000abcd (deleted)", shared: true, id: 0, sysv: true},
		// A file of a tmpfs one can see: CRIU keeps its name, not its bytes.
		{line: "7f0000000000-7f0000001000 rw-s 00000000 00:1a 12  /dev/shm/data"},
		{line: "7f0000000000-7f0000001000 -w-s 00000000 00:01 9  /dev/zero (deleted)"},
		{line: "7f0000001000-7f0000000000 rw-p 00000000 00:00 0"},
		{line: "7f0000000800-7f0000001000 rw-p 00000000 00:00 0"},
		{line: "garbage"},
	} {
		var r region
		var s sharedMap
		var private, shared bool
		m, ok := parseMapsLine(c.line)
		if ok {
			r, private = m.private()
			s, shared = m.shared(shm)
		}
		if private != c.private || shared != c.shared {
			t.Errorf("%q: private %v shared %v, want %v %v", c.line, private, shared, c.private, c.shared)
			continue
		}
		if private && (r.file != c.file || r.start != m.start || r.end != m.end) {
			t.Errorf("%q: region %+v", c.line, r)
		}
		if shared && (s.id != c.id || s.off != c.off || s.sysv != c.sysv || s.start != m.start || s.end != m.end) {
			t.Errorf("%q: shared %+v", c.line, s)
		}
	}
	if _, ok := (mapping{perms: "rw-s", dev: "00:01", inode: 5}).shared(""); ok {
		t.Error("a shared mapping is read although the shmem device is unknown")
	}
}

// shmemDev is learnt here as a round learns it.
func TestShmemDev(t *testing.T) {
	if d := shmemDev(); len(d) < 5 || d[2] != ':' {
		t.Errorf("shmem device %q", d)
	}
}

// SysV segments are read only for a tree in an IPC namespace of its own:
// only then does CRIU dump them.
func TestOwnIPC(t *testing.T) {
	if ownIPC(os.Getpid()) {
		t.Error("phaul's own IPC namespace is taken for another")
	}
	if os.Geteuid() != 0 {
		t.Skip("an IPC namespace needs root")
	}
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWIPC}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if !ownIPC(cmd.Process.Pid) {
		t.Error("a task in an IPC namespace of its own is taken for one in phaul's")
	}
}

package proc

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

func TestParseStat(t *testing.T) {
	in := "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5 0 0\n"
	st, err := ParseStat(in)
	if err != nil {
		t.Fatal(err)
	}
	want := Stat{Pid: 1234, Comm: "a (weird) name", State: 'S', PPid: 1, PGrp: 1234, Session: 1234, Flags: 4194560, StartTime: 5}
	if st != want {
		t.Errorf("got %+v, want %+v", st, want)
	}
	for _, bad := range []string{"", "12 (x", "x (y) S 1 2 3 4 5 6", "1 (y) S 1 2"} {
		if _, err := ParseStat(bad); err == nil {
			t.Errorf("ParseStat(%q): no error", bad)
		}
	}
}

func TestSame(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil || st.StartTime == 0 {
		t.Fatalf("%+v %v", st, err)
	}
	if !Same(os.Getpid(), st.StartTime) {
		t.Error("this process is not itself")
	}
	if Same(os.Getpid(), st.StartTime+1) {
		t.Error("another start time matched: a reused PID would pass")
	}
	if Same(999999999, st.StartTime) {
		t.Error("a PID that does not exist matched")
	}
}

func TestValidateTarget(t *testing.T) {
	sleeper := exec.Command("sleep", "30")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })

	kthread := 0
	if st, err := ReadStat(2); err == nil && st.IsKernelThread() {
		kthread = 2 // kthreadd
	}
	tests := []struct {
		name string
		pid  int
		want string // "" means accepted
	}{
		{"init", 1, "init process"},
		{"self", os.Getpid(), "phaul itself"},
		{"parent", os.Getppid(), "ancestor of phaul"},
		{"missing", 1 << 30, "no such process"},
		{"negative", -5, "not a valid PID"},
		{"child", sleeper.Process.Pid, ""},
	}
	if kthread != 0 {
		tests = append(tests, struct {
			name string
			pid  int
			want string
		}{"kthread", kthread, "kernel thread"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateTarget(tt.pid)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrBadTarget) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want a refusal saying %q", err, tt.want)
			}
		})
	}
}

func TestOutsideLeader(t *testing.T) {
	in := map[int]bool{100: true, 101: true}
	const gone = 999999999 // above any pid_max: no task has it
	inside := Status{NSSid: 5, NSPgid: 5}
	for _, tc := range []struct {
		name    string
		st      Stat
		status  Status
		root    bool
		outside bool
	}{
		{"session leader", Stat{Pid: 100, Session: 100, PGrp: 100}, inside, true, false},
		{"its child", Stat{Pid: 101, Session: 100, PGrp: 100}, inside, false, false},
		{"a job of its own inside", Stat{Pid: 101, Session: 100, PGrp: 101}, inside, false, false},
		{"started from a shell", Stat{Pid: 100, Session: 7, PGrp: 100}, inside, true, true},
		{"in someone else's group", Stat{Pid: 100, Session: 100, PGrp: 55}, inside, true, true},
		{"leader in an ancestor PID namespace", Stat{Pid: 100, Session: 0, PGrp: 0}, inside, true, true},
		{"session leader exited", Stat{Pid: 101, Session: gone, PGrp: 101}, inside, false, false},
		{"group leader exited", Stat{Pid: 101, Session: 100, PGrp: gone}, inside, false, false},
		{"session leader exited, outside the PID namespace", Stat{Pid: 101, Session: gone, PGrp: 101}, Status{NSSid: 0, NSPgid: 5}, false, true},
		{"group leader outside the PID namespace", Stat{Pid: 101, Session: 100, PGrp: gone}, Status{NSSid: 5, NSPgid: 0}, false, true},
		{"root whose session leader exited", Stat{Pid: 100, Session: gone, PGrp: 100}, inside, true, true},
		{"leader alive outside (pid 1)", Stat{Pid: 101, Session: 1, PGrp: 101}, inside, false, true},
	} {
		if got := outsideLeader(tc.st, tc.status, tc.root, in) != ""; got != tc.outside {
			t.Errorf("%s: %+v: outside=%v, want %v", tc.name, tc.st, got, tc.outside)
		}
	}
}

func TestShellJobReason(t *testing.T) {
	start := func(setsid bool) int {
		t.Helper()
		cmd := exec.Command("sleep", "100")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: setsid}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd.Process.Pid
	}
	// A child of ours is in our session, led by someone else: a shell job.
	if why := ShellJobReason(start(false)); !strings.Contains(why, "whose leader is not in the tree") {
		t.Errorf("a child in our session: %q, want a shell job", why)
	}
	// A session leader of its own is not.
	if why := ShellJobReason(start(true)); why != "" {
		t.Errorf("a session leader: %q, want not a shell job", why)
	}
}

func TestParseStatus(t *testing.T) {
	status := "Name:\tx\nTracerPid:\t42\nNSpid:\t4242\t17\t1\nGroups:\t4 27\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000400\nCapEff:\t0000000000000400\nCapBnd:\t000001ffffffffff\n"
	c, err := ParseStatus(status)
	if err != nil {
		t.Fatal(err)
	}
	if c.CapPrm != 0x400 || c.CapEff != 0x400 || c.CapBnd != 0x1ffffffffff || len(c.Uids) != 4 || c.Uids[0] != 1000 || c.Gids[3] != 100 || len(c.Groups) != 2 || c.TracerPid != 42 || c.NSPid != 1 {
		t.Errorf("%+v", c)
	}
	if _, err := ParseStatus("Uid:\t0\n"); err == nil {
		t.Error("accepted a status without capabilities")
	}
	if own, err := ReadStatus(os.Getpid()); err != nil || len(own.Uids) != 4 || own.NSPid == 0 {
		t.Errorf("own: %+v %v", own, err)
	}
}

func TestOwnNamespace(t *testing.T) {
	for _, kind := range []string{"pid", "mnt", "user"} {
		if own, err := OwnNamespace(os.Getpid(), kind); own || err != nil {
			t.Errorf("%s: this process has a namespace of its own? %v, %v", kind, own, err)
		}
	}
	if _, err := OwnNamespace(os.Getpid(), "nosuch"); err == nil {
		t.Error("no error for an unknown kind")
	}
}

package precheck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/phaul/phaul/internal/pb"
)

// statLine is a /proc/PID/stat line with the fields judgePids reads.
func statLine(pid int, comm string, state byte, startTicks int) string {
	return fmt.Sprintf("%d (%s) %c 1 1 1 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0\n", pid, comm, state, startTicks)
}

// TestJudgePids: the destination's part of the pids check, against a fake
// /proc up 1000 s with pid_max 5000: a daemon of 900 s, a zombie, a task
// started 10 s ago.
func TestJudgePids(t *testing.T) {
	root := fakeProc(t, map[string]string{
		"uptime":             "1000.00 1500.00\n",
		"sys/kernel/pid_max": "5000\n",
		"100/stat":           statLine(100, "sshd", 'S', 10000),
		"200/stat":           statLine(200, "make", 'Z', 90000),
		"300/stat":           statLine(300, "sleep", 'S', 99000),
	})
	os.MkdirAll(filepath.Join(root, "self/ns"), 0o755)
	os.Symlink("pid:[4026531836]", filepath.Join(root, "self/ns/pid"))
	env := &Env{Proc: root}
	tests := []struct {
		name      string
		pids      []int32
		ns, boot  string
		result    pb.Verdict_Result
		transient bool
		want      []string
	}{
		{"own PID namespace", nil, "", "", pb.Verdict_PASS, false, []string{"a PID namespace of its own"}},
		{"free", []int32{150, 151}, "pid:[1]", "other", pb.Verdict_PASS, false, []string{"the 2 PIDs"}},
		{"a daemon", []int32{100, 150}, "pid:[1]", "other", pb.Verdict_FAIL, false, []string{"1 of the 2 PIDs", "pid 100 is taken here by sshd (running for 15m0s)", "unshare -p -f setsid"}},
		{"above pid_max", []int32{5000}, "pid:[1]", "other", pb.Verdict_FAIL, false, []string{"pid 5000: this host's pid_max is 5000"}},
		{"a zombie", []int32{200}, "pid:[1]", "other", pb.Verdict_FAIL, true, []string{"pid 200 is taken here by make, which has exited", "--retry-transient"}},
		{"just started", []int32{300}, "pid:[1]", "other", pb.Verdict_FAIL, true, []string{"pid 300 is taken here by sleep, started 10s ago"}},
		{"short-lived and a daemon", []int32{100, 300}, "pid:[1]", "other", pb.Verdict_FAIL, false, []string{"2 of the 2 PIDs"}},
		{"the source itself", []int32{100}, "pid:[4026531836]", BootID(), pb.Verdict_FAIL, false, []string{"pid 100 is the source tree's own: both hosts share one PID namespace"}},
		{"another kernel's namespace of the same number", []int32{100}, "pid:[4026531836]", "other", pb.Verdict_FAIL, false, []string{"taken here by sshd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &pb.SourceFacts{Host: &pb.HostInfo{BootId: tt.boot}, RestorePids: tt.pids, PidNs: tt.ns}
			v := judgePids(context.Background(), f, Options{}, env)
			if v.Result != tt.result || v.Transient != tt.transient {
				t.Errorf("%v transient=%v, want %v transient=%v: %s", v.Result, v.Transient, tt.result, tt.transient, text(v))
			}
			for _, w := range tt.want {
				if !strings.Contains(text(v), w) {
					t.Errorf("%q not in %s", w, text(v))
				}
			}
		})
	}
}

// TestRestorePids: a tree that is not a PID namespace of its own (this
// test's process) needs every thread's PID, its own among them.
func TestRestorePids(t *testing.T) {
	if isPidnsInit(os.Getpid()) {
		t.Skip("the test runs as the init of a PID namespace")
	}
	pids, ns := restorePids([]int{os.Getpid()})
	threads, _ := os.ReadDir("/proc/self/task")
	if !slices.Contains(pids, int32(os.Getpid())) || len(pids) < len(threads)/2 || !strings.HasPrefix(ns, "pid:[") {
		t.Errorf("pids %v (%d threads), ns %q", pids, len(threads), ns)
	}
}

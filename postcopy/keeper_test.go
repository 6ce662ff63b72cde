package postcopy

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/proc"
)

// copyProcess is a stand-in for a restored copy: a process with a child.
func copyProcess(t *testing.T) (*exec.Cmd, uint64) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "sleep 1000 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	st, err := proc.ReadStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); len(proc.Tree(cmd.Process.Pid)) < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the copy's child did not start")
		}
	}
	return cmd, st.StartTime
}

func startKeeper(t *testing.T, lease time.Duration) (*Keeper, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(t.TempDir(), "lease.json")
	k, err := StartKeeper(exe, record, Now()+int64(lease))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	return k, record
}

func wantRecord(t *testing.T, path, state, why string) {
	t.Helper()
	r, err := ReadKeeperRecord(path)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != state || !strings.Contains(r.Why, why) {
		t.Errorf("record %+v, want state %s, why with %q", r, state, why)
	}
}

// wantKilled: the copy and its child are gone, killed.
func wantKilled(t *testing.T, cmd *exec.Cmd, tree []int) {
	t.Helper()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var err error
	select {
	case err = <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("the copy was not killed")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("the copy ended with %v, want killed", err)
	}
	for _, p := range tree[1:] {
		for deadline := time.Now().Add(5 * time.Second); syscall.Kill(p, 0) == nil; time.Sleep(time.Millisecond) {
			if st, err := proc.ReadStat(p); err == nil && st.State == 'Z' {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task %d of the copy still runs", p)
			}
		}
	}
}

func TestKeeper(t *testing.T) {
	t.Run("the lease ends: the copy is killed", func(t *testing.T) {
		cmd, start := copyProcess(t)
		tree := proc.Tree(cmd.Process.Pid)
		k, record := startKeeper(t, 300*time.Millisecond)
		if err := k.Target(cmd.Process.Pid, start); err != nil {
			t.Fatal(err)
		}
		var ke *KilledError
		if err := k.Killed(); !errors.As(err, &ke) || !strings.Contains(ke.Why, "lease ended") {
			t.Fatalf("Killed = %v", err)
		}
		wantKilled(t, cmd, tree)
		wantRecord(t, record, KeeperKilled, "lease ended")
		if err := k.Commit(); err == nil {
			t.Error("a commit after the kill succeeded")
		}
	})
	t.Run("extended, then committed: the copy runs on", func(t *testing.T) {
		cmd, start := copyProcess(t)
		k, record := startKeeper(t, 200*time.Millisecond)
		if err := k.Target(cmd.Process.Pid, start); err != nil {
			t.Fatal(err)
		}
		for range 5 { // well past the first lease's end
			if err := k.Extend(Now() + int64(200*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := k.Commit(); err != nil {
			t.Fatal(err)
		}
		<-k.Done()
		if !proc.Same(cmd.Process.Pid, start) {
			t.Fatal("the committed copy is gone")
		}
		wantRecord(t, record, KeeperCommitted, "")
	})
	t.Run("the service lets go: the copy is killed at once", func(t *testing.T) {
		cmd, start := copyProcess(t)
		tree := proc.Tree(cmd.Process.Pid)
		k, record := startKeeper(t, time.Hour)
		if err := k.Target(cmd.Process.Pid, start); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		k.Close()
		wantKilled(t, cmd, tree)
		if d := time.Since(t0); d > 10*time.Second {
			t.Errorf("killed after %v", d)
		}
		wantRecord(t, record, KeeperKilled, "let go")
	})
	t.Run("the lease ends before the copy is named: it is killed when named", func(t *testing.T) {
		k, record := startKeeper(t, 0)
		var ke *KilledError
		if err := k.Killed(); !errors.As(err, &ke) {
			t.Fatalf("Killed = %v", err)
		}
		cmd, start := copyProcess(t)
		tree := proc.Tree(cmd.Process.Pid)
		if err := k.Target(cmd.Process.Pid, start); err != nil {
			t.Fatal(err)
		}
		if err := k.Killed(); !errors.As(err, &ke) {
			t.Fatalf("Killed = %v", err)
		}
		wantKilled(t, cmd, tree)
		wantRecord(t, record, KeeperKilled, "lease ended")
	})
}

func TestLease(t *testing.T) {
	h := &Holder{Duration: time.Second}
	a1 := h.Ask()
	time.Sleep(10 * time.Millisecond)
	a2 := h.Ask()
	e2, ok := h.Granted(a2)
	if !ok {
		t.Fatal("grant of an ask refused")
	}
	// A late grant of an older ask does not move the end back.
	if e1, ok := h.Granted(a1); ok || e1 != e2 {
		t.Errorf("late grant: %d, %v; want %d, false", e1, ok, e2)
	}
	if _, ok := h.Granted(99); ok {
		t.Error("grant of no ask taken")
	}
	// The end is counted from the ask's sending, not the grant's arrival.
	if now := Now(); e2 > now+int64(time.Second) || e2 < now+int64(time.Second)-int64(time.Second/2) {
		t.Errorf("lease ends %v from now", time.Duration(e2-now))
	}

	g := &Grantor{Duration: time.Second, Margin: 500 * time.Millisecond}
	if s := g.Stop(); s > Now() {
		t.Error("nothing granted, yet the source must wait")
	}
	g = &Grantor{Duration: time.Second, Margin: 500 * time.Millisecond}
	if !g.Grant() {
		t.Fatal("grant refused")
	}
	safe := g.Stop()
	if g.Grant() {
		t.Error("granted after Stop")
	}
	if d := time.Duration(safe - Now()); d < time.Second || d > 1500*time.Millisecond {
		t.Errorf("safe to resume in %v, want about 1.5s", d)
	}
}

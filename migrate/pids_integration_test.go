package migrate_test

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/twohosts"
)

// The PIDs a restore needs (#16): a tree in the host's PID namespace is
// restored with every task's PID, so the checks refuse it before the
// freeze where one is taken on the destination, naming the holder, and let
// it through where all are free; a tree that starts a PID namespace below
// its root is refused, naming the init to migrate instead.

// pidsVerdict is the report's pids verdict: result, transient, and its
// detail and items as one text.
func pidsVerdict(t *testing.T, r *twohosts.Result) (string, bool, string) {
	t.Helper()
	vs, _ := r.Report["verdicts"].([]any)
	for _, v := range vs {
		m, _ := v.(map[string]any)
		if m["check"] != "pids" {
			continue
		}
		text := fmt.Sprint(m["detail"])
		items, _ := m["items"].([]any)
		for _, it := range items {
			text += " | " + fmt.Sprint(it)
		}
		tr, _ := m["transient"].(bool)
		return fmt.Sprint(m["result"]), tr, text
	}
	t.Fatalf("no pids verdict: %v", r.Report["verdicts"])
	return "", false, ""
}

// assertPidsRefused checks that the migration was refused by the pids
// check with the given class and words, and that the workload counts on,
// never frozen.
func assertPidsRefused(t *testing.T, r *twohosts.Result, w *twohosts.Workload, transient bool, want ...string) {
	t.Helper()
	res, tr, text := pidsVerdict(t, r)
	code := 4
	if transient {
		code = 5
	}
	if r.ExitCode != code || res != "fail" || tr != transient || r.Str("error_phase") != "checks" {
		t.Errorf("exit %d, pids %s transient %v, error phase %q; want exit %d, fail, transient %v: %s", r.ExitCode, res, tr, r.Str("error_phase"), code, transient, text)
	}
	for _, s := range want {
		if !strings.Contains(text, s) {
			t.Errorf("the pids verdict does not say %q: %s", s, text)
		}
	}
	if twohosts.Stopped(w.Pid) || !testutil.Alive(w.Pid) {
		t.Fatalf("the workload (pid %d) is stopped or gone", w.Pid)
	}
	countsOn(t, w)
}

// countsOn checks that workload w (wherever it runs) counts on.
func countsOn(t *testing.T, w *twohosts.Workload) {
	t.Helper()
	st, _ := testutil.ReadState(w.State)
	if _, err := testutil.WaitCount(w.State, st.Count+5, 5*time.Second); err != nil {
		t.Fatalf("the workload does not count on: %v", err)
	}
}

// TestMigratePidsSharedNamespace: both "hosts" here share one PID
// namespace unless the service has its own: the frozen source keeps its
// PIDs until the commit, and the checks say so.
func TestMigratePidsSharedNamespace(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{HostPidns: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := h.Migrate(t, ctx, w.Pid, svc.Addr)
	assertPidsRefused(t, r, w, false, fmt.Sprintf("pid %d is the source tree's own", w.Pid), "unshare -p -f setsid")
}

// TestMigratePidsFree: the same tree to a service in a PID namespace of
// its own, where its PIDs are free: restored with them, counting on.
func TestMigratePidsFree(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartServiceInPidns(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{HostPidns: true, Args: []string{"--child"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := h.Migrate(t, ctx, w.Pid, svc.Addr)
	if r.ExitCode != 0 {
		t.Fatalf("phaul migrate: exit %d: %s\n%s", r.ExitCode, r.Str("error"), r.Stderr)
	}
	if res, _, text := pidsVerdict(t, r); res != "pass" || !strings.Contains(text, "PIDs the restore needs here") {
		t.Errorf("pids: %s: %s", res, text)
	}
	if dp := int(r.Num("dest_pid")); dp != w.Pid {
		t.Errorf("restored as pid %d in the service's namespace, want %d", dp, w.Pid)
	}
	host := svc.HostPid(w.Pid)
	if host == 0 {
		t.Fatalf("no pid %d in the service's namespace", w.Pid)
	}
	t.Cleanup(func() { testutil.KillPid(host) })
	countsOn(t, w)
}

// TestMigratePidTaken: in the service's PID namespace a command (sleep)
// holds the workload's PID, made so with ns_last_pid: refused before the
// freeze, naming it, and transient (it started a moment ago).
func TestMigratePidTaken(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartServiceInPidns(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{HostPidns: true})
	holder := exec.Command("nsenter", "-t", strconv.Itoa(svc.Pid()), "-p", "-m", "sh", "-ec",
		`echo $1 > /proc/sys/kernel/ns_last_pid; sleep 600 & echo $!; wait`, "sh", strconv.Itoa(w.Pid-1))
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	var got int
	if _, err := fmt.Fscan(out, &got); err != nil {
		t.Fatal(err)
	}
	if got != w.Pid {
		t.Fatalf("the holder got pid %d in the service's namespace, not %d (another task forked there in between)", got, w.Pid)
	}
	t.Cleanup(func() { testutil.KillPid(svc.HostPid(got)) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := h.Migrate(t, ctx, w.Pid, svc.Addr)
	assertPidsRefused(t, r, w, true, fmt.Sprintf("pid %d is taken here by sleep, started", w.Pid), "--retry-transient")
}

// TestMigrateNestedPidns: `unshare -p -f CMD &` then migrating $!, the
// unshare: refused before the freeze (CRIU would fail the dump with
// "Can't dump nested pid namespace"), naming the init to migrate instead.
func TestMigrateNestedPidns(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartServiceInPidns(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{})
	unshare := w.Cmd.Process.Pid
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := h.Migrate(t, ctx, unshare, svc.Addr)
	assertPidsRefused(t, r, w, false, fmt.Sprintf("pid %d (unshare) starts a PID namespace whose init is pid %d (phaul-workload): migrate that init instead (phaul migrate %d)", unshare, w.Pid, w.Pid))
}

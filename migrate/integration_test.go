package migrate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/cgroups"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/twohosts"
	"github.com/phaul/phaul/migrate"
)

// Real migrations between two network-namespace hosts with the real
// binaries. Need root and CRIU; under CI=true they fail instead of
// skipping.

func cgroupPath(t *testing.T, pid int, ctrl string) string {
	t.Helper()
	sets, err := cgroups.ProcessSets(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sets {
		if s.Controllers == ctrl {
			return s.Path
		}
	}
	return ""
}

// assertRunsOnB checks that the migrated tree runs on the destination,
// counts on from where it was, and is gone from the source.
func assertRunsOnB(t *testing.T, h *twohosts.Hosts, w *twohosts.Workload, r *twohosts.Result, before testutil.State) int {
	t.Helper()
	return assertRunsOn(t, h, nil, w, r, before)
}

// assertRunsOn is assertRunsOnB for a service that may live in a PID
// namespace of its own (svc translates the reported PID); it returns the
// restored root's PID here.
func assertRunsOn(t *testing.T, h *twohosts.Hosts, svc *twohosts.Service, w *twohosts.Workload, r *twohosts.Result, before testutil.State) int {
	t.Helper()
	if r.ExitCode != 0 || r.Report["running"] != true || r.Report["committed"] != true {
		t.Fatalf("migrate failed (exit %d): %v\n%s", r.ExitCode, r.Report["error"], r.Stderr)
	}
	dest := int(r.Num("dest_pid"))
	if svc != nil {
		if dest = svc.HostPid(dest); dest == 0 {
			t.Fatalf("restored pid %v not found in the service's PID namespace", r.Report["dest_pid"])
		}
	}
	t.Cleanup(func() { testutil.KillPid(dest) })
	if dest <= 1 || !testutil.Alive(dest) {
		t.Fatalf("destination pid %d not alive", dest)
	}
	if testutil.Alive(w.Pid) && twohosts.InNetns(w.Pid, h.NetnsPath("a")) {
		t.Errorf("source pid %d still alive on host a", w.Pid)
	}
	if !twohosts.InNetns(dest, h.NetnsPath("b")) {
		t.Errorf("restored tree is not in host b's network namespace")
	}
	if twohosts.Held(dest) {
		t.Errorf("restored tree is stopped or frozen")
	}
	first, err := testutil.ReadState(w.State)
	if err != nil {
		t.Fatal(err)
	}
	if first.Count < before.Count {
		t.Fatalf("counter went back from %d to %d: not the same process state", before.Count, first.Count)
	}
	if _, err := testutil.WaitCount(w.State, first.Count+10, 10*time.Second); err != nil {
		t.Fatalf("migrated workload does not count on: %v", err)
	}
	for _, k := range []string{"downtime", "total", "dump", "restore", "page_bytes", "wire_bytes"} {
		if r.Num(k) <= 0 {
			t.Errorf("report: %s = %v", k, r.Report[k])
		}
	}
	if r.Num("downtime") > r.Num("total") {
		t.Errorf("downtime %v > total %v", r.Report["downtime"], r.Report["total"])
	}
	return dest
}

func TestMigrateLiveTreeToOtherHost(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	srcCg := h.Name + "/src"
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Cgroup: srcCg, Args: []string{"--child", "--listen", "0.0.0.0:9000", "--mem", "32"}})
	// A memory limit on the source cgroup, which CRIU carries (soft mode
	// creates the destination cgroup and sets its properties).
	limit := "104857600"
	if err := os.WriteFile(filepath.Join("/sys/fs/cgroup/memory", srcCg, "memory.limit_in_bytes"), []byte(limit), 0o644); err != nil {
		t.Fatal(err)
	}
	before, err := h.Request("a", twohosts.AddrA+":9000", "GET")
	if err != nil {
		t.Fatalf("workload server on a: %v", err)
	}
	kids, _ := proc.Children(w.Pid)
	if len(kids) != 1 {
		t.Fatalf("workload has %d children, want 1", len(kids))
	}
	st, _ := testutil.ReadState(w.State)

	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	dest := assertRunsOnB(t, h, w, r, st)
	t.Logf("downtime %.3fs, total %.3fs, pages %.0f, wire %.0f", r.Num("downtime"), r.Num("total"), r.Num("page_bytes"), r.Num("wire_bytes"))
	if got := r.Str("freeze"); got != "ptrace" {
		t.Errorf("freeze = %q, want ptrace (the workload shares the root freezer cgroup with others)", got)
	}

	// Same process, same memory: the token it made at start, the data
	// it holds, now on b's address.
	after, err := h.Request("b", twohosts.AddrB+":9000", "GET")
	if err != nil {
		t.Fatalf("migrated server does not answer on b: %v", err)
	}
	if tok := strings.Fields(before)[1]; !strings.Contains(after, tok) {
		t.Errorf("server on b answered %q, want the token of %q", after, before)
	}
	if sum, err := h.Request("b", twohosts.AddrB+":9000", "SUM"); err != nil || !strings.HasPrefix(sum, "sum=ok") {
		t.Errorf("memory check on b: %q %v", sum, err)
	}
	if kids, _ := proc.Children(dest); len(kids) != 1 {
		t.Errorf("migrated tree has %d children, want 1", len(kids))
	}
	// Under the service's cgroup root, in its own cgroup, with the limit.
	want := "/" + h.Name + "/phaul-" + r.Str("id")
	for _, c := range twohosts.V1Controllers {
		if got := cgroupPath(t, dest, c); got != want {
			t.Errorf("%s cgroup = %q, want %q", c, got, want)
		}
	}
	t.Cleanup(func() {
		for _, c := range twohosts.V1Controllers {
			twohosts.RemoveCgroup(filepath.Join("/sys/fs/cgroup", c, h.Name))
		}
	})
	if got, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", want, "memory.limit_in_bytes")); strings.TrimSpace(string(got)) != limit {
		t.Errorf("memory limit on b = %q, want %s", got, limit)
	}
	// phaul status lists it as done, with its PIDs on both sides.
	status, code := h.Status(t, svc.Addr)
	if m := twohosts.Find(status, r.Str("id")); code != 0 || m == nil || m.State != "done" || m.Pid != dest || m.SourcePid != w.Pid ||
		m.Comm != "phaul-workload" || m.Ended == nil || m.SourceHost == "" {
		t.Errorf("phaul status (exit %d): %+v", code, m)
	}
	// Only CRIU's logs stay on the destination.
	var imgs []string
	for i := 0; i < 200; i++ { // the service cleans up right after Done
		if imgs, _ = filepath.Glob(filepath.Join(svc.WorkDir, r.Str("id"), "images", "*.img")); len(imgs) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(imgs) != 0 {
		t.Errorf("images left on the destination: %v", imgs)
	}
}

func TestMigratePlacesTreeSharingCRIUsCgroups(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	// This workload lives in the same cgroups as phaul and CRIU: CRIU
	// records none, and the service must place it under its root itself.
	w := h.StartWorkload(t, twohosts.WorkloadOptions{})
	st, _ := testutil.ReadState(w.State)
	// The source asks for another root than the service's default.
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--cgroup-root", "/"+h.Name+"/asked")
	dest := assertRunsOnB(t, h, w, r, st)
	t.Cleanup(func() {
		for _, c := range twohosts.V1Controllers {
			twohosts.RemoveCgroup(filepath.Join("/sys/fs/cgroup", c, h.Name))
		}
	})
	want := "/" + h.Name + "/asked" // exactly the root asked for
	for _, c := range []string{"memory", "pids"} {
		if got := cgroupPath(t, dest, c); got != want {
			t.Errorf("%s cgroup = %q, want %q", c, got, want)
		}
	}
}

// TestMigrateShellJobInPidns: a command started from a shell does not lead
// its session. phaul notices by itself; here the tree is also a PID
// namespace, which CRIU cannot dump with its session leader outside, so the
// checks must refuse it, say why and what to do, before anything is frozen.
func TestMigrateShellJobInPidns(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{ShellJob: true, Args: []string{"--child"}})
	if why := proc.ShellJobReason(w.Pid); why == "" {
		t.Fatal("the harness started a session leader, not a shell job")
	}
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	if r.ExitCode != 4 {
		t.Fatalf("exit %d, want 4 (permanent check failure): %s\n%s", r.ExitCode, r.Str("error"), r.Stderr)
	}
	if !r.Bool("shell_job") || !strings.Contains(r.Str("shell_job_reason"), "whose leader is not in the tree") {
		t.Errorf("report: shell_job=%v reason=%q, want it detected", r.Bool("shell_job"), r.Str("shell_job_reason"))
	}
	if msg := r.Str("error"); !strings.Contains(msg, "session") || !strings.Contains(msg, "setsid") {
		t.Errorf("error does not name the session check and the remedy: %s", msg)
	}
	assertUntouched(t, h, w)
	assertDestinationClean(t, h, svc, w)
}

// TestMigrateFreezesWithCgroup moves a tree that is alone in its freezer
// cgroup: CRIU freezes it with the cgroup rather than task by task.
func TestMigrateFreezesWithCgroup(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Cgroup: h.Name + "/src", Freezer: true, Args: []string{"--child"}})
	st, _ := testutil.ReadState(w.State)
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	assertRunsOnB(t, h, w, r, st)
	if got := r.Str("freeze"); got != "cgroup" {
		t.Errorf("freeze = %q, want cgroup", got)
	}
	if v := verdict(r, "session"); v["result"] != "pass" {
		t.Errorf("session check: %v", v)
	}
}

// TestMigrateFreezerCgroupStoppedTask: a tree alone in its freezer cgroup
// with a stopped task is frozen with ptrace instead: CRIU attaching to a
// stopped task in a frozen cgroup hangs for ever (uninterruptibly, the
// tree frozen). The stopped task stays stopped on the destination.
func TestMigrateFreezerCgroupStoppedTask(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Cgroup: h.Name + "/src", Freezer: true, Args: []string{"--child"}})
	kids, _ := proc.Children(w.Pid)
	if len(kids) == 0 {
		t.Fatal("the workload has no child")
	}
	if err := syscall.Kill(kids[0], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 500 && !twohosts.Stopped(kids[0]); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := h.Migrate(t, ctx, w.Pid, svc.Addr)
	if r.ExitCode != 0 {
		t.Fatalf("exit %d: %v\n%s", r.ExitCode, r.Report["error"], r.Stderr)
	}
	if got := r.Str("freeze"); got != "ptrace" {
		t.Errorf("freeze = %q, want ptrace", got)
	}
	dest := int(r.Num("dest_pid"))
	t.Cleanup(func() { testutil.KillPid(dest) })
	moved, _ := proc.Children(dest)
	if len(moved) == 0 || !twohosts.Stopped(moved[0]) {
		t.Errorf("the stopped child is not stopped on the destination: %v", moved)
	}
}

// verdict returns the report's verdict of one check.
func verdict(r *twohosts.Result, check string) map[string]any {
	vs, _ := r.Report["verdicts"].([]any)
	for _, v := range vs {
		if m, ok := v.(map[string]any); ok && m["check"] == check {
			return m
		}
	}
	return nil
}

// assertUntouched checks that a workload still runs on host a, unchanged
// and not stopped, after a failed migration.
func assertUntouched(t *testing.T, h *twohosts.Hosts, w *twohosts.Workload) {
	t.Helper()
	if !testutil.Alive(w.Pid) || !twohosts.InNetns(w.Pid, h.NetnsPath("a")) {
		t.Fatalf("source workload %d is gone", w.Pid)
	}
	if twohosts.Stopped(w.Pid) {
		t.Fatalf("source workload %d left stopped", w.Pid)
	}
	st, err := testutil.ReadState(w.State)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testutil.WaitCount(w.State, st.Count+10, 10*time.Second); err != nil {
		t.Fatalf("source workload does not count on: %v", err)
	}
}

// assertDestinationClean checks that the service kept nothing of a failed
// migration: no work directory, no restored process.
func assertDestinationClean(t *testing.T, h *twohosts.Hosts, svc *twohosts.Service, w *twohosts.Workload) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(svc.Migrations()) != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if m := svc.Migrations(); len(m) != 0 {
		t.Errorf("destination kept %v", m)
	}
	// No copy of the workload on b.
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == w.Pid {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), w.State) && twohosts.InNetns(pid, h.NetnsPath("b")) && testutil.Alive(pid) {
			t.Errorf("a copy of the workload runs on b as pid %d", pid)
		}
	}
}

func TestRestoreFailureRollsBack(t *testing.T) {
	h := twohosts.New(t)
	// A cgroup root below a file: CRIU cannot create the tree's cgroup.
	svc := h.StartService(t, "--cgroup-root", "/cgroup.procs")
	// Alone in its freezer cgroup: frozen by the kernel, and thawed again
	// when the migration fails.
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Cgroup: h.Name + "/src", Freezer: true, Args: []string{"--child"}})
	// The cgroups check sees it coming; skip it to make CRIU fail for
	// real after the freeze.
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--skip-check", "cgroups")
	if r.ExitCode != 1 {
		t.Fatalf("exit %d, want 1: %v\n%s", r.ExitCode, r.Report["error"], r.Stderr)
	}
	if got := r.Str("freeze"); got != "cgroup" {
		t.Errorf("freeze = %q, want cgroup", got)
	}
	msg := r.Str("error")
	if !strings.Contains(msg, "restore") || !strings.Contains(msg, "Error (criu/") || !strings.Contains(msg, "still runs on the source") {
		t.Errorf("error does not name the phase, CRIU's lines and the outcome: %s", msg)
	}
	assertUntouched(t, h, w)
	assertDestinationClean(t, h, svc, w)
	var skipped bool
	for _, v := range r.Report["verdicts"].([]any) {
		if m := v.(map[string]any); m["check"] == "cgroups" && m["result"] == "skipped" {
			skipped = true
		}
	}
	if !skipped {
		t.Errorf("the report does not show the skipped check: %v", r.Report["verdicts"])
	}
	// Without the skip, the checks refuse it before anything is frozen.
	r = h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	if r.ExitCode != 4 || !strings.Contains(r.Str("error"), "not a directory") {
		t.Errorf("checks: exit %d, %s", r.ExitCode, r.Str("error"))
	}
	assertUntouched(t, h, w)
}

func TestConnectionCutDuringPagesRollsBack(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--mem", "768"}})
	// Cut the link as soon as the dump starts: the pages are streaming.
	go func() {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if strings.Contains(svc.Log(), "phase=transfer") || strings.Contains(svc.Log(), "phase=checks") && pagesStarted(svc) {
				h.LinkDown(t)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--timeout", "20s")
	if r.ExitCode != 1 {
		t.Fatalf("exit %d, want 1: %v\n%s", r.ExitCode, r.Report["error"], r.Stderr)
	}
	t.Logf("failed as expected: %s", r.Str("error"))
	assertUntouched(t, h, w)
	assertDestinationClean(t, h, svc, w)
}

// pagesStarted reports whether the service has begun receiving pages:
// its migration directory has a pages image.
func pagesStarted(svc *twohosts.Service) bool {
	m, _ := filepath.Glob(filepath.Join(svc.WorkDir, "*", "images", "pages-*.img"))
	return len(m) > 0
}

func TestClientWithoutValidCertificateIsRefused(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{})
	// Certificates from another CA.
	other := filepath.Join(h.Dir, "other-tls")
	if out, err := h.Command("a", filepath.Join(h.Bin, "phaul"), "certs", other).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	h.TLS, other = other, h.TLS
	defer func() { h.TLS = other }()
	start := time.Now()
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	if r.ExitCode != 1 || !strings.Contains(r.Str("error"), "tls authentication failed") {
		t.Fatalf("exit %d, error %q", r.ExitCode, r.Str("error"))
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("refusal took %v", d)
	}
	assertUntouched(t, h, w)
	if m := svc.Migrations(); len(m) != 0 {
		t.Errorf("service made migration directories for an unauthenticated client: %v", m)
	}
	if !waitLog(svc, "connection refused") { // logged just after the client got its error
		t.Errorf("service did not log the refusal:\n%s", svc.Log())
	}
	if strings.Contains(svc.Log(), "phase=") {
		t.Errorf("service started a migration for an unauthenticated client:\n%s", svc.Log())
	}
}

func TestUnreachableDestinationFailsFast(t *testing.T) {
	h := twohosts.New(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{})
	start := time.Now()
	r := h.Migrate(t, context.Background(), w.Pid, twohosts.AddrB+":7071")
	if r.ExitCode != 1 || !strings.Contains(r.Str("error"), "is phaul-service running") {
		t.Fatalf("exit %d, error %q", r.ExitCode, r.Str("error"))
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v", d)
	}
	assertUntouched(t, h, w)
}

// TestSourceLostAfterRestoreKeepsStoppedCopy kills the source agent once
// the destination has restored the tree: the destination cannot know
// whether the source committed, so it must keep the stopped copy, in
// doubt, rather than kill what may be the only one.
func TestSourceLostAfterRestoreKeepsStoppedCopy(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--child"}})
	cmd := h.Command("a", filepath.Join(h.Bin, "phaul"), "migrate", "--tls-dir", h.TLS,
		"--work-dir", filepath.Join(h.Dir, "source"), strconv.Itoa(w.Pid), svc.Addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(svc.Log(), "restored, held") {
		if time.Now().After(deadline) {
			t.Fatalf("no restore:\n%s", svc.Log())
		}
		time.Sleep(time.Millisecond)
	}
	cmd.Process.Kill() // the source agent dies in the window
	cmd.Wait()

	var state struct {
		State string
		Pid   int
	}
	for time.Now().Before(deadline) {
		m := svc.Migrations()
		if len(m) == 1 {
			data, _ := os.ReadFile(filepath.Join(svc.WorkDir, m[0], "state.json"))
			if json.Unmarshal(data, &state) == nil && state.State == "in-doubt" {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if state.State != "in-doubt" {
		t.Fatalf("destination state %q, want in-doubt:\n%s", state.State, svc.Log())
	}
	t.Cleanup(func() { testutil.KillPid(state.Pid) })
	if !testutil.Alive(state.Pid) || !twohosts.Held(state.Pid) {
		t.Fatalf("destination copy %d not kept from running", state.Pid)
	}
	if !twohosts.InNetns(state.Pid, h.NetnsPath("b")) {
		t.Error("kept copy is not on b")
	}
	// On the source, CRIU lost its caller before the commit and resumed
	// the tree; if the commit got through first, the source copy is gone.
	// Either way there are never two running copies.
	// Its record says which: written undecided before the dump, commit
	// before CRIU may kill the tree.
	recs := migrate.PendingDecisions(filepath.Join(h.Dir, "source"))
	if len(recs) != 1 {
		t.Fatalf("the source's records: %+v; want one", recs)
	}
	sourceCommitted := recs[0].State != migrate.StateUndecided
	if testutil.Alive(w.Pid) {
		assertUntouched(t, h, w)
	} else {
		t.Log("the source had committed before it died: only the stopped copy on b is left")
		if !sourceCommitted {
			t.Fatal("the source tree is gone, and the source recorded no decision to commit")
		}
	}
	// The service records the state, then logs it.
	if !waitLog(svc, "in doubt") {
		t.Errorf("service did not log the doubt:\n%s", svc.Log())
	}
	// phaul status lists it as in doubt and says so by its exit status.
	st, code := h.Status(t, svc.Addr)
	if len(st.Migrations) != 1 || st.Migrations[0].State != "in-doubt" || st.Migrations[0].Pid != state.Pid || code != 3 {
		t.Errorf("phaul status (exit %d, want 3): %+v", code, st.Migrations)
	}
	id := st.Migrations[0].ID

	// A restart of the service forgets nothing: the copy stays stopped,
	// and the new service lists it in doubt.
	svc.Stop()
	if !testutil.Alive(state.Pid) || !twohosts.Held(state.Pid) {
		t.Fatalf("stopping the service touched the copy in doubt")
	}
	svc = h.StartService(t)
	if st, code := h.Status(t, svc.Addr); code != 3 || len(st.Migrations) != 1 || st.Migrations[0].ID != id {
		t.Fatalf("after a restart, phaul status (exit %d): %+v", code, st.Migrations)
	}

	// phaul resolve on the source host decides from the source's record
	// alone, even one the agent left undecided: commit if the source tree
	// is gone, abort if CRIU resumed it. Either way exactly one copy runs.
	out, err := h.Command("a", filepath.Join(h.Bin, "phaul"), "resolve", "--json", "--tls-dir", h.TLS,
		"--work-dir", filepath.Join(h.Dir, "source"), id).CombinedOutput()
	var res struct {
		State     string
		Pid       int
		DecidedBy string `json:"decided_by"`
	}
	if err != nil || json.Unmarshal(out, &res) != nil {
		t.Fatalf("phaul resolve: %v\n%s", err, out)
	}
	t.Logf("resolved: %+v", res)
	if !sourceCommitted && (res.State != "aborted" || !strings.Contains(res.DecidedBy, "never decided")) {
		t.Errorf("the agent died undecided: resolve said %+v, want aborted because the source never decided", res)
	}
	if testutil.Alive(w.Pid) {
		if res.State != "aborted" {
			t.Fatalf("the source runs, and resolve said %q: two copies", res.State)
		}
		if err := testutil.WaitGone(state.Pid, 10*time.Second); err != nil {
			t.Errorf("the aborted copy on b is still there: %v", err)
		}
		assertUntouched(t, h, w)
	} else {
		if res.State != "done" || res.Pid != state.Pid {
			t.Fatalf("the source is gone, and resolve said %+v", res)
		}
		before, _ := testutil.ReadState(w.State)
		if _, err := testutil.WaitCount(w.State, before.Count+10, 10*time.Second); err != nil || twohosts.Held(state.Pid) {
			t.Fatalf("the resumed copy on b does not count on: %v", err)
		}
	}
	if st, code := h.Status(t, svc.Addr); code != 0 {
		t.Errorf("still in doubt after resolve (exit %d): %+v", code, st.Migrations)
	}
	if d := migrate.PendingDecisions(filepath.Join(h.Dir, "source")); len(d) != 0 {
		t.Errorf("the source's record stays after resolve: %+v", d)
	}
}

// waitLog waits a little (3 s) for the service to log s.
func waitLog(svc *twohosts.Service, s string) bool { return waitLogFor(svc, s, 3*time.Second) }

// waitLogFor waits up to d for the service to log s.
func waitLogFor(svc *twohosts.Service, s string, d time.Duration) bool {
	for deadline := time.Now().Add(d); !strings.Contains(svc.Log(), s); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// TestLogsFollowOneMigrationAcrossHosts: with JSON logs on both sides
// (as under systemd), each side logs one line per phase carrying the same
// migration ID, so that an operator can follow a migration through both
// journals; the service's per-migration logs go to --log-dir.
func TestLogsFollowOneMigrationAcrossHosts(t *testing.T) {
	h := twohosts.New(t)
	logDir := filepath.Join(h.Dir, "logs")
	svc := h.StartService(t, "--log-format", "json", "--log-dir", logDir)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{})
	st, _ := testutil.ReadState(w.State)
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "-v", "--log-format", "json")
	assertRunsOnB(t, h, w, r, st)
	id := r.Str("id")
	phases := func(side, log string) []string {
		t.Helper()
		var out []string
		for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("%s logged a line that is not JSON: %q", side, line)
			}
			if m["msg"] == "phase" && m["migration"] == id {
				out = append(out, m["phase"].(string))
			} else if m["msg"] == "phase" {
				t.Errorf("%s: a phase line without the migration's ID: %q", side, line)
			}
		}
		return out
	}
	if got, want := strings.Join(phases("source", r.Stderr), " "), "checks connect checks dump transfer restore commit resume"; got != want {
		t.Errorf("source phases %q, want %q", got, want)
	}
	var dest string
	for i := 0; i < 100; i++ { // "migration done" comes right after Done
		if dest = strings.Join(phases("service", svc.Log()), " "); strings.HasSuffix(dest, "resume") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if want := "connect checks transfer restore commit resume"; dest != want {
		t.Errorf("service phases %q, want %q", dest, want)
	}
	if _, err := os.Stat(filepath.Join(logDir, id, "restore.log")); err != nil {
		t.Errorf("CRIU's restore log is not in --log-dir: %v", err)
	}
}

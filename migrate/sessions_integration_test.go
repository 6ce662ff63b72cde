package migrate_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/tty"
	"github.com/phaul/phaul/internal/twohosts"
)

// Real processes from real sessions: shell jobs, terminals from outside
// the tree, login-session cgroups and CRIU's cgroup modes, migrated for
// real between the two hosts.

// ptyHolder is a pty the test holds open, as an ssh server holds the pty
// of a login: it reads everything written to it.
type ptyHolder struct {
	mu  sync.Mutex
	out bytes.Buffer
}

func (p *ptyHolder) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// holdPty opens a pty and returns its slave, for the workload.
func holdPty(t *testing.T) (*os.File, *ptyHolder) {
	t.Helper()
	m, s, err := tty.Open()
	if err != nil {
		t.Fatal(err)
	}
	p := &ptyHolder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			p.mu.Lock()
			p.out.Write(buf[:n])
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { m.Close(); s.Close(); <-done })
	return s, p
}

var countLine = regexp.MustCompile(`count (\d+)`)

// lastCount is the last "count N" the workload (--echo) printed in text.
func lastCount(text string) int64 {
	all := countLine.FindAllStringSubmatch(text, -1)
	if len(all) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(all[len(all)-1][1], 10, 64)
	return n
}

// waitFileCount waits until the file at path shows a count above n.
func waitFileCount(t *testing.T, path string, n int64) {
	t.Helper()
	var last int64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		data, _ := os.ReadFile(path)
		if last = lastCount(string(data)); last > n {
			return
		}
	}
	t.Fatalf("%s: last count %d, want above %d: the migrated workload's output does not arrive there", path, last, n)
}

func ttyLogs(r *twohosts.Result) []string {
	var out []string
	l, _ := r.Report["tty_logs"].([]any)
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// TestMigrateShellJobWithTerminal moves a command started from a shell on
// a terminal (as from an ssh login): it does not lead its session, its
// output and controlling terminal are the shell's pty. phaul must see
// both by itself, and on the destination the workload writes on into a
// new pty whose output the service logs.
func TestMigrateShellJobWithTerminal(t *testing.T) {
	h := twohosts.New(t)
	// The tree is no PID namespace: on this one machine it can only get
	// its PIDs back in a PID namespace of the service's.
	svc := h.StartServiceInPidns(t)
	slave, term := holdPty(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{FromShell: true, Terminal: slave, Args: []string{"--echo"}})
	if why := proc.ShellJobReason(w.Pid); why == "" {
		t.Fatal("the harness started a session leader, not a shell job")
	}
	if lastCount(term.String()) == 0 {
		t.Fatalf("the workload does not write to its terminal: %q", term.String())
	}
	st, _ := testutil.ReadState(w.State)

	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	assertRunsOn(t, h, svc, w, r, st)
	if !r.Bool("shell_job") || r.Str("shell_job_reason") == "" {
		t.Errorf("report: shell_job=%v reason=%q, want it detected", r.Bool("shell_job"), r.Str("shell_job_reason"))
	}
	v := verdict(r, "terminals")
	if v["result"] != "warn" || !strings.Contains(v["detail"].(string), "controlling terminal") {
		t.Errorf("terminals verdict %v: want a warning about the controlling terminal", v)
	}
	logs := ttyLogs(r)
	if len(logs) != 1 || !strings.HasPrefix(logs[0], filepath.Join(svc.WorkDir, r.Str("id"))) {
		t.Fatalf("tty_logs %v: want one log in the migration's directory", logs)
	}
	after, _ := testutil.ReadState(w.State)
	waitFileCount(t, logs[0], after.Count)
	if old := lastCount(term.String()); old > after.Count {
		t.Errorf("the source's terminal got count %d after the migration (%d)", old, after.Count)
	}
}

// TestMigrateTerminalModes moves a workload writing to a pty the test holds
// open, with each --tty mode.
func TestMigrateTerminalModes(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	file := filepath.Join(h.Dir, "workload-tty.log")
	for _, tc := range []struct {
		mode string
		log  func(r *twohosts.Result) string // where the output must go
	}{
		{"pty", func(r *twohosts.Result) string { return filepath.Join(svc.WorkDir, r.Str("id"), "tty-0.log") }},
		{"file:" + file, func(*twohosts.Result) string { return file }},
		{"null", func(*twohosts.Result) string { return os.DevNull }},
	} {
		t.Run(strings.SplitN(tc.mode, ":", 2)[0], func(t *testing.T) {
			slave, _ := holdPty(t)
			w := h.StartWorkload(t, twohosts.WorkloadOptions{Terminal: slave, Args: []string{"--echo"}})
			st, _ := testutil.ReadState(w.State)
			r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--tty", tc.mode)
			assertRunsOnB(t, h, w, r, st)
			if v := verdict(r, "terminals"); v["result"] != "pass" || !strings.Contains(v["detail"].(string), "1 terminal") {
				t.Errorf("terminals verdict %v", v)
			}
			want := tc.log(r)
			if logs := ttyLogs(r); len(logs) != 1 || logs[0] != want {
				t.Fatalf("tty_logs %v, want [%s]", logs, want)
			}
			if want != os.DevNull {
				after, _ := testutil.ReadState(w.State)
				waitFileCount(t, want, after.Count)
			}
		})
	}
}

// TestMigrateLoginSessionCgroups moves a tree that lives in a login
// session's cgroups (user.slice/session-c2.scope in every hierarchy, with
// its child one level below): the destination puts it under its own
// cgroup root, keeps the child's sub-path, and creates no session path.
func TestMigrateLoginSessionCgroups(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	ctrls := append([]string{"systemd"}, twohosts.V1Controllers...)
	for _, c := range ctrls {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c, "user.slice")); err != nil {
			t.Cleanup(func() { twohosts.RemoveCgroup(filepath.Join("/sys/fs/cgroup", c, "user.slice")) })
		}
	}
	scope := "user.slice/session-c2.scope"
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Cgroup: scope, Controllers: ctrls, ChildCgroup: "worker", Args: []string{"--child"}})
	st, _ := testutil.ReadState(w.State)
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	dest := assertRunsOnB(t, h, w, r, st)
	t.Cleanup(func() {
		for _, c := range ctrls {
			twohosts.RemoveCgroup(filepath.Join("/sys/fs/cgroup", c, h.Name))
		}
	})
	want := "/" + h.Name + "/phaul-" + r.Str("id")
	if d := verdict(r, "cgroups")["detail"].(string); !strings.Contains(d, "memory:/"+scope+" -> "+want) {
		t.Errorf("the cgroups check does not show the mapping of the session's cgroup: %s", d)
	}
	kids, _ := proc.Children(dest)
	if len(kids) != 1 {
		t.Fatalf("migrated tree has %d children, want 1", len(kids))
	}
	for _, c := range ctrls {
		key := c
		if c == "systemd" {
			key = "name=systemd"
		}
		if got := cgroupPath(t, dest, key); got != want {
			t.Errorf("%s: root in %q, want %q", key, got, want)
		}
		if got := cgroupPath(t, kids[0], key); got != want+"/worker" {
			t.Errorf("%s: child in %q, want %q", key, got, want+"/worker")
		}
		filepath.Walk(filepath.Join("/sys/fs/cgroup", c, h.Name), func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() && (strings.Contains(p, "user.slice") || strings.Contains(p, "session-")) {
				t.Errorf("a session path was created on the destination: %s", p)
			}
			return nil
		})
	}
}

// TestMigrateCgroupModes moves a tree with a memory limit under each of
// CRIU's cgroup modes (--manage-cgroups, chosen per migration), and
// checks where it lands and whether the limit came along, as CRIU
// documents each mode; strict with an existing cgroup is refused by the
// checks, before anything is frozen.
func TestMigrateCgroupModes(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	const limit = "104857600"
	t.Cleanup(func() {
		for _, c := range twohosts.V1Controllers {
			twohosts.RemoveCgroup(filepath.Join("/sys/fs/cgroup", c, h.Name))
		}
	})
	start := func(t *testing.T, name string) *twohosts.Workload {
		t.Helper()
		cg := h.Name + "/src-" + name
		w := h.StartWorkload(t, twohosts.WorkloadOptions{Cgroup: cg})
		if err := os.WriteFile(filepath.Join("/sys/fs/cgroup/memory", cg, "memory.limit_in_bytes"), []byte(limit), 0o644); err != nil {
			t.Fatal(err)
		}
		return w
	}
	for _, tc := range []struct {
		mode   string
		placed bool   // under the service's root, in a cgroup of its own
		limit  bool   // the source's memory limit there
		hold   string // how the destination held the tree until the commit
	}{
		{"ignore", false, false, "stopped"}, // CRIU leaves cgroups alone: the service's own
		{"none", true, false, "stopped"},    // CRIU restores no properties, freezer.state neither
		{"props", true, true, "frozen"},
		{"soft", true, true, "frozen"},
		{"full", true, true, "frozen"},
		{"strict", true, true, "frozen"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			w := start(t, tc.mode)
			st, _ := testutil.ReadState(w.State)
			r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--manage-cgroups", tc.mode)
			dest := assertRunsOnB(t, h, w, r, st)
			if r.Str("hold") != tc.hold {
				t.Errorf("held %q until the commit, want %q", r.Str("hold"), tc.hold)
			}
			want := "/" + h.Name + "/phaul-" + r.Str("id")
			got := cgroupPath(t, dest, "memory")
			if placed := got == want; placed != tc.placed {
				t.Errorf("memory cgroup %q: placed under the root = %v, want %v", got, placed, tc.placed)
			}
			data, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", got, "memory.limit_in_bytes"))
			if err != nil {
				t.Fatal(err)
			}
			if has := strings.TrimSpace(string(data)) == limit; has != tc.limit {
				t.Errorf("memory limit %s in %s: carried = %v, want %v", strings.TrimSpace(string(data)), got, has, tc.limit)
			}
			// Only the tree's own cgroup: none of the rest of a hierarchy
			// the tree shared at its top (blkio here) was copied below it.
			for _, c := range append([]string{"blkio"}, twohosts.V1Controllers...) {
				subs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", c, want, "*", "cgroup.procs"))
				if len(subs) > 0 {
					t.Errorf("%s: cgroups created below the tree's: %v", c, subs)
				}
			}
			if !strings.Contains(verdict(r, "cgroups")["detail"].(string), "("+tc.mode+" mode)") {
				t.Errorf("the cgroups check does not name the mode: %v", verdict(r, "cgroups"))
			}
		})
	}
	t.Run("strict-existing", func(t *testing.T) {
		w := start(t, "strict-existing")
		root := "/" + h.Name + "/existing"
		for _, c := range twohosts.V1Controllers {
			if err := os.MkdirAll(filepath.Join("/sys/fs/cgroup", c, root), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--manage-cgroups", "strict", "--cgroup-root", root)
		if r.ExitCode != 4 {
			t.Fatalf("exit %d, want 4 (the checks refuse): %s\n%s", r.ExitCode, r.Str("error"), r.Stderr)
		}
		if v := verdict(r, "cgroups"); v["result"] != "fail" || !strings.Contains(v["detail"].(string), "strict") {
			t.Errorf("cgroups verdict %v: want a failure naming strict mode", v)
		}
		assertUntouched(t, h, w)
		if _, err := os.Stat(filepath.Join(svc.WorkDir, r.Str("id"))); err == nil {
			t.Errorf("the destination made a directory for a migration its checks refused")
		}
	})
}

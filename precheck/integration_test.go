package precheck_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/twohosts"
	"github.com/phaul/phaul/precheck"
)

// Each check's real failing case, between two network-namespace hosts,
// with the destination's view of the filesystem changed in its own mount
// namespace where needed. Every case also shows that nothing was frozen.

type checkResult struct {
	Outcome  string
	Verdicts []struct {
		Check, Result, Detail string
		Transient             bool
		Items                 []string
	}
	Seconds float64
	Error   string
	exit    int
}

func runCheck(t *testing.T, h *twohosts.Hosts, pid int, addr string, flags ...string) *checkResult {
	t.Helper()
	args := append([]string{filepath.Join(h.Bin, "phaul"), "check", "--json", "--tls-dir", h.TLS}, flags...)
	args = append(args, strconv.Itoa(pid), addr)
	out, _, code := twohosts.Run(t, h.Command("a", args...))
	r := &checkResult{exit: code}
	if err := json.Unmarshal(out, r); err != nil {
		t.Fatalf("phaul check --json: %v\n%s", err, out)
	}
	return r
}

// verdict returns the verdict of one check, failing the test if absent.
func (r *checkResult) verdict(t *testing.T, check string) (result string, transient bool, text string) {
	t.Helper()
	for _, v := range r.Verdicts {
		if v.Check == check {
			return v.Result, v.Transient, v.Detail + " | " + strings.Join(v.Items, " | ")
		}
	}
	t.Fatalf("no %s verdict in %+v", check, r)
	return
}

// assertRefused checks a failing check: its verdict, class, exit status
// and message, and that the workload was never frozen.
func assertRefused(t *testing.T, r *checkResult, w *twohosts.Workload, check string, transient bool, want ...string) {
	t.Helper()
	res, tr, text := r.verdict(t, check)
	wantExit, wantOutcome := 4, "permanent"
	if transient {
		wantExit, wantOutcome = 5, "transient"
	}
	if res != "fail" || tr != transient || r.exit != wantExit || r.Outcome != wantOutcome {
		t.Errorf("%s: result %s transient %v, exit %d, outcome %s; want fail/%v, exit %d, %s (%s)", check, res, tr, r.exit, r.Outcome, transient, wantExit, wantOutcome, text)
	}
	for _, s := range want {
		if !strings.Contains(text, s) {
			t.Errorf("%s verdict does not say %q: %s", check, s, text)
		}
	}
	assertNeverFrozen(t, w)
}

func assertNeverFrozen(t *testing.T, w *twohosts.Workload) {
	t.Helper()
	if twohosts.Stopped(w.Pid) || !testutil.Alive(w.Pid) {
		t.Fatalf("workload %d stopped or gone", w.Pid)
	}
	st, _ := testutil.ReadState(w.State)
	if _, err := testutil.WaitCount(w.State, st.Count+5, 5*time.Second); err != nil {
		t.Fatalf("workload does not count on: %v", err)
	}
}

func TestChecksPassForRealWorkload(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	// A dynamically linked program with several libraries, plus the
	// workload's server (TCP on 0.0.0.0) in the same test.
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--listen", "0.0.0.0:9000"}})
	r := runCheck(t, h, w.Pid, svc.Addr)
	if r.exit != 0 || r.Outcome != "ok" {
		t.Fatalf("exit %d outcome %s: %+v", r.exit, r.Outcome, r)
	}
	// One verdict per check, but postcopy: it runs only for --postcopy.
	var got []string
	for _, v := range r.Verdicts {
		got = append(got, v.Check)
	}
	want := slices.DeleteFunc(slices.Clone(precheck.Names), func(n string) bool { return n == "postcopy" })
	if !slices.Equal(got, want) {
		t.Errorf("verdicts of %v, want one per check %v: %+v", got, want, r.Verdicts)
	}
	// A dynamic program: bash with its libraries, in the same kind of tree.
	pid := h.StartProcess(t, "bash", "-c", "while sleep 1; do :; done")
	start := time.Now()
	r = runCheck(t, h, pid, svc.Addr)
	took := time.Since(start)
	if r.exit != 0 {
		t.Fatalf("dynamic program: exit %d: %+v", r.exit, r)
	}
	_, _, files := r.verdict(t, "files")
	if !strings.Contains(files, "all ") {
		t.Errorf("files: %s", files)
	}
	if took > time.Second {
		t.Errorf("checking a dynamically linked program took %v, want well under a second", took)
	}
	t.Logf("checked in %v: %s", took, files)
}

func TestCheckFilesDifferentBinary(t *testing.T) {
	h := twohosts.New(t)
	// The destination sees another binary at the workload's path: same
	// size, one byte changed.
	changed := filepath.Join(h.Dir, "other-workload")
	data, err := os.ReadFile(filepath.Join(h.Bin, "phaul-workload"))
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(changed, data, 0o755); err != nil {
		t.Fatal(err)
	}
	svc := h.StartServiceWith(t, []string{"mount --bind " + changed + " " + filepath.Join(h.Bin, "phaul-workload")})
	w := h.StartWorkload(t, twohosts.WorkloadOptions{})
	r := runCheck(t, h, w.Pid, svc.Addr)
	assertRefused(t, r, w, "files", false, filepath.Join(h.Bin, "phaul-workload"), "different content")
}

func TestCheckFilesMissingLibrary(t *testing.T) {
	h := twohosts.New(t)
	libc := "/usr/lib/x86_64-linux-gnu/libc.so.6"
	if _, err := os.Stat(libc); err != nil {
		testutil.SkipOrFail(t, "no %s here", libc)
	}
	// The destination has no libc: an empty directory over the library
	// directory (phaul-service is static; CRIU brings its own libraries).
	svc := h.StartServiceWith(t, []string{"mount -t tmpfs none /usr/lib/x86_64-linux-gnu"})
	pid := h.StartProcess(t, "sleep", "300")
	r := runCheck(t, h, pid, svc.Addr)
	res, _, text := r.verdict(t, "files")
	if res != "fail" || r.exit != 4 || !strings.Contains(text, libc+" (map): missing here") {
		t.Errorf("files: %s, exit %d: %s", res, r.exit, text)
	}
}

// TestCheckFilesWrittenKeptOpenMissing: a file the tree keeps open for
// writing (a shell's stdout appended to a log) that the destination does
// not have fails the files check: the destination leaves it to the
// source, which sees that the tree still holds it.
func TestCheckFilesWrittenKeptOpenMissing(t *testing.T) {
	h := twohosts.New(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "out.log")
	svc := h.StartServiceWith(t, []string{"mount -t tmpfs none " + dir})
	pid := h.StartProcess(t, "sh", "-c", "exec >>"+log+"; while :; do echo x; sleep 0.2; done")
	r := runCheck(t, h, pid, svc.Addr, "--files=check")
	res, tr, text := r.verdict(t, "files")
	if res != "fail" || tr || r.exit != 4 || !strings.Contains(text, log+" (open): missing here: the tree keeps it open for writing") {
		t.Errorf("files: %s (transient %v), exit %d: %s", res, tr, r.exit, text)
	}
	// Carried by default: the check says so.
	r = runCheck(t, h, pid, svc.Addr)
	res, _, text = r.verdict(t, "files")
	if res != "pass" || r.exit != 0 || !strings.Contains(text, log+", which the tree keeps open for writing, will be carried after the dump") || !strings.Contains(text, log+": missing here, carried after the dump") {
		t.Errorf("files, carried: %s, exit %d: %s", res, r.exit, text)
	}
}

func TestCheckModuleMissing(t *testing.T) {
	h := twohosts.New(t)
	// This kernel has no /proc/modules (everything is built in), so the
	// destination's kernel is faked where it says what it supports: a
	// /proc/filesystems without ext4, the filesystem the tree's files
	// live on.
	if fs := fsOf(t, h.Bin); fs != "ext4" {
		testutil.SkipOrFail(t, "the binaries are on %s here, the test fakes ext4 away", fs)
	}
	fake := filepath.Join(h.Dir, "filesystems")
	real, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, l := range strings.Split(string(real), "\n") {
		if strings.TrimSpace(l) != "ext4" && l != "" {
			kept = append(kept, l)
		}
	}
	os.WriteFile(fake, []byte(strings.Join(kept, "\n")+"\n"), 0o644)
	svc := h.StartServiceWith(t, []string{"mount --bind " + fake + " /proc/filesystems"})
	w := h.StartWorkload(t, twohosts.WorkloadOptions{})
	r := runCheck(t, h, w.Pid, svc.Addr)
	assertRefused(t, r, w, "modules", false, "fs ext4", "not in this kernel")
}

// fsOf returns the filesystem type of the mount holding path.
func fsOf(t *testing.T, path string) string {
	out, err := exec.Command("findmnt", "-n", "-o", "FSTYPE", "-T", path).Output()
	if err != nil {
		t.Fatalf("findmnt: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func TestCheckCPUFeatureMissing(t *testing.T) {
	h := twohosts.New(t)
	// The destination's CPU lacks a feature the source's has: its
	// /proc/cpuinfo without the first flag.
	real, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	var removed string
	var lines []string
	for _, l := range strings.Split(string(real), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "flags" {
			f := strings.Fields(v)
			removed = f[len(f)-1]
			l = k + ": " + strings.Join(f[:len(f)-1], " ")
		}
		lines = append(lines, l)
	}
	fake := filepath.Join(h.Dir, "cpuinfo")
	os.WriteFile(fake, []byte(strings.Join(lines, "\n")), 0o644)
	svc := h.StartServiceWith(t, []string{"mount --bind " + fake + " /proc/cpuinfo"})
	w := h.StartWorkload(t, twohosts.WorkloadOptions{})
	r := runCheck(t, h, w.Pid, svc.Addr)
	assertRefused(t, r, w, "cpu", false, "missing: "+removed)
}

func TestCheckListenerOnSourceAddress(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--listen", twohosts.AddrA + ":9000"}})
	r := runCheck(t, h, w.Pid, svc.Addr)
	assertRefused(t, r, w, "network", false, twohosts.AddrA+":9000", "does not have", "0.0.0.0")
	// phaul migrate stops on the same check, before freezing anything.
	m := h.Migrate(t, context.Background(), w.Pid, svc.Addr)
	if m.ExitCode != 4 || !strings.Contains(m.Str("error"), "network") {
		t.Errorf("migrate: exit %d, %s", m.ExitCode, m.Str("error"))
	}
	if dumps, _ := filepath.Glob(filepath.Join(h.Dir, "source", "*")); len(dumps) != 0 {
		t.Errorf("migrate started a dump: %v", dumps)
	}
	assertNeverFrozen(t, w)
	// --skip-check lets it through, with a warning in the report; the
	// migration then fails in CRIU after the freeze, and rolls back.
	m = h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--skip-check", "network")
	if m.ExitCode != 1 || !strings.Contains(m.Str("error"), "Cannot assign requested address") {
		t.Errorf("migrate --skip-check network: exit %d, %s", m.ExitCode, m.Str("error"))
	}
	assertNeverFrozenAfter(t, w)
}

// assertNeverFrozenAfter: the workload runs again after a rolled-back
// migration.
func assertNeverFrozenAfter(t *testing.T, w *twohosts.Workload) {
	t.Helper()
	assertNeverFrozen(t, w)
}

func TestCheckStrictCgroupExists(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t, "--manage-cgroups", "strict")
	root := "/" + h.Name + "/exists"
	for _, c := range twohosts.V1Controllers {
		if err := os.MkdirAll(filepath.Join("/sys/fs/cgroup", c, root), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Cgroup: h.Name + "/src"})
	r := runCheck(t, h, w.Pid, svc.Addr, "--cgroup-root", root)
	assertRefused(t, r, w, "cgroups", false, "strict mode", "memory:"+root)
}

func TestCheckTransientSynSent(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	// A SYN routed through host b into a blackhole is dropped without an
	// answer (a host that does not forward would answer ICMP unreachable,
	// and the connection would fail), so the workload's connection stays
	// in SYN_SENT.
	for _, c := range []struct {
		host string
		argv []string
	}{
		{"a", []string{"ip", "route", "add", "10.88.0.0/24", "via", twohosts.AddrB}},
		{"b", []string{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"}},
		{"b", []string{"ip", "route", "add", "blackhole", "10.88.0.0/24"}},
	} {
		if out, err := h.Command(c.host, c.argv...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c.argv, err, out)
		}
	}
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--connect", "10.88.0.1:80"}})
	time.Sleep(300 * time.Millisecond)
	r := runCheck(t, h, w.Pid, svc.Addr)
	assertRefused(t, r, w, "transient", true, "SYN_SENT", "10.88.0.1:80")
	// phaul migrate --retry-transient retries, then gives up with the
	// transient status, having frozen nothing.
	m := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--retry-transient", "1", "-v")
	if m.ExitCode != 5 || !strings.Contains(m.Stderr, "retrying") {
		t.Errorf("migrate --retry-transient 1: exit %d, error %s, stderr:\n%s", m.ExitCode, m.Str("error"), m.Stderr)
	}
	assertNeverFrozen(t, w)
}

// TestCheckProcfs: a tree in a PID namespace without a /proc of its own
// needs CRIU to mount one in its root's working directory. The check
// passes where that works and refuses, before freezing, a directory where
// it cannot: a proc.crtools already there (transient: another CRIU may
// be at it; the remedy names the rmdir) or a read-only mount.
func TestCheckProcfs(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	inDir := func(dir string) []string { return []string{"sh", "-c", `cd "$0" && exec "$@"`, dir} }

	t.Run("own /proc", func(t *testing.T) {
		w := h.StartWorkload(t, twohosts.WorkloadOptions{Wrap: []string{"unshare", "-m", "--mount-proc"}})
		res, _, text := runCheck(t, h, w.Pid, svc.Addr).verdict(t, "procfs")
		if res != "pass" || !strings.Contains(text, "uses the /proc the tree sees") {
			t.Errorf("procfs: %s: %s", res, text)
		}
	})
	t.Run("mounted in a working directory", func(t *testing.T) {
		dir := t.TempDir()
		w := h.StartWorkload(t, twohosts.WorkloadOptions{Wrap: inDir(dir)})
		res, _, text := runCheck(t, h, w.Pid, svc.Addr).verdict(t, "procfs")
		if res != "pass" || !strings.Contains(text, filepath.Join(dir, "proc.crtools")) {
			t.Errorf("procfs: %s: %s", res, text)
		}
	})
	t.Run("proc.crtools left there", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "proc.crtools"), 0o700); err != nil {
			t.Fatal(err)
		}
		w := h.StartWorkload(t, twohosts.WorkloadOptions{Wrap: inDir(dir)})
		assertRefused(t, runCheck(t, h, w.Pid, svc.Addr), w, "procfs", true, "already there", "rmdir "+filepath.Join(dir, "proc.crtools"))
	})
	t.Run("read-only working directory", func(t *testing.T) {
		dir := t.TempDir()
		if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
		if err := syscall.Mount("", dir, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			t.Fatal(err)
		}
		w := h.StartWorkload(t, twohosts.WorkloadOptions{Wrap: inDir(dir)})
		assertRefused(t, runCheck(t, h, w.Pid, svc.Addr), w, "procfs", false, "read-only", "--mount-proc")
	})
}

// Package twohosts is the test harness for real migrations: two "hosts"
// on one machine as network namespaces joined by a veth pair (made by
// scripts/two-hosts.sh), phaul-service running in one, workloads in their
// own PID namespace in the other, and the real binaries between them.
package twohosts

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/cgroups"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/migrate"
)

// Addresses of the two hosts (they exist only inside the namespaces).
const (
	AddrA = "10.77.0.1"
	AddrB = "10.77.0.2"
)

// Hosts is a pair of network-namespace hosts and the binaries to run.
type Hosts struct {
	Name string // netns NAME-a and NAME-b
	Bin  string // directory with phaul, phaul-service, phaul-workload
	TLS  string // certificates from `phaul certs`
	Dir  string // scratch directory of the test
}

// repoRoot finds the module's root from this file's location.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// New creates the two hosts (removed when the test ends) and a TLS
// directory.
func New(t testing.TB) *Hosts {
	t.Helper()
	testutil.CRIU(t)
	var b [3]byte
	rand.Read(b[:])
	h := &Hosts{Name: "ph" + hex.EncodeToString(b[:]), Bin: testutil.Binaries(t), Dir: t.TempDir()}
	script := filepath.Join(repoRoot(), "scripts", "two-hosts.sh")
	if out, err := exec.Command(script, "up", h.Name).CombinedOutput(); err != nil {
		t.Fatalf("two-hosts up: %v\n%s", err, out)
	}
	// Registered first, so run last: whatever the test left in the two
	// hosts is killed, then the test's cgroups are removed.
	t.Cleanup(func() {
		if out, err := exec.Command(script, "down", h.Name).CombinedOutput(); err != nil {
			t.Logf("two-hosts down: %v\n%s", err, out)
		}
		h.removeCgroups(t)
	})
	h.TLS = filepath.Join(h.Dir, "tls")
	if out, err := exec.Command(filepath.Join(h.Bin, "phaul"), "certs", h.TLS).CombinedOutput(); err != nil {
		t.Fatalf("phaul certs: %v\n%s", err, out)
	}
	return h
}

// removeCgroups removes the cgroups named after the test (the source's
// and the service's root) in every v1 hierarchy, retrying while killed
// tasks are leaving them.
func (h *Hosts) removeCgroups(t testing.TB) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", h.Name))
	dirs2, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", "*", "phaul-*"))
	for _, d := range dirs2 {
		if strings.Contains(d, "/"+h.Name) {
			dirs = append(dirs, d)
		}
	}
	for _, d := range dirs {
		deadline := time.Now().Add(10 * time.Second)
		for {
			RemoveCgroup(d)
			if _, err := os.Stat(d); err != nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := os.Stat(d); err == nil {
			t.Logf("could not remove cgroup %s", d)
		}
	}
}

// Link is host a's or b's interface (on the switch).
func (h *Hosts) Link(host string) string { return h.Name[:min(8, len(h.Name))] + "-v" + host }

// Switch is the client's interface: the bridge the hosts plug into.
func (h *Hosts) Switch() string { return h.Name[:min(8, len(h.Name))] + "-sw" }

// NetnsPath is the network namespace file of host "a" or "b".
func (h *Hosts) NetnsPath(host string) string { return "/run/netns/" + h.Name + "-" + host }

// Command runs argv on host "a" or "b".
func (h *Hosts) Command(host string, argv ...string) *exec.Cmd {
	return h.CommandContext(context.Background(), host, argv...)
}

// CommandContext runs argv on host "a" or "b" until ctx ends.
func (h *Hosts) CommandContext(ctx context.Context, host string, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + h.NetnsPath(host)}, argv...)...)
}

// LinkDown takes host a's end of the veth pair down: the network between
// the hosts is cut without either side being told.
func (h *Hosts) LinkDown(t testing.TB) { h.setLink(t, "down") }

// LinkUp brings it back.
func (h *Hosts) LinkUp(t testing.TB) { h.setLink(t, "up") }

func (h *Hosts) setLink(t testing.TB, state string) {
	t.Helper()
	if out, err := h.Command("a", "ip", "link", "set", "dev", h.Link("a"), state).CombinedOutput(); err != nil {
		t.Fatalf("link %s: %v\n%s", state, err, out)
	}
}

// Service is a phaul-service running on host b.
type Service struct {
	Cmd     *exec.Cmd
	Addr    string
	WorkDir string
	log     *lockedBuffer
	pidns   bool // the init of a PID namespace of its own
	stop    func()
	kill    func()
	stopped sync.Once
}

// Stop stops the service with SIGTERM (and checks that it exits cleanly);
// it is also done when the test ends. Restored trees outlive it.
func (s *Service) Stop() { s.stopped.Do(s.stop) }

// Kill kills the service with SIGKILL, as a crash would.
func (s *Service) Kill() { s.stopped.Do(s.kill) }

// Copies lists the processes of workload w (its root: the process given
// its state file) that run, stopped or not, on host ("a" or "b").
func (h *Hosts) Copies(w *Workload, host string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(cmd), "\x00")
		if len(args) < 3 || filepath.Base(args[0]) != "phaul-workload" || args[1] != "--state" || args[2] != w.State {
			continue
		}
		if st, err := proc.ReadStat(pid); err != nil || st.State == 'Z' || st.State == 'X' {
			continue
		}
		if InNetns(pid, h.NetnsPath(host)) {
			out = append(out, pid)
		}
	}
	return out
}

// StartService runs phaul-service on host b with extra flags and waits
// until it listens. It is stopped (SIGTERM, then SIGKILL) when the test
// ends.
func (h *Hosts) StartService(t testing.TB, extra ...string) *Service {
	t.Helper()
	return h.StartServiceWith(t, nil, extra...)
}

// StartServiceWith is StartService with the service in a mount namespace
// of its own, where the shell commands setup run first: the destination
// then sees a different filesystem (another binary, a missing library, a
// fake /proc/cpuinfo).
func (h *Hosts) StartServiceWith(t testing.TB, setup []string, extra ...string) *Service {
	t.Helper()
	var prefix []string
	if len(setup) > 0 {
		prefix = []string{"unshare", "-m", "--propagation", "private", "sh", "-ec", strings.Join(setup, "\n") + "\nexec \"$@\"", "sh"}
	}
	return h.startService(t, prefix, extra)
}

func (h *Hosts) startService(t testing.TB, prefix, extra []string) *Service {
	t.Helper()
	s := &Service{Addr: AddrB + ":7070", WorkDir: filepath.Join(h.Dir, "service"), log: &lockedBuffer{}, pidns: len(prefix) > 1 && prefix[1] == "-p"}
	args := append([]string{filepath.Join(h.Bin, "phaul-service"), "--config", "", "--listen", s.Addr, "--tls-dir", h.TLS,
		"--work-dir", s.WorkDir, "--cgroup-root", "/" + h.Name, "--timeout", "30s"}, extra...)
	args = append(prefix, args...)
	s.Cmd = h.Command("b", args...)
	pr, pw := io.Pipe()
	s.Cmd.Stderr = pw
	s.Cmd.Stdout = pw
	if err := s.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			s.log.WriteLine(sc.Text())
			if line := sc.Text(); strings.Contains(line, "msg=listening") || strings.Contains(line, `"msg":"listening"`) {
				once.Do(func() { close(listening) })
			}
		}
	}()
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = s.Cmd.Wait(); pw.Close(); close(exited) }()
	s.stop = func() {
		// SIGTERM stops the service cleanly (exit 0) once the
		// migrations in flight are done. In a PID namespace, it is
		// unshare's child; unshare then exits with its status.
		target := s.Cmd.Process.Pid
		if kids, _ := proc.Children(target); s.pidns && len(kids) > 0 {
			target = kids[0]
		}
		syscall.Kill(target, syscall.SIGTERM)
		select {
		case <-exited:
			if waitErr != nil {
				t.Errorf("phaul-service after SIGTERM: %v", waitErr)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("phaul-service did not stop on SIGTERM")
			s.Cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("phaul-service log:\n%s", s.Log())
		}
	}
	s.kill = func() {
		target := s.Cmd.Process.Pid
		if kids, _ := proc.Children(target); s.pidns && len(kids) > 0 {
			target = kids[0]
		}
		syscall.Kill(target, syscall.SIGKILL)
		<-exited
	}
	t.Cleanup(func() { s.Stop() })
	select {
	case <-listening:
	case <-exited:
		t.Fatalf("phaul-service exited:\n%s", s.Log())
	case <-time.After(20 * time.Second):
		t.Fatalf("phaul-service did not listen:\n%s", s.Log())
	}
	return s
}

// StartServiceInPidns is StartService with the service as the init of a
// PID namespace (and a mount namespace with its own /proc) of its own:
// trees restored there get PIDs of that namespace, so that a tree that is
// not a PID namespace itself can be restored on this machine with the PIDs
// it had on the source. Service.HostPid translates its PIDs.
func (h *Hosts) StartServiceInPidns(t testing.TB, extra ...string) *Service {
	t.Helper()
	return h.startService(t, []string{"unshare", "-p", "-f", "-m", "--mount-proc", "--propagation", "private"}, extra)
}

// Pid is the host PID of phaul-service itself (in a PID namespace of its
// own, unshare's child), for nsenter; 0 if it is not running.
func (s *Service) Pid() int {
	if !s.pidns {
		return s.Cmd.Process.Pid
	}
	kids, _ := proc.Children(s.Cmd.Process.Pid)
	if len(kids) == 0 {
		return 0
	}
	return kids[0]
}

// HostPid is the PID, in this test's PID namespace, of the task that has
// pid in the service's PID namespace (0 if none). For a service in no PID
// namespace of its own, pid itself.
func (s *Service) HostPid(pid int) int {
	if !s.pidns {
		return pid
	}
	init := s.Pid()
	if init == 0 {
		return 0
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", init))
	if err != nil {
		return 0
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if n, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", p)); n != ns {
			continue
		}
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "NSpid:" && f[len(f)-1] == strconv.Itoa(pid) {
				return p
			}
		}
	}
	return 0
}

// Log is what the service logged so far.
func (s *Service) Log() string { return s.log.String() }

// Migrations lists the migration directories in the service's work dir.
func (s *Service) Migrations() []string {
	entries, _ := os.ReadDir(s.WorkDir)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// Workload is an internal/workload process on host a, in its own PID
// namespace (so that its PIDs are free for the restore on this machine).
type Workload struct {
	Cmd   *exec.Cmd
	Pid   int    // host PID of the workload (the init of its PID namespace)
	State string // its counter file
}

// WorkloadOptions configure StartWorkload.
type WorkloadOptions struct {
	Args   []string // workload flags (--child, --listen, --mem ...)
	Cgroup string   // if set, start it in this cgroup (memory, cpu, cpuacct, pids), created for the test
	// Freezer puts its tree alone in the freezer cgroup Cgroup (needs
	// Cgroup): phaul then freezes it with the cgroup.
	Freezer bool
	// ShellJob starts it as a shell would: in the session and process
	// group of its parent (unshare), not leading its own.
	ShellJob bool
	// FromShell starts it the way a command typed in a shell runs: a
	// child of `sh -c 'CMD & wait'`, which leads the session, and
	// without a PID namespace of its own (restoring it on this machine
	// needs a service in a PID namespace of its own:
	// StartServiceInPidns).
	FromShell bool
	// HostPidns starts it leading a session of its own (setsid) but in
	// this host's PID namespace, as a daemon started at boot is: its
	// restore needs its PIDs free on the destination.
	HostPidns bool
	// Terminal, if set, is its stdin, stdout and stderr; with FromShell
	// also the session's controlling terminal.
	Terminal *os.File
	// Controllers are the v1 hierarchies (directories of
	// /sys/fs/cgroup) Cgroup is made in; default V1Controllers.
	Controllers []string
	// ChildCgroup moves the workload's child (--child) to this cgroup
	// below Cgroup, in every one of Controllers.
	ChildCgroup string
	// Wrap runs the workload through this command (setpriv ...).
	Wrap []string
}

// V1Controllers the harness places a workload's own cgroup in.
var V1Controllers = []string{"memory", "cpu", "cpuacct", "pids"}

// StartWorkload starts the workload on host a and waits until it counts.
func (h *Hosts) StartWorkload(t testing.TB, o WorkloadOptions) *Workload {
	t.Helper()
	w := &Workload{State: filepath.Join(h.Dir, fmt.Sprintf("state-%d", time.Now().UnixNano()))}
	var argv []string
	switch {
	case o.FromShell:
		argv = []string{"sh", "-c", `"$@" & wait`, "sh"}
	case o.ShellJob:
		argv = []string{"unshare", "-p", "-f"}
	case o.HostPidns:
		// sh leads the session; its child is no group leader, so
		// setsid makes it one of its own without forking.
		argv = []string{"sh", "-c", `setsid "$@" & wait`, "sh"}
	default:
		argv = []string{"unshare", "-p", "-f", "setsid"}
	}
	argv = append(argv, o.Wrap...)
	argv = append(argv, filepath.Join(h.Bin, "phaul-workload"), "--state", w.State, "--interval", "20ms")
	argv = append(argv, o.Args...)
	ctrls := o.Controllers
	if len(ctrls) == 0 {
		ctrls = V1Controllers
	}
	if o.Cgroup != "" {
		var moves []string
		for _, c := range ctrls {
			dir := filepath.Join("/sys/fs/cgroup", c, o.Cgroup)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { RemoveCgroup(dir) })
			moves = append(moves, fmt.Sprintf("echo $$ > %s/cgroup.procs", dir))
		}
		argv = append([]string{"sh", "-c", strings.Join(moves, "; ") + `; exec "$@"`, "sh"}, argv...)
	}
	w.Cmd = h.Command("a", argv...)
	w.Cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if o.Terminal != nil {
		w.Cmd.Stdin, w.Cmd.Stdout, w.Cmd.Stderr = o.Terminal, o.Terminal, o.Terminal
		w.Cmd.SysProcAttr.Setctty = o.FromShell
	}
	if err := w.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go w.Cmd.Wait()
	t.Cleanup(func() { w.Cmd.Process.Kill(); testutil.KillPid(w.Pid) })
	deadline := time.Now().Add(10 * time.Second)
	for w.Pid == 0 {
		if kids, _ := proc.Children(w.Cmd.Process.Pid); len(kids) > 0 {
			w.Pid = kids[0]
		} else if time.Now().After(deadline) {
			t.Fatal("workload did not start")
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if _, err := testutil.WaitCount(w.State, 3, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if o.ChildCgroup != "" {
		kids, _ := proc.Children(w.Pid)
		if len(kids) == 0 {
			t.Fatal("ChildCgroup: the workload has no child (--child)")
		}
		for _, c := range ctrls {
			dir := filepath.Join("/sys/fs/cgroup", c, o.Cgroup, o.ChildCgroup)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(kids[0])), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if o.Freezer {
		// Only the tree: the unshare that waits for it stays outside.
		dir := filepath.Join("/sys/fs/cgroup/freezer", o.Cgroup)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { RemoveCgroup(dir) })
		for _, p := range proc.Tree(w.Pid) {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(p)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return w
}

// StartProcess runs argv on host a as the init of a PID namespace of its
// own, and returns its host PID; it is killed when the test ends.
func (h *Hosts) StartProcess(t testing.TB, argv ...string) int {
	t.Helper()
	cmd := h.Command("a", append([]string{"unshare", "-p", "-f", "setsid"}, argv...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	t.Cleanup(func() { cmd.Process.Kill() })
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if kids, _ := proc.Children(cmd.Process.Pid); len(kids) > 0 {
			t.Cleanup(func() { testutil.KillPid(kids[0]) })
			return kids[0]
		}
	}
	t.Fatalf("%v did not start", argv)
	return 0
}

// RemoveCgroup removes a test cgroup and the cgroups below it.
func RemoveCgroup(dir string) {
	var dirs []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
}

// Result is one run of `phaul migrate`.
type Result struct {
	Report   map[string]any // its --json output
	Stderr   string
	ExitCode int
}

// Num returns a number of the JSON report.
func (r *Result) Num(key string) float64 {
	f, _ := r.Report[key].(float64)
	return f
}

// Bool returns a boolean of the JSON report.
func (r *Result) Bool(key string) bool {
	b, _ := r.Report[key].(bool)
	return b
}

// Str returns a string of the JSON report.
func (r *Result) Str(key string) string {
	s, _ := r.Report[key].(string)
	return s
}

// Migrate runs `phaul migrate --json` on host a with the given flags and
// the arguments pid and addr.
func (h *Hosts) Migrate(t testing.TB, ctx context.Context, pid int, addr string, flags ...string) *Result {
	t.Helper()
	args := append([]string{filepath.Join(h.Bin, "phaul"), "migrate", "--json", "--tls-dir", h.TLS,
		"--work-dir", filepath.Join(h.Dir, "source"), "--timeout", "30s"}, flags...)
	args = append(args, strconv.Itoa(pid), addr)
	cmd := h.CommandContext(ctx, "a", args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	out, errb, code := Run(t, cmd)
	r := &Result{Stderr: string(errb), ExitCode: code}
	if err := json.Unmarshal(out, &r.Report); err != nil {
		t.Fatalf("phaul migrate --json printed no JSON (%v):\nstdout %s\nstderr %s", err, out, r.Stderr)
	}
	return r
}

// Run runs cmd and returns what it printed and its exit status; only a
// command that cannot run at all fails the test.
func Run(t testing.TB, cmd *exec.Cmd) (stdout, stderr []byte, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s: %v", cmd.Path, err)
	}
	return out.Bytes(), errb.Bytes(), code
}

// Request sends one line to a workload's TCP server from host.
func (h *Hosts) Request(host, addr, line string) (string, error) {
	out, err := h.Command(host, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%s && echo %s >&3 && timeout 5 head -n1 <&3", hostOf(addr), portOf(addr), line)).Output()
	return strings.TrimSpace(string(out)), err
}

func hostOf(addr string) string { h, _, _ := net.SplitHostPort(addr); return h }
func portOf(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// InNetns reports whether pid lives in the network namespace at path.
func InNetns(pid int, path string) bool {
	var a, b syscall.Stat_t
	if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &a) != nil || syscall.Stat(path, &b) != nil {
		return false
	}
	return a.Ino == b.Ino && a.Dev == b.Dev
}

// Stopped reports whether pid is stopped (state T).
func Stopped(pid int) bool {
	st, err := proc.ReadStat(pid)
	return err == nil && (st.State == 'T' || st.State == 't')
}

// Held reports whether pid is kept from running as the destination holds
// a restored tree until the commit: stopped, or in a frozen (or freezing)
// cgroup v1 freezer cgroup.
func Held(pid int) bool {
	return Stopped(pid) || Frozen(pid)
}

// Frozen reports whether pid is in a cgroup v1 freezer cgroup that is
// not THAWED.
func Frozen(pid int) bool {
	l, err := cgroups.Detect()
	if err != nil || l.V1["freezer"] == "" {
		return false
	}
	sets, err := cgroups.ProcessSets(pid)
	if err != nil {
		return false
	}
	for _, s := range sets {
		if s.Controllers == "freezer" {
			b, err := os.ReadFile(filepath.Join(l.V1["freezer"], s.Path, "freezer.state"))
			return err == nil && strings.TrimSpace(string(b)) != "THAWED"
		}
	}
	return false
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) WriteLine(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s)
	l.b.WriteByte('\n')
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Status runs `phaul status --json` on host a against addr and returns
// what it printed and its exit status.
func (h *Hosts) Status(t testing.TB, addr string) (*migrate.ServiceStatus, int) {
	t.Helper()
	out, errb, code := Run(t, h.Command("a", filepath.Join(h.Bin, "phaul"), "status", "--json", "--tls-dir", h.TLS, addr))
	var st migrate.ServiceStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("phaul status --json printed no JSON (exit %d, %v):\nstdout %s\nstderr %s", code, err, out, errb)
	}
	return &st, code
}

// Find returns the migration id of st, or nil.
func Find(st *migrate.ServiceStatus, id string) *migrate.MigrationStatus {
	for i := range st.Migrations {
		if st.Migrations[i].ID == id {
			return &st.Migrations[i]
		}
	}
	return nil
}

// DialFrom opens a TCP connection to addr from host's network namespace
// (Do: the socket is made there and stays there).
func (h *Hosts) DialFrom(host, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(host, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 10*time.Second)
		return err
	})
	return c, err
}

// Do runs f in host's network namespace ("a", "b" or "c"): one thread of
// this process enters it, then goes back (a thread left there would make
// `two-hosts.sh down` kill this process). Sockets f makes stay in host's
// namespace.
func (h *Hosts) Do(host string, f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer home.Close()
		ns, err := os.Open(h.NetnsPath(host))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("setns %s: %w", host, err)
			return
		}
		err = f()
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread() // home again: the thread may serve others
		} // else: stays locked, and the thread ends with this goroutine
		ch <- err
	}()
	return <-ch
}

// Package testutil holds helpers for phaul's integration tests: the rule
// that a test needing root or CRIU fails instead of skipping under CI, a
// CRIU client, and the workload program the tests migrate.
package testutil

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/criu"
)

// InCI reports whether the tests run under CI (CI=true), where a test that
// cannot run must fail rather than skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips the test, or fails it under CI.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s (CI=true: an integration test may not skip; run `make deps` as root)", msg)
	}
	t.Skip(msg)
}

// RequireRoot skips (or fails under CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root")
	}
}

var (
	clientOnce sync.Once
	client     *criu.Client
	host       *criu.Host
	clientErr  error
)

// CRIU returns a CRIU client for integration tests, skipping (or failing
// under CI) when not root or when no usable CRIU is installed.
func CRIU(t testing.TB) (*criu.Client, *criu.Host) {
	t.Helper()
	RequireRoot(t)
	clientOnce.Do(func() {
		client, host, clientErr = criu.New(context.Background(), criu.Options{})
	})
	if errors.Is(clientErr, criu.ErrNotFound) {
		SkipOrFail(t, "%v", clientErr)
	}
	if clientErr != nil {
		t.Fatalf("criu: %v", clientErr)
	}
	return client, host
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries builds phaul, phaul-service and phaul-workload (internal/workload)
// once per test binary and returns the directory holding them.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "phaul-bin-"); buildErr != nil {
			return
		}
		for _, b := range []struct{ out, pkg string }{
			{"phaul", "github.com/phaul/phaul/cmd/phaul"},
			{"phaul-service", "github.com/phaul/phaul/cmd/phaul-service"},
			{"phaul-workload", "github.com/phaul/phaul/internal/workload"},
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, b.out), b.pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build
			out, err := cmd.CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// WorkloadBinary returns the path of the built workload program.
func WorkloadBinary(t testing.TB) string {
	t.Helper()
	return filepath.Join(Binaries(t), "phaul-workload")
}

// Workload is a running internal/workload process.
type Workload struct {
	Cmd   *exec.Cmd
	State string // its counter file
}

// WorkloadOptions configure StartWorkload.
type WorkloadOptions struct {
	Child     bool     // start a child process too
	Listen    string   // TCP address to serve on
	NoSetsid  bool     // do not make it a session leader
	PidNS     bool     // in a PID namespace of its own (without its own /proc)
	IPCNS     bool     // in an IPC namespace of its own
	Dir       string   // its working directory; "" means the test's
	ExtraArgs []string // more workload flags
}

// StartWorkload starts the workload with stdio on /dev/null, waits until it
// has counted, and kills it (and its child) when the test ends.
func StartWorkload(t testing.TB, o WorkloadOptions) *Workload {
	t.Helper()
	bin := WorkloadBinary(t)
	state := filepath.Join(t.TempDir(), "state")
	args := []string{bin, "--state", state, "--interval", "20ms"}
	if o.Child {
		args = append(args, "--child")
	}
	if o.Listen != "" {
		args = append(args, "--listen", o.Listen)
	}
	args = append(args, o.ExtraArgs...)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: !o.NoSetsid}
	if o.PidNS {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWPID
	}
	if o.IPCNS {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWIPC
	}
	cmd.Dir = o.Dir
	if err := cmd.Start(); err != nil {
		t.Fatalf("start workload: %v", err)
	}
	w := &Workload{Cmd: cmd, State: state}
	go cmd.Wait()
	t.Cleanup(func() { w.Kill() })
	if _, err := WaitCount(state, 2, 10*time.Second); err != nil {
		t.Fatalf("workload did not start: %v", err)
	}
	return w
}

// Kill kills the workload tree wherever it runs now (the PIDs in its state
// file: a restored copy keeps them).
func (w *Workload) Kill() {
	if s, err := ReadState(w.State); err == nil {
		KillPid(s.Pid)
		KillPid(s.ChildPid)
	}
	if w.Cmd.Process != nil {
		w.Cmd.Process.Kill()
	}
}

// KillPid sends SIGKILL to pid, unless it is not a real process (<= 1:
// a state file written inside a PID namespace holds 1).
func KillPid(pid int) {
	if pid > 1 {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// State is what the workload last wrote.
type State struct {
	Count    int64
	Pid      int
	ChildPid int
}

// ReadState reads a workload state file.
func ReadState(path string) (State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return State{}, err
	}
	f := strings.Fields(string(data))
	if len(f) != 3 {
		return State{}, fmt.Errorf("%s: malformed state %q", path, data)
	}
	var s State
	var errs [3]error
	s.Count, errs[0] = strconv.ParseInt(f[0], 10, 64)
	s.Pid, errs[1] = strconv.Atoi(f[1])
	s.ChildPid, errs[2] = strconv.Atoi(f[2])
	if err := errors.Join(errs[:]...); err != nil {
		return State{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// WaitCount waits until the counter in path reaches at least n.
func WaitCount(path string, n int64, timeout time.Duration) (State, error) {
	deadline := time.Now().Add(timeout)
	for {
		s, err := ReadState(path)
		if err == nil && s.Count >= n {
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("counter in %s did not reach %d in %v (last %+v, %v)", path, n, timeout, s, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "State:"); ok {
			return !strings.HasPrefix(strings.TrimSpace(v), "Z")
		}
	}
	return false
}

// WaitGone waits until pid no longer exists (or is a zombie).
func WaitGone(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for Alive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d still alive after %v", pid, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// WaitReaped waits until /proc/PID is gone: the task has exited and been
// reaped, so that a restore can take its PID again.
func WaitReaped(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d not reaped after %v", pid, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Dial sends one request line to a workload's TCP server and returns the
// answer line.
func Dial(ctx context.Context, addr, line string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := fmt.Fprintln(c, line); err != nil {
		return "", err
	}
	r, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(r), err
}

// Socketpair returns both ends of a connected AF_UNIX stream socketpair,
// closed when the test ends.
func Socketpair(t testing.TB) (*os.File, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := os.NewFile(uintptr(fds[0]), "sp0"), os.NewFile(uintptr(fds[1]), "sp1")
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/twohosts"
)

const (
	hostsName   = "phbench" // netns phbench-a, phbench-b
	addrA       = "10.77.0.1"
	addrB       = "10.77.0.2"
	servicePort = "7070"
	copyPort    = "7071"
	clientPort  = "7072" // the workload's server, for the client of phaul's runs
	cgroupRoot  = "/" + hostsName
)

// bench is the machinery of one run: the two hosts, the service on b,
// and everything to remove at the end.
type bench struct {
	o       options
	log     *slog.Logger
	bin     string // absolute
	self    string // this binary, for `recv`
	criu    string // the criu command people run
	dir     string // scratch on disk
	shm     string // scratch on tmpfs (CRIU alone dumps here)
	tls     string
	svc     *exec.Cmd
	svcLog  *os.File
	scripts string // scripts/ of the repository

	mu   sync.Mutex
	pids map[int]bool // workloads alive, source or restored
	seq  int
}

func newBench(ctx context.Context, o options, log *slog.Logger) (*bench, error) {
	b := &bench{o: o, log: log, pids: map[int]bool{}}
	var err error
	if b.bin, err = filepath.Abs(o.Bin); err != nil {
		return nil, err
	}
	for _, f := range []string{"phaul", "phaul-service", "phaul-workload"} {
		if _, err := os.Stat(filepath.Join(b.bin, f)); err != nil {
			return nil, fmt.Errorf("%s: %w (run `make build` first)", f, err)
		}
	}
	if b.self, err = os.Executable(); err != nil {
		return nil, err
	}
	if b.criu, err = criu.Locate(); err != nil {
		return nil, fmt.Errorf("%w (run `make deps` first)", err)
	}
	if b.scripts, err = filepath.Abs("scripts"); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(b.scripts, "two-hosts.sh")); err != nil {
		return nil, fmt.Errorf("run from the repository's root: %w", err)
	}
	// CLI restores leave their trees to the nearest subreaper: us.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("become a subreaper: %w", err)
	}
	// A run killed hard may have left its hosts.
	exec.Command(filepath.Join(b.scripts, "two-hosts.sh"), "down", hostsName).Run()
	removeCgroups()

	if b.dir, err = os.MkdirTemp("/var/tmp", "phaul-bench."); err != nil {
		return nil, err
	}
	if b.shm, err = os.MkdirTemp("/dev/shm", "phaul-bench."); err != nil {
		os.RemoveAll(b.dir)
		return nil, err
	}
	if err := b.setup(ctx); err != nil {
		b.cleanup()
		return nil, err
	}
	return b, nil
}

func (b *bench) setup(ctx context.Context) error {
	if out, err := exec.CommandContext(ctx, filepath.Join(b.scripts, "two-hosts.sh"), "up", hostsName).CombinedOutput(); err != nil {
		return fmt.Errorf("two-hosts up: %v: %s", err, out)
	}
	b.tls = filepath.Join(b.dir, "tls")
	if out, err := exec.CommandContext(ctx, filepath.Join(b.bin, "phaul"), "certs", b.tls).CombinedOutput(); err != nil {
		return fmt.Errorf("phaul certs: %v: %s", err, out)
	}
	return b.startService(ctx)
}

func (b *bench) startService(ctx context.Context) error {
	var err error
	if b.svcLog, err = os.Create(filepath.Join(b.dir, "service.log")); err != nil {
		return err
	}
	b.svc = b.on("b", filepath.Join(b.bin, "phaul-service"), "--config", "", "--listen", addrB+":"+servicePort,
		"--tls-dir", b.tls, "--work-dir", filepath.Join(b.dir, "service"), "--cgroup-root", cgroupRoot, "-v")
	b.svc.Stdout, b.svc.Stderr = b.svcLog, b.svcLog
	if err := b.svc.Start(); err != nil {
		return fmt.Errorf("start phaul-service: %w", err)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if data, _ := os.ReadFile(b.svcLog.Name()); bytes.Contains(data, []byte("msg=listening")) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	data, _ := os.ReadFile(b.svcLog.Name())
	return fmt.Errorf("phaul-service did not start listening:\n%s", data)
}

// on runs argv on host "a" or "b" (nsenter execs: the command's PID is
// the program's).
func (b *bench) on(host string, argv ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + hostsName + "-" + host}, argv...)...)
}

// runOn runs argv on host and returns how long it took; on failure the
// error carries its output.
func (b *bench) runOn(ctx context.Context, host string, argv ...string) (time.Duration, error) {
	cmd := b.on(host, argv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	stop()
	took := time.Since(t0)
	if err != nil {
		if ctx.Err() != nil {
			return took, ctx.Err()
		}
		return took, fmt.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, tail(out.String(), 20))
	}
	return took, nil
}

// cleanup kills what is left and removes what the bench made.
func (b *bench) cleanup() {
	b.mu.Lock()
	for pid := range b.pids {
		unix.Kill(pid, unix.SIGKILL)
		reapIfChild(pid)
	}
	b.mu.Unlock()
	if b.svc != nil && b.svc.Process != nil {
		b.svc.Process.Signal(unix.SIGTERM)
		done := make(chan struct{})
		go func() { b.svc.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			b.svc.Process.Kill()
			<-done
		}
	}
	if b.svcLog != nil {
		b.svcLog.Close()
	}
	exec.Command(filepath.Join(b.scripts, "two-hosts.sh"), "down", hostsName).Run()
	unmountBelow(b.dir)
	removeCgroups()
	os.RemoveAll(b.shm)
	os.RemoveAll(b.dir)
}

// unmountBelow detaches the mounts under dir (a migration's image tmpfs
// left by a service that was killed).
func unmountBelow(dir string) {
	if dir == "" {
		return
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			unix.Unmount(f[4], unix.MNT_DETACH)
		}
	}
}

// removeCgroups removes the service's cgroup root in every hierarchy,
// retrying while killed tasks are leaving it.
func removeCgroups() {
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", hostsName))
	for _, root := range roots {
		for try := 0; try < 50; try++ {
			twohosts.RemoveCgroup(root)
			if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// workload is one phaul-workload tree.
type workload struct {
	cmd   *exec.Cmd
	pid   int // host PID of its root (the init of its PID namespace)
	state string
}

// startWorkload starts a workload of mib MiB rewriting dirty pages a
// second on host a and waits until it counts.
// startWorkload starts a workload of mib MiB dirtying dirty pages a
// second on host a; with listen, it serves there too.
func (b *bench) startWorkload(ctx context.Context, mib, dirty int, listen string) (*workload, error) {
	b.mu.Lock()
	b.seq++
	w := &workload{state: filepath.Join(b.dir, fmt.Sprintf("w%03d", b.seq))}
	b.mu.Unlock()
	argv := []string{"unshare", "-p", "-f", "setsid", filepath.Join(b.bin, "phaul-workload"),
		"--state", w.state, "--interval", "20ms", "--mem", strconv.Itoa(mib), "--dirty", strconv.Itoa(dirty)}
	if listen != "" {
		argv = append(argv, "--listen", listen)
	}
	w.cmd = b.on("a", argv...)
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.cmd.Start(); err != nil {
		return nil, err
	}
	go w.cmd.Wait()
	deadline := time.Now().Add(30*time.Second + time.Duration(mib)*50*time.Millisecond)
	for w.pid == 0 {
		if kids, _ := proc.Children(w.cmd.Process.Pid); len(kids) > 0 {
			w.pid = kids[0]
			b.track(w.pid)
		} else if time.Now().After(deadline) || ctx.Err() != nil {
			w.cmd.Process.Kill()
			return nil, errors.New("the workload did not start")
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The counter starts once the memory is filled.
	if _, err := waitCount(ctx, w.state, 3, time.Until(deadline)); err != nil {
		b.kill(w.pid)
		return nil, err
	}
	return w, nil
}

// addServiceAddr puts the address phaul's runs move on host a (taken
// off b first, should a run have left it there).
func (b *bench) addServiceAddr(ctx context.Context) error {
	b.removeServiceAddr()
	if _, err := b.runOn(ctx, "a", "ip", "addr", "add", serviceAddr+serviceMask, "dev", hostsName+"-va"); err != nil {
		return fmt.Errorf("the service address on a: %w", err)
	}
	// A new client: it knows nothing of where the address was before.
	if _, err := b.runOn(ctx, "c", "ip", "neigh", "flush", "all"); err != nil {
		return fmt.Errorf("the client's neighbours: %w", err)
	}
	return nil
}

// removeServiceAddr takes it off both hosts.
func (b *bench) removeServiceAddr() {
	for _, h := range []string{"a", "b"} {
		b.on(h, "ip", "addr", "del", serviceAddr+serviceMask, "dev", hostsName+"-v"+h).Run()
	}
}

func (b *bench) track(pid int) {
	b.mu.Lock()
	b.pids[pid] = true
	b.mu.Unlock()
}

// kill ends a workload tree (the init of a PID namespace: its children go
// with it) and reaps it if it is ours.
func (b *bench) kill(pid int) {
	unix.Kill(pid, unix.SIGKILL)
	reapIfChild(pid)
	b.mu.Lock()
	delete(b.pids, pid)
	b.mu.Unlock()
}

func reapIfChild(pid int) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if err != unix.EINTR {
			return
		}
	}
}

// waitCount is testutil.WaitCount that also ends with ctx (the bench is
// interruptible); it returns the last count read.
func waitCount(ctx context.Context, state string, n int64, timeout time.Duration) (int64, error) {
	var last int64
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if st, err := testutil.ReadState(state); err == nil {
			last = st.Count
			if last >= n {
				return last, nil
			}
		}
	}
	return last, fmt.Errorf("the workload's counter (%s) is at %d after %v, want %d", state, last, timeout, n)
}

// verify checks that the workload at pid (restored) runs on and that its
// memory is intact: it counts past its count at the dump, and its own
// check of every page (SIGUSR1 writes STATE.sum) says ok.
func verify(ctx context.Context, w *workload, pid int) error {
	st, err := testutil.ReadState(w.state)
	if err != nil {
		return err
	}
	if _, err := waitCount(ctx, w.state, st.Count+3, 10*time.Second); err != nil {
		return fmt.Errorf("the restored workload does not count: %w", err)
	}
	sum := w.state + ".sum"
	os.Remove(sum)
	if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
		return fmt.Errorf("signal the restored workload: %w", err)
	}
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := os.ReadFile(sum)
		if err != nil {
			continue
		}
		if s := strings.TrimSpace(string(data)); !strings.HasPrefix(s, "sum=ok") {
			return fmt.Errorf("the restored workload's memory is not intact: %s", s)
		}
		return nil
	}
	return errors.New("the restored workload did not answer its memory check")
}

// tbfRate turns a link name into a tbf rate ("" for the bare link).
func tbfRate(link string) (string, error) {
	if link == "bare" {
		return "", nil
	}
	l := strings.TrimSuffix(strings.TrimSuffix(link, "bit"), "b")
	num := strings.TrimRight(l, "kmgKMG")
	if _, err := strconv.ParseFloat(num, 64); err != nil || num == "" || len(l)-len(num) > 1 {
		return "", fmt.Errorf("link %q: say bare or a rate such as 1gbit or 500mbit", link)
	}
	return strings.ToLower(l) + "bit", nil
}

// shape sets the link between the hosts: no qdisc of ours (bare) or a
// token bucket of the rate on both ends.
func (b *bench) shape(ctx context.Context, link string) error {
	rate, err := tbfRate(link)
	if err != nil {
		return err
	}
	for _, end := range []string{"a", "b"} {
		dev := hostsName[:min(8, len(hostsName))] + "-v" + end
		b.on(end, "tc", "qdisc", "del", "dev", dev, "root").Run()
		if rate == "" {
			continue
		}
		// burst: at least rate/HZ, or tbf cannot reach the rate.
		if _, err := b.runOn(ctx, end, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
			"rate", rate, "burst", "1mb", "latency", "20ms"); err != nil {
			return fmt.Errorf("shape the link: %w", err)
		}
	}
	return nil
}

// throughput measures the link: bytes of zeroes sent from a to b over
// one TCP connection, in bits per second.
func (b *bench) throughput(ctx context.Context, mib int) (float64, error) {
	n, took, err := b.copyOver(ctx, fmt.Sprintf("dd if=/dev/zero bs=1M count=%d status=none", mib), "-")
	if err != nil {
		return 0, err
	}
	return float64(n) * 8 / took.Seconds(), nil
}

// copyOver runs the shell pipeline src on host a with its output sent to
// host b over TCP, where it is unpacked with tar into dir ("-": thrown
// away). It returns the bytes that crossed and the time from the start of
// src until the receiver finished.
func (b *bench) copyOver(ctx context.Context, src, dir string) (int64, time.Duration, error) {
	recv := b.on("b", b.self, recvCommand, addrB+":"+copyPort, dir)
	stdout, err := recv.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	var stderr bytes.Buffer
	recv.Stderr = &stderr
	if err := recv.Start(); err != nil {
		return 0, 0, err
	}
	defer recv.Process.Kill()
	rd := bufio.NewReader(stdout)
	if line, err := rd.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		recv.Wait()
		return 0, 0, fmt.Errorf("receiver did not start: %q %v: %s", line, err, stderr.String())
	}
	took, err := b.runOn(ctx, "a", "bash", "-c", src+" >/dev/tcp/"+addrB+"/"+copyPort)
	if err != nil {
		return 0, 0, err
	}
	line, _ := rd.ReadString('\n')
	if werr := recv.Wait(); werr != nil {
		return 0, 0, fmt.Errorf("receiver: %v: %s", werr, stderr.String())
	}
	n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("receiver said %q", line)
	}
	return n, took, nil
}

const recvCommand = "recv"

// recvMain is `phaul-bench recv ADDR DIR`: accept one TCP connection on
// ADDR and unpack it with tar into DIR ("-": count and discard). It
// prints "ready" once listening and the byte count at the end.
func recvMain(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: recv ADDR DIR")
	}
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", args[0])
	if err != nil {
		return err
	}
	fmt.Println("ready")
	conn, err := ln.Accept()
	ln.Close()
	if err != nil {
		return err
	}
	defer conn.Close()
	var n int64
	if args[1] == "-" {
		n, err = io.Copy(io.Discard, conn)
	} else {
		tar := exec.Command("tar", "-x", "-C", args[1])
		w, perr := tar.StdinPipe()
		if perr != nil {
			return perr
		}
		tar.Stderr = os.Stderr
		if err := tar.Start(); err != nil {
			return err
		}
		n, err = io.Copy(w, conn)
		w.Close()
		if werr := tar.Wait(); err == nil {
			err = werr
		}
	}
	if err != nil {
		return err
	}
	fmt.Println(n)
	return nil
}

// cpuOf is the CPU time pid used so far (its own, not its children's).
func cpuOf(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	// Fields 14 and 15 of stat (utime, stime), counted after the comm.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, 100 on Linux.
const clockTicks = 100

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

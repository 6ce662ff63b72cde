package criu_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/internal/testutil"
)

// These tests run real CRIU on real processes, as root. Without root or
// CRIU they skip, except under CI=true, where they fail.

func dumpOpts(pid int) *rpc.CriuOpts {
	return &rpc.CriuOpts{Pid: proto.Int32(int32(pid))}
}

// dumpAndReap dumps the workload (CRIU kills it) and waits until its PIDs
// are free again.
func dumpAndReap(t *testing.T, c *criu.Client, w *testutil.Workload, r criu.Request) testutil.State {
	t.Helper()
	pid := w.Cmd.Process.Pid
	r.Opts = dumpOpts(pid)
	if _, err := c.Dump(context.Background(), r); err != nil {
		t.Fatalf("dump: %v", err)
	}
	st, err := testutil.ReadState(w.State)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{st.Pid, st.ChildPid} {
		if p > 0 {
			if err := testutil.WaitReaped(p, 10*time.Second); err != nil {
				t.Fatalf("after dump: %v", err)
			}
		}
	}
	return st
}

// checkContinues asserts that the restored workload counts on from where
// it was dumped, with the same PIDs.
func checkContinues(t *testing.T, w *testutil.Workload, dumped testutil.State, restoredPid int) {
	t.Helper()
	if restoredPid != dumped.Pid {
		t.Errorf("restored pid = %d, want the dumped %d", restoredPid, dumped.Pid)
	}
	first, err := testutil.ReadState(w.State)
	if err != nil {
		t.Fatal(err)
	}
	if first.Count < dumped.Count {
		t.Fatalf("counter went back: %d after restore, %d at dump", first.Count, dumped.Count)
	}
	later, err := testutil.WaitCount(w.State, dumped.Count+5, 10*time.Second)
	if err != nil {
		t.Fatalf("restored workload does not count on: %v", err)
	}
	if later.Pid != dumped.Pid {
		t.Errorf("state written by pid %d, want %d", later.Pid, dumped.Pid)
	}
	if !testutil.Alive(dumped.Pid) {
		t.Errorf("restored pid %d is not alive", dumped.Pid)
	}
}

func TestDumpRestoreTreeContinues(t *testing.T) {
	c, _ := testutil.CRIU(t)
	w := testutil.StartWorkload(t, testutil.WorkloadOptions{Child: true})
	if _, err := testutil.WaitCount(w.State+".child", 2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dumped := dumpAndReap(t, c, w, criu.Request{ImagesDir: dir})
	childDumped, err := testutil.ReadState(w.State + ".child")
	if err != nil {
		t.Fatal(err)
	}
	if dumped.ChildPid <= 0 || childDumped.Pid != dumped.ChildPid {
		t.Fatalf("bad child in state: %+v / %+v", dumped, childDumped)
	}

	res, err := c.Restore(context.Background(), criu.Request{ImagesDir: dir})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	checkContinues(t, w, dumped, res.Pid)
	if _, err := testutil.WaitCount(w.State+".child", childDumped.Count+5, 10*time.Second); err != nil {
		t.Fatalf("restored child does not count on: %v", err)
	}
	if !testutil.Alive(dumped.ChildPid) {
		t.Errorf("restored child %d not alive", dumped.ChildPid)
	}
	if _, err := os.Stat(res.Log); err != nil {
		t.Errorf("restore log: %v", err)
	}
}

// pump copies both ways between a and b until both directions end, like
// phaul's network pump but in-process.
func pump(a, b *os.File) *sync.WaitGroup {
	var wg sync.WaitGroup
	cp := func(dst, src *os.File) {
		defer wg.Done()
		io.Copy(dst, src)
		unix.Shutdown(int(dst.Fd()), unix.SHUT_WR)
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	return &wg
}

func TestDumpThroughPageServerPump(t *testing.T) {
	c, _ := testutil.CRIU(t)
	w := testutil.StartWorkload(t, testutil.WorkloadOptions{ExtraArgs: []string{"--mem", "16"}})
	src, dst := t.TempDir(), t.TempDir()

	// dump side: dumpEnd <-> pumpA ... pumpB <-> psEnd :page server side
	dumpEnd, pumpA := testutil.Socketpair(t)
	pumpB, psEnd := testutil.Socketpair(t)
	wg := pump(pumpA, pumpB)

	ctx := context.Background()
	ps, err := c.StartPageServer(ctx, criu.Request{ImagesDir: dst, PageServer: psEnd})
	if err != nil {
		t.Fatalf("page server: %v", err)
	}
	defer ps.Close()
	psEnd.Close() // the page server holds its own copy

	dumped := dumpAndReap(t, c, w, criu.Request{ImagesDir: src, PageServer: dumpEnd})
	dumpEnd.Close()
	if err := ps.Wait(ctx); err != nil {
		t.Fatalf("page server: %v", err)
	}
	wg.Wait()

	// The pages are on the page server's side, not in the dump's dir.
	pages, _ := filepath.Glob(filepath.Join(src, "pages-*.img"))
	if len(pages) != 0 {
		t.Errorf("dump wrote pages locally: %v", pages)
	}
	pages, _ = filepath.Glob(filepath.Join(dst, "pages-*.img"))
	if len(pages) == 0 {
		t.Fatal("page server wrote no pages")
	}
	// Ship the other images, as phaul does, and restore there.
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".img") {
			continue
		}
		if _, err := os.Stat(filepath.Join(dst, e.Name())); err == nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	res, err := c.Restore(ctx, criu.Request{ImagesDir: dst})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	checkContinues(t, w, dumped, res.Pid)
	// The workload's 16 MiB survived the trip through the pump.
	if err := unix.Kill(dumped.Pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		sum, _ := os.ReadFile(w.State + ".sum")
		if strings.HasPrefix(string(sum), "sum=ok pages=4096") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("memory check after restore: %q", sum)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

func TestListeningSocketSurvives(t *testing.T) {
	c, _ := testutil.CRIU(t)
	port := freePort(t)
	w := testutil.StartWorkload(t, testutil.WorkloadOptions{Listen: "0.0.0.0:" + port})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr := "127.0.0.1:" + port
	before, err := testutil.Dial(ctx, addr, "GET")
	if err != nil {
		t.Fatalf("workload server: %v", err)
	}
	dir := t.TempDir()
	dumped := dumpAndReap(t, c, w, criu.Request{ImagesDir: dir})
	if _, err := testutil.Dial(ctx, addr, "GET"); err == nil {
		t.Fatal("server still answers after dump killed it")
	}
	res, err := c.Restore(ctx, criu.Request{ImagesDir: dir})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	checkContinues(t, w, dumped, res.Pid)
	after, err := testutil.Dial(ctx, addr, "GET")
	if err != nil {
		t.Fatalf("restored server: %v", err)
	}
	if tokenOf(after) != tokenOf(before) || tokenOf(after) == "" {
		t.Errorf("token changed: before %q, after %q", before, after)
	}
}

func tokenOf(line string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "token="); ok {
			return v
		}
	}
	return ""
}

func TestDumpRefusalCarriesCRIUError(t *testing.T) {
	c, _ := testutil.CRIU(t)
	// Not a session leader, and no shell_job: CRIU refuses.
	w := testutil.StartWorkload(t, testutil.WorkloadOptions{NoSetsid: true})
	pid := w.Cmd.Process.Pid
	_, err := c.Dump(context.Background(), criu.Request{ImagesDir: t.TempDir(), Opts: dumpOpts(pid)})
	var ce *criu.Error
	if !errors.As(err, &ce) {
		t.Fatalf("dump: want *criu.Error, got %T %v", err, err)
	}
	if len(ce.Lines) == 0 || !strings.Contains(err.Error(), "Error (criu/") {
		t.Fatalf("error does not quote CRIU's log: %v", err)
	}
	if !strings.Contains(err.Error(), "shell-job") && !strings.Contains(err.Error(), "session") {
		t.Errorf("error does not say why (session / shell-job): %v", err)
	}
	if ce.Log == "" {
		t.Error("no log path in error")
	}
	st, _ := testutil.ReadState(w.State)
	if _, err := testutil.WaitCount(w.State, st.Count+3, 5*time.Second); err != nil {
		t.Fatalf("workload stopped after a refused dump: %v", err)
	}
}

func TestDumpCancelledLeavesWorkloadRunning(t *testing.T) {
	c, _ := testutil.CRIU(t)
	for _, at := range []string{criu.NotifyPreDump, criu.NotifyPostDump, "during"} {
		t.Run(at, func(t *testing.T) {
			w := testutil.StartWorkload(t, testutil.WorkloadOptions{Child: true, ExtraArgs: []string{"--mem", "64"}})
			pid := w.Cmd.Process.Pid
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			notify := func(ctx context.Context, n criu.Notification) error {
				if n.Name == at {
					cancel()
				}
				if at == "during" && n.Name == criu.NotifyPreDump {
					// Cancel while CRIU is busy, not in a callback.
					time.AfterFunc(20*time.Millisecond, cancel)
				}
				return nil
			}
			_, err := c.Dump(ctx, criu.Request{ImagesDir: t.TempDir(), Opts: dumpOpts(pid), Notify: notify})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("dump: want context.Canceled, got %v", err)
			}
			st, err := testutil.ReadState(w.State)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := testutil.WaitCount(w.State, st.Count+5, 10*time.Second); err != nil {
				t.Fatalf("workload not running after cancelled dump: %v", err)
			}
			if _, err := testutil.WaitCount(w.State+".child", 1, time.Second); err != nil || !testutil.Alive(st.ChildPid) {
				t.Fatalf("child not running after cancelled dump: %v", err)
			}
		})
	}
}

func TestVersionAndFeaturesMatchCLI(t *testing.T) {
	c, h := testutil.CRIU(t)
	ctx := context.Background()
	v, err := c.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Command(ctx, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := criu.ParseVersion(strings.SplitN(string(out), "\n", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	if v.Major != cli.Major || v.Minor != cli.Minor || v.Sublevel != cli.Sublevel {
		t.Errorf("rpc version %v, cli %v", v, cli)
	}
	if h.Version != v {
		t.Errorf("host version %v, rpc %v", h.Version, v)
	}
	f, err := c.Features(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cliFeature := func(name string) bool {
		return c.Command(ctx, "check", "--feature", name).Run() == nil
	}
	if want := cliFeature("mem_dirty_track"); f.MemTrack != want {
		t.Errorf("mem_track: rpc %v, `criu check --feature mem_dirty_track` %v", f.MemTrack, want)
	}
	if want := cliFeature("uffd-noncoop"); f.LazyPages != want {
		t.Errorf("lazy_pages: rpc %v, `criu check --feature uffd-noncoop` %v", f.LazyPages, want)
	}
}

func TestBreakpointProbeAgreesWithCRIU(t *testing.T) {
	c, h := testutil.CRIU(t)
	if h.Version.Less(criu.Version{Major: 4, Minor: 2}) {
		testutil.SkipOrFail(t, "CRIU < 4.2 has no breakpoints check to compare with")
	}
	want := c.Command(context.Background(), "check", "--feature", "breakpoints").Run() == nil
	// The probe must give CRIU's answer every time, not by luck: the
	// earlier probe, which armed the instruction the child happened to
	// stop at, disagreed with it up to 85 times in 100 with both CPUs
	// busy.
	for i := 0; i < 100; i++ {
		got, err := criu.ProbeBreakpoints(context.Background())
		if err != nil {
			t.Fatalf("probe %d: %v", i, err)
		}
		if got != want {
			t.Fatalf("probe %d says breakpoints work = %v, criu check says %v", i, got, want)
		}
	}
}

func TestCPUInfo(t *testing.T) {
	c, _ := testutil.CRIU(t)
	ctx := context.Background()
	dir := t.TempDir()
	if err := c.CPUInfoDump(ctx, dir); err != nil {
		t.Fatalf("cpuinfo dump: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cpuinfo.img")); err != nil {
		t.Fatal(err)
	}
	if err := c.CPUInfoCheck(ctx, dir, criu.CPUCapAll); err != nil {
		t.Fatalf("cpuinfo check on the same host: %v", err)
	}
	err := c.CPUInfoCheck(ctx, t.TempDir(), criu.CPUCapAll)
	var ce *criu.Error
	if !errors.As(err, &ce) || len(ce.Lines) == 0 {
		t.Fatalf("cpuinfo check without an image: want a CRIU error with its log lines, got %v", err)
	}
}

// TestDumpsInOneWorkingDirectoryTakeTurns: CRIU's parasite mounts a /proc
// at proc.crtools in the working directory of a tree in a PID namespace
// without its own /proc, so two such dumps at once of trees sharing that
// directory collide ("Can't create a directory (-17)") unless Dump runs
// them one after the other; a dump waiting for its turn honours ctx and
// leaves its tree running.
func TestDumpsInOneWorkingDirectoryTakeTurns(t *testing.T) {
	c, _ := testutil.CRIU(t)
	dir := t.TempDir()
	var pids []int
	for i := 0; i < 2; i++ {
		w := testutil.StartWorkload(t, testutil.WorkloadOptions{PidNS: true, Dir: dir})
		pids = append(pids, w.Cmd.Process.Pid)
	}
	p, err := proc.ReadParasiteProc(pids[0])
	if err != nil || !p.Mounts {
		t.Fatalf("the workload's facts: %+v, %v; want a /proc for CRIU to mount", p, err)
	}
	for round := 0; round < 4; round++ {
		var wg sync.WaitGroup
		errs := make([]error, len(pids))
		for i, pid := range pids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				opts := dumpOpts(pid)
				opts.LeaveRunning = proto.Bool(true)
				_, errs[i] = c.Dump(context.Background(), criu.Request{ImagesDir: t.TempDir(), Opts: opts})
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, dump of %d: %v", round, pids[i], err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, proc.ParasiteProcDir)); err == nil {
		t.Errorf("%s left in the working directory", proc.ParasiteProcDir)
	}

	// Another holds the lock: the dump waits, and gives up with ctx.
	f, err := os.OpenFile(criu.DumpLockPath(p), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if !criu.DumpDirBusy(p) {
		t.Error("DumpDirBusy: false while the lock is held")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := c.Dump(ctx, criu.Request{ImagesDir: t.TempDir(), Opts: dumpOpts(pids[0])}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dump while the lock is held: %v, want the context's deadline", err)
	}
	if st, err := proc.ReadStat(pids[0]); err != nil || st.State == 'T' || st.State == 't' {
		t.Errorf("workload after a dump that waited: %+v, %v; want it running", st, err)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	if criu.DumpDirBusy(p) {
		t.Error("DumpDirBusy: true once the lock is free")
	}
}

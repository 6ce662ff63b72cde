package postcopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
)

// SelfTestResult is what a self-test found.
type SelfTestResult struct {
	Worked bool          // the probe ran restored lazily, with every page as it was
	Eager  int64         // pages sent before the restore (what it reads)
	Lazy   int64         // pages the restore left to be fetched
	Served int64         // pages the page server answered with
	Took   time.Duration // restore until every page had arrived
	Why    string        // what failed, when it did not work
}

func (r SelfTestResult) String() string {
	if r.Worked {
		return fmt.Sprintf("a real lazy restore worked: %d pages sent before it, %d fetched through phaul's page server in %v", r.Eager, r.Served, r.Took.Round(time.Millisecond))
	}
	return "a real lazy restore failed: " + r.Why
}

// SelfTest migrates a probe process through the whole post-copy chain on
// this host, as a migration does between two: it starts exe (a program
// that calls RunProbeIfAsked) as the probe and dumps it into a snapshot;
// sends the snapshot's eager pages (WriteEager) to a CRIU page server
// writing the restore's images, and copies the other images there;
// restores it with lazy pages, serves the lazy pages from the snapshot
// with Serve to CRIU's lazy-pages daemon, and has the probe check its
// memory. dir must be empty; the caller removes it. An error is returned
// only when the test could not be run; a chain that fails is a result
// (Worked false, Why).
func SelfTest(ctx context.Context, c *criu.Client, dir, exe string) (SelfTestResult, error) {
	d, err := newTestDirs(dir)
	if err != nil {
		return SelfTestResult{}, fmt.Errorf("lazy self-test: %w", err)
	}
	if err := dumpProbe(ctx, c, exe, d.snap, d.work, d.result); err != nil {
		return SelfTestResult{Why: err.Error()}, nil
	}
	return lazyRestoreProbe(ctx, c, d)
}

// testDirs are where a self-test keeps the snapshot (the source's), the
// images it restores from (the destination's), CRIU's logs, and the
// probe's verdict.
type testDirs struct{ snap, imgs, work, result string }

func newTestDirs(dir string) (testDirs, error) {
	d := testDirs{filepath.Join(dir, "snapshot"), filepath.Join(dir, "images"), filepath.Join(dir, "work"), filepath.Join(dir, "result")}
	for _, p := range []string{d.snap, d.imgs, d.work} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return d, err
		}
	}
	return d, nil
}

// sendEager builds the restore's images from the snapshot: the eager
// pages through a real CRIU page server, the other images copied.
func sendEager(ctx context.Context, c *criu.Client, d testDirs) (EagerStats, error) {
	ours, theirs, err := socketpair()
	if err != nil {
		return EagerStats{}, err
	}
	defer ours.Close()
	ps, err := c.StartPageServer(ctx, criu.Request{ImagesDir: d.imgs, WorkDir: d.work, PageServer: theirs})
	theirs.Close()
	if err != nil {
		return EagerStats{}, err
	}
	defer ps.Close()
	st, err := WriteEager(ours, d.snap)
	if err != nil {
		return st, err
	}
	if err := ps.Wait(ctx); err != nil {
		return st, err
	}
	return st, copyImages(d.snap, d.imgs)
}

// copyImages copies every image of src but the pages' (and CRIU's logs)
// to dst.
func copyImages(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if !e.Type().IsRegular() || strings.HasSuffix(n, ".log") || strings.HasPrefix(n, "pagemap-") || strings.HasPrefix(n, "pages-") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, n), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// dumpProbe starts the probe, waits until its memory is filled, and dumps
// it (CRIU kills it).
func dumpProbe(ctx context.Context, c *criu.Client, exe, imgs, work, result string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), probeEnv+"="+result)
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return fmt.Errorf("start the probe: %w", err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	// One byte when its memory is filled, then EOF when it has closed its
	// end: nothing of it leads outside the probe when it is dumped.
	if b, err := io.ReadAll(r); err != nil || len(b) != 1 {
		return fmt.Errorf("the probe did not start (read %d bytes: %v)", len(b), err)
	}
	opts := &rpc.CriuOpts{Pid: proto.Int32(int32(cmd.Process.Pid))}
	if _, err := c.Dump(ctx, criu.Request{Opts: opts, ImagesDir: imgs, WorkDir: work}); err != nil {
		return fmt.Errorf("dump the probe: %w", err)
	}
	return nil
}

// lazyRestoreProbe sends the dumped probe's eager pages, restores it with
// lazy pages served from the snapshot, waits until every page has
// arrived, and has the probe check its memory.
func lazyRestoreProbe(ctx context.Context, c *criu.Client, d testDirs) (SelfTestResult, error) {
	snap, err := OpenSnapshot(d.snap)
	if err != nil {
		return SelfTestResult{}, fmt.Errorf("lazy self-test: %w", err)
	}
	defer snap.Close()
	res := SelfTestResult{Lazy: snap.Lazy()}
	eager, err := sendEager(ctx, c, d)
	if err != nil {
		res.Why = "send the eager pages: " + err.Error()
		return res, nil
	}
	res.Eager = eager.Pages
	if eager.Lazy != res.Lazy {
		res.Why = fmt.Sprintf("%d pages announced lazy, the snapshot has %d", eager.Lazy, res.Lazy)
		return res, nil
	}
	imgs, work, result := d.imgs, d.work, d.result
	ours, theirs, err := socketpair()
	if err != nil {
		return res, fmt.Errorf("lazy self-test: %w", err)
	}
	defer ours.Close()
	daemon, err := c.StartLazyPages(ctx, criu.LazyPagesRequest{ImagesDir: imgs, WorkDir: work, PageServer: theirs})
	theirs.Close()
	if err != nil {
		res.Why = err.Error()
		return res, nil
	}
	defer daemon.Kill()
	var stats Stats
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, ours, snap, &stats) }()
	start := time.Now()
	rr, err := c.Restore(ctx, criu.Request{Opts: &rpc.CriuOpts{LazyPages: proto.Bool(true)}, ImagesDir: imgs, WorkDir: work})
	if err != nil {
		daemon.Kill()
		res.Why = err.Error()
		return res, nil
	}
	probe, err := unix.PidfdOpen(rr.Pid, 0)
	if err != nil {
		return res, fmt.Errorf("lazy self-test: the restored probe: %w", err)
	}
	defer unix.Close(probe)
	defer unix.PidfdSendSignal(probe, unix.SIGKILL, nil, 0) //nolint:errcheck // gone already, normally
	if err := waitDaemon(ctx, daemon, served); err != nil {
		res.Why = err.Error()
		return res, nil
	}
	res.Took, res.Served = time.Since(start), stats.Pages.Load()
	if err := checkProbe(ctx, probe, result); err != nil {
		res.Why = err.Error()
		return res, nil
	}
	if res.Served < probePages {
		res.Why = fmt.Sprintf("only %d pages were fetched lazily, fewer than the probe's %d", res.Served, probePages)
		return res, nil
	}
	res.Worked = true
	return res, nil
}

// waitDaemon waits until the daemon has every page (it exits 0, the
// server saw its close) or something fails.
func waitDaemon(ctx context.Context, d *criu.LazyPages, served <-chan error) error {
	select {
	case <-d.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := d.Wait(); err != nil {
		return err
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// checkProbe asks the probe to check its memory and reads its verdict.
func checkProbe(ctx context.Context, probe int, result string) error {
	if err := unix.PidfdSendSignal(probe, unix.SIGUSR1, nil, 0); err != nil {
		return fmt.Errorf("the restored probe: %w", err)
	}
	if err := waitExit(ctx, probe); err != nil {
		return fmt.Errorf("the restored probe: %w", err)
	}
	got, err := os.ReadFile(result)
	if err != nil {
		return fmt.Errorf("the restored probe left no verdict: %w", err)
	}
	if string(got) != "ok" {
		return fmt.Errorf("the restored probe's memory is not what it was: %s", got)
	}
	return nil
}

// waitExit waits until the process of pidfd fd has exited.
func waitExit(ctx context.Context, fd int) error {
	for {
		timeout := 100 // ms: how often ctx is looked at
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		if n > 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// socketpair is a connected pair of stream sockets.
func socketpair() (ours, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "lazy-pages"), os.NewFile(uintptr(fds[1]), "lazy-pages-criu"), nil
}

package postcopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
)

// SelfTestResult is what a self-test found.
type SelfTestResult struct {
	Worked bool          // the probe ran restored lazily, with every page as it was
	Lazy   int64         // pages the restore left to be fetched
	Served int64         // pages the page server answered with
	Took   time.Duration // restore until every page had arrived
	Why    string        // what failed, when it did not work
}

func (r SelfTestResult) String() string {
	if r.Worked {
		return fmt.Sprintf("a real lazy restore worked: %d pages fetched through phaul's page server in %v", r.Served, r.Took.Round(time.Millisecond))
	}
	return "a real lazy restore failed: " + r.Why
}

// SelfTest migrates a probe process through the whole post-copy chain on
// this host: it starts exe (a program that calls RunProbeIfAsked) as the
// probe, dumps it into dir, restores it with lazy pages, serves the
// pages with Serve to CRIU's lazy-pages daemon, and has the probe check
// its memory. dir must be empty; the caller removes it. An error is
// returned only when the test could not be run; a chain that fails is a
// result (Worked false, Why).
func SelfTest(ctx context.Context, c *criu.Client, dir, exe string) (SelfTestResult, error) {
	imgs, work := filepath.Join(dir, "images"), filepath.Join(dir, "work")
	for _, d := range []string{imgs, work} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return SelfTestResult{}, fmt.Errorf("lazy self-test: %w", err)
		}
	}
	if err := dumpProbe(ctx, c, exe, imgs, work, filepath.Join(dir, "result")); err != nil {
		return SelfTestResult{Why: err.Error()}, nil
	}
	return lazyRestoreProbe(ctx, c, imgs, work, filepath.Join(dir, "result"))
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

// lazyRestoreProbe restores the dumped probe with lazy pages served from
// its own images, waits until every page has arrived, and has the probe
// check its memory.
func lazyRestoreProbe(ctx context.Context, c *criu.Client, imgs, work, result string) (SelfTestResult, error) {
	snap, err := OpenSnapshot(imgs)
	if err != nil {
		return SelfTestResult{}, fmt.Errorf("lazy self-test: %w", err)
	}
	defer snap.Close()
	res := SelfTestResult{Lazy: snap.Lazy()}
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

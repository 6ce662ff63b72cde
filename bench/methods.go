package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/phaul/phaul/internal/testutil"
)

const (
	methodPhaul    = "phaul"         // phaul migrate as it comes: pre-copy (auto)
	methodPhaulOff = "phaul-off"     // phaul migrate --precopy=off
	methodPostcopy = "phaul-post"    // phaul migrate --postcopy --precopy=off
	methodPrePost  = "phaul-prepost" // phaul migrate --postcopy --precopy=on
	methodCRIU     = "criu"
	methodManual   = "manual"
)

// sample is one migration by one method. Times in seconds.
type sample struct {
	Downtime  float64 `json:"downtime"` // frozen until running again
	Total     float64 `json:"total"`    // the whole operation
	Dump      float64 `json:"dump"`
	Transfer  float64 `json:"transfer"`
	Restore   float64 `json:"restore"`
	PageBytes int64   `json:"page_bytes"` // pages as CRIU wrote them
	WireBytes int64   `json:"wire_bytes"` // what crossed the link (0: nothing did)
	// phaul only: its own CPU time on each side (CRIU not included),
	// and the time it spent while the tree was frozen outside CRIU's
	// dump and restore.
	CPUSource float64 `json:"cpu_source,omitempty"`
	CPUDest   float64 `json:"cpu_dest,omitempty"`
	Overhead  float64 `json:"overhead,omitempty"`
	// phaul with pre-copy: the rounds, their bytes on the wire, and the
	// share of the tree's pages that still crossed while it was frozen.
	Rounds     float64 `json:"rounds,omitempty"`
	RoundWire  int64   `json:"round_wire_bytes,omitempty"`
	FrozenPart float64 `json:"frozen_part,omitempty"`
	StopRule   string  `json:"stop_rule,omitempty"`
	// phaul with pre-copy moves the workload's address with it: the
	// longest wait between two answers its client saw, asking every 5 ms
	// on one connection through the migration.
	ClientPause float64 `json:"client_pause,omitempty"`
	// phaul --postcopy: from the restore until the last page had
	// arrived (the copy ran meanwhile, depending on the source).
	AllPages float64 `json:"all_pages,omitempty"`
	// Of the pages that followed the restore, those fetched from the
	// source, and (after pre-copy rounds) those the destination held.
	LazyFetched int64 `json:"lazy_fetched,omitempty"`
	LazyHeld    int64 `json:"lazy_held,omitempty"`
}

func (b *bench) migrate(ctx context.Context, method string, mib, dirty int) (sample, error) {
	listen := ""
	if method == methodPhaul {
		if err := b.addServiceAddr(ctx); err != nil {
			return sample{}, err
		}
		listen = serviceAddr + ":" + clientPort
	}
	w, err := b.startWorkload(ctx, mib, dirty, listen)
	if err != nil {
		return sample{}, err
	}
	defer b.kill(w.pid)
	switch method {
	case methodPhaul:
		return b.phaulWithClient(ctx, w)
	case methodPhaulOff:
		return b.phaul(ctx, w, "off", nil)
	case methodPostcopy:
		return b.phaul(ctx, w, "off", nil, "--postcopy")
	case methodPrePost:
		return b.phaul(ctx, w, "on", nil, "--postcopy")
	case methodCRIU:
		return b.criuAlone(ctx, w)
	default:
		return b.manual(ctx, w)
	}
}

// phaulReport is the part of `phaul migrate --json` the bench reads.
type phaulReport struct {
	DestPid   int     `json:"dest_pid"`
	Running   bool    `json:"running"`
	Dump      float64 `json:"dump"`
	Transfer  float64 `json:"transfer"`
	Restore   float64 `json:"restore"`
	Downtime  float64 `json:"downtime"`
	Total     float64 `json:"total"`
	CPU       float64 `json:"cpu"`
	PageBytes int64   `json:"page_bytes"`
	WireBytes int64   `json:"wire_bytes"`
	Error     string  `json:"error"`
	Rounds    []struct {
		WireBytes int64 `json:"wire_bytes"`
	} `json:"rounds"`
	StopRule      string  `json:"stop_rule"`
	Referenced    int64   `json:"referenced_pages"`
	AllPagesAfter float64 `json:"all_pages_after"`
	LazyFetched   int64   `json:"lazy_fetched"`
	LazyHeld      int64   `json:"lazy_held"`
}

// phaulWithClient is phaul with pre-copy, moving the workload's address
// with it while a client asks through the migration.
func (b *bench) phaulWithClient(ctx context.Context, w *workload) (sample, error) {
	defer b.removeServiceAddr()
	client := b.on("c", b.self, clientCommand, serviceAddr+":"+clientPort)
	var out bytes.Buffer
	client.Stdout = &out
	stderr, err := client.StderrPipe()
	if err != nil {
		return sample{}, err
	}
	if err := client.Start(); err != nil {
		return sample{}, err
	}
	defer client.Process.Kill()
	ready, said := make(chan struct{}), make(chan string, 1)
	go func() {
		var other []string
		for sc := bufio.NewScanner(stderr); sc.Scan(); {
			if sc.Text() == "ready" {
				close(ready)
			} else {
				other = append(other, sc.Text())
			}
		}
		said <- strings.Join(other, "\n")
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		client.Process.Kill()
		return sample{}, fmt.Errorf("the client got no answer: %s", <-said)
	}
	// The client stops while the moved workload still runs (phaul's
	// runs kill it once measured).
	var pause float64
	stopClient := func() error {
		client.Process.Signal(syscall.SIGTERM)
		stderrText := <-said
		client.Wait()
		var res clientResult
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			return fmt.Errorf("the client printed %q (%v): %s", out.String(), err, stderrText)
		}
		if res.Error != "" {
			return fmt.Errorf("the client's connection: %s", res.Error)
		}
		pause = res.MaxGap
		return nil
	}
	s, err := b.phaul(ctx, w, "auto", stopClient, "--move-address", serviceAddr)
	s.ClientPause = pause
	return s, err
}

// phaul moves w with phaul migrate (--precopy=precopy and flags); moved,
// if not nil, runs once the moved workload is verified, before it is
// killed.
func (b *bench) phaul(ctx context.Context, w *workload, precopy string, moved func() error, flags ...string) (sample, error) {
	cpu0 := cpuOf(b.svc.Process.Pid)
	args := append([]string{filepath.Join(b.bin, "phaul"), "migrate", "--json", "--tls-dir", b.tls, "--precopy", precopy,
		"--work-dir", filepath.Join(b.dir, "source")}, flags...)
	cmd := b.on("a", append(args, strconv.Itoa(w.pid), addrB+":"+servicePort)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		return sample{}, err
	}
	stop := context.AfterFunc(ctx, func() { cmd.Process.Signal(os.Interrupt) })
	err := cmd.Wait()
	stop()
	var r phaulReport
	if jerr := json.Unmarshal(out.Bytes(), &r); jerr != nil {
		return sample{}, fmt.Errorf("phaul migrate: %v (%v): %s%s", err, jerr, out.String(), tail(errOut.String(), 20))
	}
	if err != nil || !r.Running {
		return sample{}, fmt.Errorf("phaul migrate: %v: %s", err, r.Error)
	}
	b.track(r.DestPid)
	defer b.kill(r.DestPid)
	cpuDest := cpuOf(b.svc.Process.Pid) - cpu0
	if err := verify(ctx, w, r.DestPid); err != nil {
		return sample{}, err
	}
	if moved != nil {
		if err := moved(); err != nil {
			return sample{}, err
		}
	}
	s := sample{
		Downtime: r.Downtime, Total: r.Total, Dump: r.Dump, Transfer: r.Transfer, Restore: r.Restore,
		PageBytes: r.PageBytes, WireBytes: r.WireBytes,
		CPUSource: r.CPU, CPUDest: cpuDest.Seconds(),
		Overhead: r.Downtime - r.Dump - r.Restore,
		Rounds:   float64(len(r.Rounds)), StopRule: r.StopRule,
		AllPages: r.AllPagesAfter, LazyFetched: r.LazyFetched, LazyHeld: r.LazyHeld,
	}
	for _, rd := range r.Rounds {
		s.RoundWire += rd.WireBytes
	}
	// Post-copy: what did not cross while frozen followed the restore.
	if pages := r.PageBytes / 4096; pages > 0 && r.AllPagesAfter == 0 {
		s.FrozenPart = 1 - float64(r.Referenced)/float64(pages)
	}
	return s, nil
}

// criuAlone is baseline (a): dump to a tmpfs and restore on the same host,
// with the criu command line. Nothing crosses a link.
func (b *bench) criuAlone(ctx context.Context, w *workload) (sample, error) {
	dir, err := os.MkdirTemp(b.shm, "criu-")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(dir)
	dump, restore, pid, err := b.dumpRestore(ctx, w, dir, "a", dir, nil)
	if err != nil {
		return sample{}, err
	}
	defer b.kill(pid)
	if err := verify(ctx, w, pid); err != nil {
		return sample{}, err
	}
	return sample{Downtime: (dump + restore).Seconds(), Total: (dump + restore).Seconds(),
		Dump: dump.Seconds(), Restore: restore.Seconds(), PageBytes: pagesSize(dir)}, nil
}

// manual is baseline (b): `criu dump` to a directory, tar over TCP to the
// other host, `criu restore` there.
func (b *bench) manual(ctx context.Context, w *workload) (sample, error) {
	base, err := os.MkdirTemp(b.dir, "manual-")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(base)
	src, dst := filepath.Join(base, "dump"), filepath.Join(base, "received")
	for _, d := range []string{src, dst} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return sample{}, err
		}
	}
	var sent int64
	var xfer time.Duration
	copyImages := func() error {
		var err error
		sent, xfer, err = b.copyOver(ctx, "tar -C "+src+" -cf - .", dst)
		return err
	}
	dump, restore, pid, err := b.dumpRestore(ctx, w, src, "b", dst, copyImages)
	if err != nil {
		return sample{}, err
	}
	defer b.kill(pid)
	if err := verify(ctx, w, pid); err != nil {
		return sample{}, err
	}
	total := dump + xfer + restore
	return sample{Downtime: total.Seconds(), Total: total.Seconds(), Dump: dump.Seconds(),
		Transfer: xfer.Seconds(), Restore: restore.Seconds(), PageBytes: pagesSize(src), WireBytes: sent}, nil
}

// dumpRestore dumps w on host a into dumpDir with the criu command line,
// runs between (the copy, if any), and restores from restoreDir on host
// restoreOn. It returns the restored root's PID.
func (b *bench) dumpRestore(ctx context.Context, w *workload, dumpDir, restoreOn, restoreDir string, between func() error) (dump, restore time.Duration, pid int, err error) {
	dump, err = b.runOn(ctx, "a", b.criu, "dump", "-t", strconv.Itoa(w.pid), "-D", dumpDir, "-o", "dump.log", "-v2")
	if err != nil {
		return 0, 0, 0, fmt.Errorf("criu dump: %w%s", err, criuLog(dumpDir, "dump.log"))
	}
	if err := testutil.WaitGone(w.pid, 30*time.Second); err != nil {
		return 0, 0, 0, err
	}
	if between != nil {
		if err := between(); err != nil {
			return 0, 0, 0, err
		}
	}
	pidfile := filepath.Join(b.dir, fmt.Sprintf("restored-%d.pid", w.pid))
	restore, err = b.runOn(ctx, restoreOn, b.criu, "restore", "-D", restoreDir, "-d", "--pidfile", pidfile, "-o", "restore.log", "-v2")
	if data, rerr := os.ReadFile(pidfile); rerr == nil {
		pid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		b.track(pid)
		os.Remove(pidfile)
	}
	if err != nil {
		if pid > 0 {
			b.kill(pid)
		}
		return 0, 0, 0, fmt.Errorf("criu restore: %w%s", err, criuLog(restoreDir, "restore.log"))
	}
	if pid <= 0 {
		return 0, 0, 0, fmt.Errorf("criu restore wrote no pid to %s", pidfile)
	}
	return dump, restore, pid, nil
}

func criuLog(dir, name string) string {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return ""
	}
	return "\n" + tail(string(data), 15)
}

// pagesSize is the size of the pages images CRIU wrote in dir.
func pagesSize(dir string) int64 {
	files, _ := filepath.Glob(filepath.Join(dir, "pages-*.img"))
	var n int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			n += fi.Size()
		}
	}
	return n
}

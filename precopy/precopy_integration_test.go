package precopy

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/testutil"
)

// These tests run real CRIU on a real workload, as root, on one host: the
// rounds and the final dump go to real CRIU page servers over socketpairs
// (the network is the migrate package's business), and CRIU's restore
// reads the chain of images. The workload checks its own memory after
// the restore.

// pageServer starts a CRIU page server writing into dir, whose parent
// images (if parent is not "") are in the sibling directory parent. It
// returns the socket to write the page stream to.
func pageServer(t *testing.T, c *criu.Client, dir, parent string) (*os.File, *criu.PageServer) {
	t.Helper()
	imagesDir(t, dir, parent)
	mine, theirs := testutil.Socketpair(t)
	// As the destination runs them: a page stored again frees its older
	// copy in the images below.
	opts := &rpc.CriuOpts{AutoDedup: proto.Bool(parent != "")}
	ps, err := c.StartPageServer(context.Background(), criu.Request{ImagesDir: dir, PageServer: theirs, Opts: opts})
	if err != nil {
		t.Fatalf("page server: %v", err)
	}
	t.Cleanup(func() { ps.Close() })
	theirs.Close()
	return mine, ps
}

// round runs one pre-copy round of the tree into dir.
func round(t *testing.T, c *criu.Client, h *Hasher, tab *Table, root int, dir, parent string) RoundStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sock, ps := pageServer(t, c, dir, parent)
	e := NewEncoder(bufio.NewWriterSize(sock, 1<<20), h, tab, true)
	replies := make(chan error, 1)
	go func() { replies <- e.Replies(ctx, sock, nil) }()
	tasks, err := Tasks(root)
	if err != nil {
		t.Fatal(err)
	}
	st, err := Round(ctx, e, tasks)
	if err != nil {
		t.Fatalf("round into %s: %v", dir, err)
	}
	if err := <-replies; err != nil {
		t.Fatalf("replies: %v", err)
	}
	if err := ps.Wait(ctx); err != nil {
		t.Fatalf("page server of %s: %v", dir, err)
	}
	tab.Sweep()
	return st
}

// finalDump dumps the tree with CRIU through Forward into dir (parent: the
// last round), copies the other images there, and restores.
func finalDump(t *testing.T, c *criu.Client, h *Hasher, tab *Table, w *testutil.Workload, dir, parent string, corrupt func(dst, vaddr uint64) bool) (Stats, testutil.State, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sock, ps := pageServer(t, c, dir, parent)
	dumpEnd, pumpEnd := testutil.Socketpair(t)
	e := NewEncoder(bufio.NewWriterSize(sock, 1<<20), h, tab, false)
	e.corrupt = corrupt
	fwd, replies := make(chan error, 1), make(chan error, 1)
	go func() {
		err := e.Forward(pumpEnd)
		if err == nil {
			err = e.w.Flush()
		}
		fwd <- err
	}()
	go func() { replies <- e.Replies(ctx, sock, pumpEnd) }()

	src := t.TempDir()
	pid := w.Cmd.Process.Pid
	if _, err := c.Dump(ctx, criu.Request{ImagesDir: src, PageServer: dumpEnd, Opts: &rpc.CriuOpts{Pid: proto.Int32(int32(pid))}}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	dumpEnd.Close()
	if err := <-fwd; err != nil {
		t.Fatalf("forward: %v", err)
	}
	if err := <-replies; err != nil {
		t.Fatalf("replies: %v", err)
	}
	if err := ps.Wait(ctx); err != nil {
		t.Fatalf("page server: %v", err)
	}
	checkPruned(t, dir, e.Stats().Pages)
	if corrupt != nil && e.corrupted != 1 {
		t.Fatalf("the hook corrupted %d references, want 1 (no page of the area changed after the last round?); %+v", e.corrupted, e.Stats())
	}
	dumped, err := testutil.ReadState(w.State)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{dumped.Pid, dumped.ChildPid} {
		if err := testutil.WaitReaped(p, 10*time.Second); p > 0 && err != nil {
			t.Fatal(err)
		}
	}
	copyImages(t, src, dir)
	res, err := c.Restore(ctx, criu.Request{ImagesDir: dir})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	return e.Stats(), dumped, res.Pid
}

// tmpfs mounts a tmpfs for a test's images, as the destination keeps
// them: its blocks are the pages it holds, no more.
func tmpfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("phaul-test", dir, "tmpfs", 0, "size=512m,mode=0700"); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// checkDeduplicated checks that the chain below top holds each task page
// the rounds stored once: a page a round stored again is no longer in the
// image below it (CRIU's auto-dedup, as the page was written).
func checkDeduplicated(t *testing.T, top string) {
	t.Helper()
	chain, err := readChain(top)
	if err != nil {
		t.Fatal(err)
	}
	held, err := chainHeld(chain)
	if err != nil {
		t.Fatal(err)
	}
	var union int64
	for _, name := range chainNames(chain) {
		var all []extent
		for _, lvl := range chain {
			if pm := lvl.maps[name]; pm != nil {
				all = unite(all, pm.extents(criu.PEPresent))
			}
		}
		for _, x := range all {
			union += int64(x.end-x.start) / criu.PageSize
		}
	}
	if held != union*criu.PageSize {
		t.Errorf("the rounds' images hold %d pages, want %d: each page stored once", held/criu.PageSize, union)
	}
}

// unite merges two sorted lists of disjoint extents.
func unite(a, b []extent) []extent {
	all := append(append([]extent(nil), a...), b...)
	slices.SortFunc(all, func(x, y extent) int { return cmpU64(x.start, y.start) })
	var out []extent
	for _, x := range all {
		if k := len(out); k > 0 && x.start <= out[k-1].end {
			out[k-1].end = max(out[k-1].end, x.end)
			continue
		}
		out = append(out, x)
	}
	return out
}

// checkPruned prunes the chain below the dump's images and checks that it
// then holds exactly the pages the dump covers, each once.
func checkPruned(t *testing.T, top string, pages int64) {
	t.Helper()
	p, err := Prune(top)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("prune freed %d pages; the chain holds %d", p.Pages, p.Held/criu.PageSize)
	if p.Held != pages*criu.PageSize {
		t.Errorf("the chain holds %d pages, the dump covers %d: want one copy of each", p.Held/criu.PageSize, pages)
	}
}

func copyImages(t *testing.T, src, dst string) {
	t.Helper()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".img") {
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
}

// memorySum asks the restored workload to check its memory.
func memorySum(t *testing.T, w *testutil.Workload, pid int) string {
	t.Helper()
	os.Remove(w.State + ".sum")
	if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if sum, err := os.ReadFile(w.State + ".sum"); err == nil && len(sum) > 0 {
			return strings.TrimSpace(string(sum))
		}
		if time.Now().After(deadline) {
			t.Fatal("the restored workload wrote no memory check")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// precopyRun pre-copies a workload dirtying its memory in two rounds,
// dumps it through Forward and restores it from the chain.
func precopyRun(t *testing.T, corrupt bool) (first, second RoundStats, final Stats, sum string) {
	t.Helper()
	c, _ := testutil.CRIU(t)
	w := testutil.StartWorkload(t, testutil.WorkloadOptions{Child: true, ExtraArgs: []string{"--mem", "32", "--dirty", "1000"}})
	h, err := NewHasher()
	if err != nil {
		t.Fatal(err)
	}
	tab := NewTable()
	root := tmpfs(t)
	pid := w.Cmd.Process.Pid
	first = round(t, c, h, tab, pid, filepath.Join(root, "1"), "")
	second = round(t, c, h, tab, pid, filepath.Join(root, "2"), "1")
	checkDeduplicated(t, filepath.Join(root, "2"))
	if _, err := Prune(filepath.Join(root, "2")); err != nil {
		t.Fatal(err)
	}
	// Let the workload rewrite some pages after the last round, so the
	// final dump has changed pages to send (and, with corrupt, one to
	// refer to wrongly).
	st, err := testutil.ReadState(w.State)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testutil.WaitCount(w.State, st.Count+10, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	var hook func(dst, vaddr uint64) bool
	if corrupt {
		hook = inArea(t, w, pid)
	}
	final, dumped, restored := finalDump(t, c, h, tab, w, filepath.Join(root, "final"), "2", hook)
	if restored != dumped.Pid {
		t.Errorf("restored pid %d, dumped %d", restored, dumped.Pid)
	}
	return first, second, final, memorySum(t, w, restored)
}

// inArea accepts the addresses of the workload's checked memory area in
// its root task.
func inArea(t *testing.T, w *testutil.Workload, pid int) func(dst, vaddr uint64) bool {
	t.Helper()
	data, err := os.ReadFile(w.State + ".mem")
	if err != nil {
		t.Fatal(err)
	}
	var start, size uint64
	if _, err := fmt.Sscanf(string(data), "%x %d", &start, &size); err != nil {
		t.Fatalf("%s: %v", w.State+".mem", err)
	}
	tasks, err := Tasks(pid)
	if err != nil {
		t.Fatal(err)
	}
	root := criu.PageDst(criu.PSTypePid, tasks[0].ID)
	for _, task := range tasks {
		if task.Pid == pid {
			root = criu.PageDst(criu.PSTypePid, task.ID)
		}
	}
	return func(dst, vaddr uint64) bool { return dst == root && vaddr >= start && vaddr < start+size }
}

func TestPrecopyChainRestores(t *testing.T) {
	first, second, final, sum := precopyRun(t, false)
	t.Logf("round 1 %+v; round 2 %+v; final %+v; %s", first, second, final, sum)
	if !strings.HasPrefix(sum, "sum=ok pages=8192") {
		t.Fatalf("memory check after restore: %q", sum)
	}
	// 32 MiB are 8192 pages, plus the Go runtime's and two tasks' own.
	if first.Pages < 8192 || first.Referenced != 0 || first.Images != 2 {
		t.Errorf("round 1: %+v: want every page sent, two tasks", first)
	}
	if second.Referenced < first.Pages*8/10 {
		t.Errorf("round 2 referred to %d of %d pages: want most unchanged", second.Referenced, second.Pages)
	}
	if final.Referenced < final.Pages*8/10 || final.Sent == 0 {
		t.Errorf("final dump: %+v: want most pages by reference, the rewritten ones sent", final)
	}
}

// The workload's memory check catches a wrong reference: the test hook
// makes the final dump refer to the parent for one page that changed.
func TestPrecopyWrongReferenceIsCaught(t *testing.T) {
	_, _, _, sum := precopyRun(t, true)
	if !strings.HasPrefix(sum, "sum=BAD") {
		t.Fatalf("memory check after a corrupted reference: %q, want BAD", sum)
	}
}

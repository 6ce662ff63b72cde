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
func pageServer(t testing.TB, c *criu.Client, dir, parent string) (*os.File, *criu.PageServer) {
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
func round(t testing.TB, c *criu.Client, h *Hasher, tab *Table, root int, dir, parent string) RoundStats {
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

// dumpOpts choose how finalDump's page stream reaches the page server.
type dumpOpts struct {
	// corrupt is a test hook: the references it accepts go wrong.
	corrupt func(dst, vaddr uint64) bool
	// expand, if set, is design (a) (expand_test.go): the references
	// are expanded from the images of this round into a page server
	// without parent, and the restore reads those flat images.
	expand string
}

// frozen are the two steps of a final dump and restore that a migration
// spends with the tree frozen, on the destination's side of the network.
type frozen struct{ dump, restore time.Duration }

// finalDump dumps the tree with CRIU through Forward into dir (parent: the
// last round), copies the other images there, and restores.
func finalDump(t testing.TB, c *criu.Client, h *Hasher, tab *Table, w *testutil.Workload, dir, parent string, o dumpOpts) (Stats, testutil.State, int, frozen) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	psParent := parent
	if o.expand != "" {
		psParent = ""
	}
	sock, ps := pageServer(t, c, dir, psParent)
	expanded := make(chan error, 1)
	if o.expand != "" {
		x, err := newExpander(o.expand)
		if err != nil {
			t.Fatal(err)
		}
		defer x.close()
		mine, theirs := testutil.Socketpair(t)
		go func(out *os.File) {
			err := x.run(theirs, out)
			if err != nil {
				// Unblock the encoder, hence CRIU's dump.
				theirs.Close()
			}
			expanded <- err
		}(sock)
		sock = mine
	} else {
		expanded <- nil
	}
	dumpEnd, pumpEnd := testutil.Socketpair(t)
	e := NewEncoder(bufio.NewWriterSize(sock, 1<<20), h, tab, false)
	e.corrupt = o.corrupt
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
	t0 := time.Now()
	if _, err := c.Dump(ctx, criu.Request{ImagesDir: src, PageServer: dumpEnd, Opts: &rpc.CriuOpts{Pid: proto.Int32(int32(pid))}}); err != nil {
		select {
		case xerr := <-expanded:
			t.Fatalf("dump: %v (expanding: %v)", err, xerr)
		default:
		}
		t.Fatalf("dump: %v", err)
	}
	dumpEnd.Close()
	for _, ch := range []chan error{fwd, replies, expanded} {
		if err := <-ch; err != nil {
			t.Fatalf("forward: %v", err)
		}
	}
	if err := ps.Wait(ctx); err != nil {
		t.Fatalf("page server: %v", err)
	}
	var times frozen
	times.dump = time.Since(t0)
	if o.expand == "" {
		checkPruned(t, dir, e.Stats().Pages)
	}
	if o.corrupt != nil && e.corrupted != 1 {
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
	t0 = time.Now()
	res, err := c.Restore(ctx, criu.Request{ImagesDir: dir})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	times.restore = time.Since(t0)
	return e.Stats(), dumped, res.Pid, times
}

// tmpfs mounts a tmpfs for a test's images, as the destination keeps
// them: its blocks are the pages it holds, no more.
func tmpfs(t testing.TB) string { return tmpfsOf(t, 512<<20) }

// tmpfsOf is tmpfs of size bytes.
func tmpfsOf(t testing.TB, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("phaul-test", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
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
func checkPruned(t testing.TB, top string, pages int64) {
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

func copyImages(t testing.TB, src, dst string) {
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
func memorySum(t testing.TB, w *testutil.Workload, pid int) string {
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

// precopyRun pre-copies a workload dirtying its memory (of this kind, as
// the workload's --mem-kind) in two rounds, dumps it through Forward and
// restores it from the chain.
func precopyRun(t *testing.T, kind string, corrupt bool) (first, second RoundStats, final Stats, sum string) {
	t.Helper()
	c, _ := testutil.CRIU(t)
	w := testutil.StartWorkload(t, testutil.WorkloadOptions{
		Child: true, IPCNS: kind == "sysv",
		ExtraArgs: []string{"--mem", "32", "--dirty", "1000", "--mem-kind", kind},
	})
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
	letItWrite(t, w)
	var o dumpOpts
	if corrupt {
		o.corrupt = inArea(t, w, pid)
	}
	final, dumped, restored, _ := finalDump(t, c, h, tab, w, filepath.Join(root, "final"), "2", o)
	if restored != dumped.Pid {
		t.Errorf("restored pid %d, dumped %d", restored, dumped.Pid)
	}
	return first, second, final, memorySum(t, w, restored)
}

// inArea accepts the image addresses of the workload's checked memory
// area: in its root task's image, or in its shared memory object's.
func inArea(t testing.TB, w *testutil.Workload, pid int) func(dst, vaddr uint64) bool {
	t.Helper()
	data, err := os.ReadFile(w.State + ".mem")
	if err != nil {
		t.Fatal(err)
	}
	var start, size uint64
	if _, err := fmt.Sscanf(string(data), "%x %d", &start, &size); err != nil {
		t.Fatalf("%s: %v", w.State+".mem", err)
	}
	_, shared, err := regions(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shared {
		if s.start == start {
			dst := criu.PageDst(criu.PSTypeShmem, s.id)
			return func(d, off uint64) bool { return d == dst && off >= s.off && off < s.off+size }
		}
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

// The area's memory kinds: CRIU dumps the last three as shmem images,
// which the rounds pre-copy too.
var memKinds = []string{"private", "shared", "memfd", "sysv"}

func TestPrecopyChainRestores(t *testing.T) {
	for _, kind := range memKinds {
		t.Run(kind, func(t *testing.T) {
			first, second, final, sum := precopyRun(t, kind, false)
			t.Logf("round 1 %+v; round 2 %+v; final %+v; %s", first, second, final, sum)
			if !strings.HasPrefix(sum, "sum=ok pages=8192") {
				t.Fatalf("memory check after restore: %q", sum)
			}
			// 32 MiB are 8192 pages, plus the Go runtime's and two
			// tasks' own; shared memory is one image more.
			images := 2
			if kind != "private" {
				images = 3
			}
			if first.Pages < 8192 || first.Referenced != 0 || first.Images != images {
				t.Errorf("round 1: %+v: want every page sent, %d images", first, images)
			}
			if second.Referenced < first.Pages*8/10 {
				t.Errorf("round 2 referred to %d of %d pages: want most unchanged", second.Referenced, second.Pages)
			}
			if final.Referenced < final.Pages*8/10 || final.Sent == 0 {
				t.Errorf("final dump: %+v: want most pages by reference, the rewritten ones sent", final)
			}
		})
	}
}

// The workload's memory check catches a wrong reference: the test hook
// makes the final dump refer to the parent for one page that changed, in
// the task's memory or in shared memory.
func TestPrecopyWrongReferenceIsCaught(t *testing.T) {
	for _, kind := range []string{"private", "shared"} {
		t.Run(kind, func(t *testing.T) {
			_, _, _, sum := precopyRun(t, kind, true)
			if !strings.HasPrefix(sum, "sum=BAD") {
				t.Fatalf("memory check after a corrupted reference: %q, want BAD", sum)
			}
		})
	}
}

// letItWrite waits until the workload has gone on writing for ten counts:
// the final dump then has changed pages to send.
func letItWrite(t testing.TB, w *testutil.Workload) {
	t.Helper()
	st, err := testutil.ReadState(w.State)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testutil.WaitCount(w.State, st.Count+10, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

package precopy

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/testutil"
)

// designRun pre-copies a workload of mib MiB dirtying 1000 pages/s in one
// round, then dumps it through Forward and restores it, as design (b) (the
// dump's page server builds on the round's images, the restore reads the
// chain) or, with expand, as design (a) (expand_test.go: the references
// expanded from the round's images into flat images). It returns the
// workload's memory check after the restore and the frozen steps' times.
func designRun(t testing.TB, c *criu.Client, mib int, expand bool) (string, Stats, frozen) {
	t.Helper()
	w := testutil.StartWorkload(t, testutil.WorkloadOptions{ExtraArgs: []string{"--mem", fmt.Sprint(mib), "--dirty", "1000"}})
	h, err := NewHasher()
	if err != nil {
		t.Fatal(err)
	}
	tab := NewTable()
	root := tmpfsOf(t, int64(mib)<<21+256<<20)
	pid := w.Cmd.Process.Pid
	round(t, c, h, tab, pid, filepath.Join(root, "1"), "")
	// What the tree rewrites between the last round and the freeze.
	letItWrite(t, w)
	var o dumpOpts
	if expand {
		o.expand = filepath.Join(root, "1")
	}
	final, dumped, restored, times := finalDump(t, c, h, tab, w, filepath.Join(root, "final"), "1", o)
	if restored != dumped.Pid {
		t.Errorf("restored pid %d, dumped %d", restored, dumped.Pid)
	}
	return memorySum(t, w, restored), final, times
}

// TestPrecopyDesignA: design (a), built to be measured, restores the tree
// intact: its expansion is not the reason it was not kept.
func TestPrecopyDesignA(t *testing.T) {
	c, _ := testutil.CRIU(t)
	sum, final, times := designRun(t, c, 32, true)
	t.Logf("final %+v; dump %v, restore %v", final, times.dump, times.restore)
	if !strings.HasPrefix(sum, "sum=ok pages=8192") {
		t.Fatalf("memory check after a restore from expanded images: %q", sum)
	}
	if final.Referenced < final.Pages*8/10 {
		t.Errorf("final dump: %+v: want most pages by reference (expanded)", final)
	}
}

// BenchmarkDesigns measures what the two designs of issue #14 cost while
// the tree is frozen, on the destination's side (the network carries the
// same references in both): the dump through Forward into the page server
// (design (a) also expands every reference from its store there), then
// CRIU's restore (from the chain in (b), from flat images in (a)). The two
// designs alternate, on fresh workloads of the same size.
func BenchmarkDesigns(b *testing.B) {
	c, _ := testutil.CRIU(b)
	for _, mib := range []int{256, 1024} {
		for _, d := range []struct {
			name   string
			expand bool
		}{{"b-chain", false}, {"a-expand", true}} {
			b.Run(fmt.Sprintf("%dMiB/%s", mib, d.name), func(b *testing.B) {
				var dump, restore time.Duration
				n := 0
				for b.Loop() {
					sum, _, times := designRun(b, c, mib, d.expand)
					if !strings.HasPrefix(sum, "sum=ok") {
						b.Fatalf("memory check: %q", sum)
					}
					dump, restore, n = dump+times.dump, restore+times.restore, n+1
				}
				b.ReportMetric(dump.Seconds()/float64(n), "dump-s")
				b.ReportMetric(restore.Seconds()/float64(n), "restore-s")
				b.ReportMetric((dump+restore).Seconds()/float64(n), "frozen-s")
			})
		}
	}
}

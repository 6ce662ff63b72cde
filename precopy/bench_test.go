package precopy

import (
	"crypto/rand"
	"runtime"
	"testing"

	"github.com/phaul/phaul/criu"
)

// BenchmarkHash is the keyed hash of one page: what the source spends per
// page while the tree is frozen, beside CRIU's own dump.
func BenchmarkHash(b *testing.B) {
	h, err := NewHasher()
	if err != nil {
		b.Fatal(err)
	}
	page := make([]byte, criu.PageSize)
	rand.Read(page)
	b.SetBytes(criu.PageSize)
	for b.Loop() {
		h.Sum(page)
	}
}

// BenchmarkTableMemory measures the source's memory for the table of a
// 1 GiB tree of four tasks, as a share of the tree (bound: 2%).
func BenchmarkTableMemory(b *testing.B) {
	const pages = 1 << 18
	var share float64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		t := NewTable()
		t.begin()
		var sum Sum
		for i := uint64(0); i < pages; i++ {
			sum[0], sum[1] = byte(i), byte(i>>8)
			t.put(criu.PageDst(criu.PSTypePid, 1+i%4), 0x7f0000000000+(i/4)*criu.PageSize, sum)
		}
		t.Sweep()
		runtime.GC()
		runtime.ReadMemStats(&after)
		share = float64(after.HeapAlloc-before.HeapAlloc) / float64(pages*criu.PageSize)
		runtime.KeepAlive(t)
	}
	b.ReportMetric(share*100, "%-of-tree")
}

package migrate

import "testing"

// The warm-up's size comes from the source: it never takes more than half
// of the memory available here, whatever the source announced.
func TestWarmSize(t *testing.T) {
	for _, c := range []struct{ want, available, got uint64 }{
		{1 << 30, 8 << 30, 1 << 30},
		{1 << 40, 8 << 30, 4 << 30},
		{1 << 30, 0, 0},
		{4097, 1 << 30, 4096},
	} {
		if got := warmSize(c.want, c.available); got != c.got {
			t.Errorf("warmSize(%d, %d) = %d, want %d", c.want, c.available, got, c.got)
		}
	}
	if memAvailable() == 0 {
		t.Error("MemAvailable not read from /proc/meminfo")
	}
	w := warm(8 << 20)
	if w == nil || len(w.mem) != 8<<20 {
		t.Fatalf("warm(8 MiB) = %+v", w)
	}
	w.release()
	w.release() // twice is harmless
}

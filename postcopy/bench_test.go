package postcopy

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pagemap"
	"github.com/phaul/phaul/precopy"
)

// roundTable records data (pages of task 1 at 0x10000) as a pre-copy
// round would: the table the source keeps of what the destination holds.
func roundTable(tb testing.TB, h *precopy.Hasher, data []byte) *precopy.Table {
	tb.Helper()
	tab := precopy.NewTable()
	round := precopy.NewEncoder(discard{}, h, tab, true)
	// The page server: no parent image, then status 0 at the close.
	go round.Replies(context.Background(), bytes.NewReader([]byte{0, 0, 0, 0, 0}), nil)
	for _, step := range []func() (<-chan error, error){
		func() (<-chan error, error) { return round.Open(criu.PageDst(criu.PSTypePid, 1)) },
		func() (<-chan error, error) { return nil, round.Pages(0x10000, data) },
		round.Close,
	} {
		done, err := step()
		if err == nil && done != nil {
			err = <-done
		}
		if err != nil {
			tb.Fatal(err)
		}
	}
	tab.Sweep()
	return tab
}

// writeLazySnapshot writes a snapshot of task 1 holding data at 0x10000,
// all lazy, into a directory in dir, and opens it.
func writeLazySnapshot(tb testing.TB, dir string, data []byte) *Snapshot {
	tb.Helper()
	snap, err := os.MkdirTemp(dir, "snapshot-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(snap) })
	pm := pagemap.Encode(1, []pagemap.Entry{{Start: 0x10000, End: 0x10000 + uint64(len(data)), Flags: criu.PEPresent | criu.PELazy}})
	for name, content := range map[string][]byte{"pagemap-1.img": pm, "pages-1.img": data} {
		if err := os.WriteFile(filepath.Join(snap, name), content, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	s, err := OpenSnapshot(snap)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkClassify is the source's work after the restore of a
// post-copy migration after pre-copy rounds: every lazy page of the
// snapshot (in a tmpfs) hashed and looked up in the rounds' table; 1% of
// them changed since the round.
func BenchmarkClassify(b *testing.B) {
	const size = 256 << 20
	data := make([]byte, size)
	rand.Read(data)
	h, err := precopy.NewHasher()
	if err != nil {
		b.Fatal(err)
	}
	tab := roundTable(b, h, data)
	for i := 0; i < size; i += 100 * criu.PageSize {
		data[i]++
	}
	snap := writeLazySnapshot(b, "/dev/shm", data)
	b.SetBytes(size)
	for b.Loop() {
		runs, err := Classify(context.Background(), snap, h, tab)
		if err != nil {
			b.Fatal(err)
		}
		if len(runs) != size/criu.PageSize/100+1 { // between the changed pages
			b.Fatalf("%d runs", len(runs))
		}
	}
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }
func (discard) Flush() error                { return nil }

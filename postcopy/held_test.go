package postcopy

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pagemap"
	"github.com/phaul/phaul/precopy"
)

// heldDump writes a dump whose parent chain holds pages 1, 2 and 6 of
// task pid, in two levels.
func heldDump(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	writeImages(t, filepath.Join(dir, "parent", "parent"), []pagemap.Entry{
		{Start: 6 * criu.PageSize, End: 7 * criu.PageSize, Flags: criu.PEPresent},
	}, 6)
	writeImages(t, filepath.Join(dir, "parent"), []pagemap.Entry{
		{Start: 1 * criu.PageSize, End: 3 * criu.PageSize, Flags: criu.PEPresent},
		{Start: 6 * criu.PageSize, End: 7 * criu.PageSize, Flags: criu.PEParent},
	}, 1, 2)
	writeImages(t, dir, []pagemap.Entry{
		{Start: 1 * criu.PageSize, End: 4 * criu.PageSize, Flags: criu.PELazy},
		{Start: 4 * criu.PageSize, End: 5 * criu.PageSize, Flags: criu.PEPresent},
		{Start: 6 * criu.PageSize, End: 7 * criu.PageSize, Flags: criu.PELazy},
	}, 4)
	return dir
}

func run(first, end uint64) Run {
	return Run{Pid: pid, Start: first * criu.PageSize, End: end * criu.PageSize}
}

func TestHeld(t *testing.T) {
	h, err := OpenHeld(heldDump(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if held, n := h.Split(pid, criu.PageSize, 8); held || n != 8 {
		t.Errorf("before the source said: Split = %v, %d", held, n)
	}
	// In two messages: 1-2, then 6.
	if err := h.Add([]Run{run(1, 3)}); err != nil {
		t.Fatal(err)
	}
	if err := h.Add([]Run{run(6, 7)}); err != nil {
		t.Fatal(err)
	}
	if h.Pages() != 3 {
		t.Errorf("Pages = %d, want 3", h.Pages())
	}
	// A request for pages the source has stops before the held ones.
	for _, c := range []struct{ page, n, want uint64 }{{3, 8, 3}, {3, 2, 2}, {0, 8, 1}, {7, 8, 8}} {
		if held, n := h.Split(pid, c.page*criu.PageSize, c.n); held || n != c.want {
			t.Errorf("Split(page %d, %d) = %v, %d; want %d for the source", c.page, c.n, held, n, c.want)
		}
	}
	for _, c := range []struct {
		name      string
		pid, page uint64
		want      []byte
	}{
		{"a held run", pid, 1, []byte{1, 2}},
		{"within it", pid, 2, []byte{2}},
		{"two levels down", pid, 6, []byte{6}},
		{"not held: the source's", pid, 3, nil},
		{"another task", 6, 1, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got, _ := h.Split(c.pid, c.page*criu.PageSize, 1); got != (c.want != nil) {
				t.Errorf("Split: held %v", got)
			}
			buf := make([]byte, 8*criu.PageSize)
			n, err := h.Read(c.pid, c.page*criu.PageSize, buf)
			if err != nil || n != len(c.want) {
				t.Fatalf("Read = %d, %v; want %d pages", n, err, len(c.want))
			}
			for i, p := range c.want {
				if !bytes.Equal(buf[i*criu.PageSize:(i+1)*criu.PageSize], bytes.Repeat([]byte{p}, criu.PageSize)) {
					t.Errorf("page %d is not page %d", i, p)
				}
			}
		})
	}
}

// What the source says is checked: runs that are not page runs, that
// overlap, or that the rounds' images do not have.
func TestHeldRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		runs []Run
		want string
	}{
		{"unaligned", []Run{{Pid: pid, Start: 1, End: criu.PageSize}}, "bad run"},
		{"empty", []Run{run(2, 2)}, "bad run"},
		{"backwards", []Run{run(3, 2)}, "bad run"},
		{"overlapping", []Run{run(1, 3), run(2, 4)}, "overlap"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, err := OpenHeld(heldDump(t))
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			if err := h.Add(c.runs); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Add = %v, want %q", err, c.want)
			}
			// A refused message changes nothing.
			if held, _ := h.Split(pid, criu.PageSize, 1); held || h.Pages() != 0 {
				t.Errorf("after a refused message: page 1 held %v, %d pages", held, h.Pages())
			}
		})
	}
	// A page not in the rounds' images: Read fails, it does not make
	// one up.
	h, err := OpenHeld(heldDump(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Add([]Run{run(9, 10)}); err != nil {
		t.Fatal(err)
	}
	if n, err := h.Read(pid, 9*criu.PageSize, make([]byte, criu.PageSize)); err == nil {
		t.Errorf("Read of a page the rounds lack = %d, nil", n)
	}
	// No rounds: nothing can be held.
	bare := t.TempDir()
	writeImages(t, bare, []pagemap.Entry{{Start: criu.PageSize, End: 2 * criu.PageSize, Flags: criu.PELazy}})
	none, err := OpenHeld(bare)
	if err != nil {
		t.Fatal(err)
	}
	defer none.Close()
	if err := none.Add([]Run{run(1, 2)}); err == nil {
		t.Error("Add without round images succeeded")
	}
}

// Classify finds the runs of lazy pages the round recorded with the same
// bytes; the pages that changed, and those the round never sent, are not
// held.
func TestClassify(t *testing.T) {
	data := make([]byte, 16*criu.PageSize)
	for i := range 16 {
		copy(data[i*criu.PageSize:], bytes.Repeat([]byte{byte(i + 1)}, criu.PageSize))
	}
	h, err := precopy.NewHasher()
	if err != nil {
		t.Fatal(err)
	}
	tab := roundTable(t, h, data[:12*criu.PageSize]) // pages 12-15: never sent
	data[3*criu.PageSize]++                          // page 3 changed
	data[7*criu.PageSize]++                          // and 7
	runs, err := Classify(context.Background(), writeLazySnapshot(t, t.TempDir(), data), h, tab)
	if err != nil {
		t.Fatal(err)
	}
	const va = 0x10000
	p := func(i uint64) uint64 { return va + i*criu.PageSize }
	want := []Run{{1, p(0), p(3)}, {1, p(4), p(7)}, {1, p(8), p(12)}}
	if !slices.Equal(runs, want) {
		t.Errorf("runs %#x, want %#x", runs, want)
	}
}

// FuzzHeld feeds arbitrary runs (what a HeldPages message says) to Add
// and asks for arbitrary pages: nothing panics, what Add accepts is
// sorted without overlaps, and a request not held goes to the source for
// at least one page and no more than asked.
func FuzzHeld(f *testing.F) {
	f.Add([]byte{5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0})
	f.Add(bytes.Repeat([]byte{5, 0xff}, 40))
	dir := heldDump(f)
	base, err := OpenHeld(dir)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { base.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		h := &Held{chain: base.chain, runs: map[uint64]*pagemap.Image{}}
		var runs []Run
		for ; len(data) >= 17; data = data[17:] {
			start := binary.LittleEndian.Uint64(data[1:])
			if data[0]&0x80 == 0 {
				start *= criu.PageSize // else unaligned, most likely
			}
			pages := binary.LittleEndian.Uint64(data[9:]) % 64
			runs = append(runs, Run{Pid: uint64(data[0] % 8), Start: start, End: start + pages*criu.PageSize})
		}
		for i := 0; i < len(runs); i += 3 {
			if err := h.Add(runs[i:min(i+3, len(runs))]); err != nil {
				continue
			}
		}
		var total int64
		for pid, im := range h.runs {
			for i, e := range im.Entries {
				total += int64(e.Pages())
				if i > 0 && e.Start < im.Entries[i-1].End {
					t.Fatalf("task %d: runs overlap at %#x", pid, e.Start)
				}
			}
		}
		if total != h.Pages() {
			t.Fatalf("Pages %d, runs hold %d", h.Pages(), total)
		}
		buf := make([]byte, 4*criu.PageSize)
		for _, r := range runs {
			for _, va := range []uint64{r.Start, r.End, r.Start - criu.PageSize} {
				held, n := h.Split(r.Pid, va, 4)
				if !held && (n < 1 || n > 4) {
					t.Fatalf("Split(%d, %#x, 4) = %v, %d", r.Pid, va, held, n)
				}
				if held {
					h.Read(r.Pid, va, buf) //nolint:errcheck // pages the rounds lack fail: not a panic
				}
			}
		}
	})
}

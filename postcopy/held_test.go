package postcopy

import (
	"bytes"
	"path/filepath"
	"slices"
	"testing"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pagemap"
)

func TestTakeHeld(t *testing.T) {
	dir := t.TempDir()
	held := uint32(criu.PEParent | criu.PELazy)
	// The rounds' images: pages 1, 2 and 6, in two levels.
	writeImages(t, filepath.Join(dir, "parent", "parent"), []pagemap.Entry{
		{Start: 6 * criu.PageSize, End: 7 * criu.PageSize, Flags: criu.PEPresent},
	}, 6)
	writeImages(t, filepath.Join(dir, "parent"), []pagemap.Entry{
		{Start: 1 * criu.PageSize, End: 3 * criu.PageSize, Flags: criu.PEPresent},
		{Start: 6 * criu.PageSize, End: 7 * criu.PageSize, Flags: criu.PEParent},
	}, 1, 2)
	// The dump: 1-2 held, 3 withheld, 4 sent (eager), 6 held.
	writeImages(t, dir, []pagemap.Entry{
		{Start: 1 * criu.PageSize, End: 3 * criu.PageSize, Flags: held},
		{Start: 3 * criu.PageSize, End: 4 * criu.PageSize, Flags: criu.PELazy},
		{Start: 4 * criu.PageSize, End: 5 * criu.PageSize, Flags: criu.PEPresent},
		{Start: 6 * criu.PageSize, End: 7 * criu.PageSize, Flags: held},
	}, 4)
	h, err := TakeHeld(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if h.Pages() != 3 {
		t.Errorf("Pages = %d, want 3", h.Pages())
	}
	pm, err := pagemap.Read(filepath.Join(dir, "pagemap-5.img"))
	if err != nil {
		t.Fatal(err)
	}
	var flags []uint32
	for _, e := range pm.Entries {
		flags = append(flags, e.Flags)
	}
	// What the restore reads stays; what it leaves out is plain lazy.
	if want := []uint32{criu.PELazy, criu.PELazy, criu.PEPresent, criu.PELazy}; !slices.Equal(flags, want) {
		t.Errorf("rewritten flags %#x, want %#x", flags, want)
	}
	for _, c := range []struct {
		name      string
		pid, page uint64
		want      []byte
	}{
		{"a held run", pid, 1, []byte{1, 2}},
		{"within it", pid, 2, []byte{2}},
		{"two levels down", pid, 6, []byte{6}},
		{"withheld: the source's", pid, 3, nil},
		{"eager", pid, 4, nil},
		{"another task", 6, 1, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
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

func TestTakeHeldNone(t *testing.T) {
	dir := testSnapshot(t)
	h, err := TakeHeld(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if n, err := h.Read(pid, criu.PageSize, make([]byte, criu.PageSize)); h.Pages() != 0 || n != 0 || err != nil {
		t.Errorf("nothing held: Pages %d, Read %d, %v", h.Pages(), n, err)
	}
}

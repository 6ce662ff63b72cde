package pagemap

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/phaul/phaul/criu"
)

const present = criu.PEPresent | criu.PELazy

func head(pagesID uint64) []byte {
	img := binary.LittleEndian.AppendUint32(nil, ImgCommonMagic)
	img = binary.LittleEndian.AppendUint32(img, Magic)
	return AppendMessage(img, 1, pagesID)
}

func write(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Older images: compat_nr_pages, and in_parent or no flags at all.
func TestReadCompat(t *testing.T) {
	img := head(7)
	img = AppendMessage(img, FieldVaddr, 0x1000, FieldCompatPages, 2)
	img = AppendMessage(img, FieldVaddr, 0x3000, FieldCompatPages, 1, FieldInParent, 1)
	img = AppendMessage(img, FieldVaddr, 0x4000, FieldCompatPages, 3, FieldFlags, present)
	path := filepath.Join(t.TempDir(), "pagemap-1.img")
	write(t, path, img)
	pm, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{0x1000, 0x3000, criu.PEPresent, 0},
		{0x3000, 0x4000, criu.PEParent, 2},
		{0x4000, 0x7000, present, 2},
	}
	if pm.PagesID != 7 || !slices.Equal(pm.Entries, want) {
		t.Errorf("read %d %+v, want 7 %+v", pm.PagesID, pm.Entries, want)
	}
}

// Encode writes what Read reads back, sorted, with the offsets of the
// present entries' bytes.
func TestEncodeRead(t *testing.T) {
	in := []Entry{
		{Start: 0x9000, End: 0xa000, Flags: criu.PEPresent},
		{Start: 0x1000, End: 0x3000, Flags: present},
		{Start: 0x3000, End: 0x5000, Flags: criu.PEParent},
		{Start: 0x5000, End: 0x6000, Flags: criu.PELazy},
	}
	path := filepath.Join(t.TempDir(), "pagemap-1.img")
	write(t, path, Encode(3, in))
	pm, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{0x1000, 0x3000, present, 1},
		{0x3000, 0x5000, criu.PEParent, 3},
		{0x5000, 0x6000, criu.PELazy, 3},
		{0x9000, 0xa000, criu.PEPresent, 0},
	}
	// The offsets: 0x9000 was written first (page 0), then 0x1000-0x3000
	// (pages 1-2); an entry without bytes has the offset where the next
	// bytes go.
	if pm.PagesID != 3 || !slices.Equal(pm.Entries, want) {
		t.Errorf("read %d %+v, want 3 %+v", pm.PagesID, pm.Entries, want)
	}
	for _, c := range []struct {
		va   uint64
		want int
	}{{0x0, -1}, {0x1000, 0}, {0x2fff, 0}, {0x3000, 1}, {0x5000, 2}, {0x6000, -1}, {0x9000, 3}, {0xa000, -1}} {
		if got := pm.Find(c.va); got != c.want {
			t.Errorf("Find(%#x) = %d, want %d", c.va, got, c.want)
		}
	}
}

// FuzzPagemap: the pagemaps phaul reads are CRIU's, but what they say
// comes from the source's page stream (pre-copy) or a dump (post-copy).
func FuzzPagemap(f *testing.F) {
	f.Add(AppendMessage(head(1), FieldVaddr, 0x1000, FieldCompatPages, 0, FieldFlags, present, FieldNrPages, 2))
	f.Add(AppendMessage(AppendMessage(head(1), FieldVaddr, 0x1000, FieldNrPages, 4), FieldVaddr, 0x2000, FieldNrPages, 1))
	path := filepath.Join(f.TempDir(), "pagemap-1.img")
	f.Fuzz(func(t *testing.T, data []byte) {
		write(t, path, data)
		pm, err := Read(path)
		if err != nil {
			return
		}
		for i, e := range pm.Entries {
			if e.Start >= e.End || e.Start%criu.PageSize != 0 || i > 0 && e.Start < pm.Entries[i-1].End {
				t.Fatalf("entry %d: %+v", i, e)
			}
			if e.Flags&criu.PEPresent != 0 && e.Flags&criu.PEParent != 0 {
				t.Fatalf("entry %d: flags %#x", i, e.Flags)
			}
			if pm.Find(e.Start) != i || pm.Find(e.End-1) != i {
				t.Fatalf("entry %d: Find disagrees", i)
			}
		}
	})
}

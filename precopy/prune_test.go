package precopy

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pagemap"
)

// pm is one pagemap entry of a test image: n pages at page number page.
type pm struct {
	page, n uint64
	flags   uint32
}

const (
	present = criu.PEPresent | criu.PELazy
	parent  = criu.PEParent
)

// writeLevel writes a level of a chain: for each pagemap (by image id), a
// pagemap image and its pages image, each present page filled with a byte
// that names it (fill(level, id, page)).
func writeLevel(t *testing.T, dir, parentDir string, lvl byte, images map[int][]pm) {
	t.Helper()
	imagesDir(t, dir, parentDir)
	pagesID := uint32(1)
	for id, entries := range images {
		var img, pages []byte
		img = binary.LittleEndian.AppendUint32(img, pagemap.ImgCommonMagic)
		img = binary.LittleEndian.AppendUint32(img, pagemap.Magic)
		img = pagemap.AppendMessage(img, 1, uint64(pagesID))
		for _, e := range entries {
			// As CRIU writes them: compat_nr_pages 0, nr_pages.
			img = pagemap.AppendMessage(img, pagemap.FieldVaddr, e.page*criu.PageSize, pagemap.FieldCompatPages, 0, pagemap.FieldFlags, uint64(e.flags), pagemap.FieldNrPages, e.n)
			if e.flags&criu.PEPresent != 0 {
				for p := e.page; p < e.page+e.n; p++ {
					pages = append(pages, bytes.Repeat([]byte{fill(lvl, id, p)}, criu.PageSize)...)
				}
			}
		}
		write(t, filepath.Join(dir, "pagemap-"+itoa(id)+".img"), img)
		write(t, filepath.Join(dir, "pages-"+itoa(int(pagesID))+".img"), pages)
		pagesID++
	}
}

// imagesDir makes an images directory whose parent images (if parent is
// not "") are in the sibling directory parent.
func imagesDir(t testing.TB, dir, parent string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if parent != "" {
		if err := os.Symlink(filepath.Join("..", parent), filepath.Join(dir, "parent")); err != nil {
			t.Fatal(err)
		}
	}
}

func fill(lvl byte, id int, page uint64) byte { return lvl<<6 | byte(id)<<4 | byte(page) }

func itoa(n int) string { return string(rune('0' + n)) }

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// page reads page number i of the pages image of pagemap id in dir, the
// n-th present page of that image.
func readPage(t *testing.T, dir string, id int, i int) []byte {
	t.Helper()
	pmi, err := readPagemap(filepath.Join(dir, "pagemap-"+itoa(id)+".img"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "pages-"+itoa(int(pmi.pagesID))+".img"))
	if err != nil {
		t.Fatal(err)
	}
	return data[i*criu.PageSize : (i+1)*criu.PageSize]
}

func TestPruneKeepsOnlyWhatTheRestoreReads(t *testing.T) {
	root := t.TempDir()
	one, two, top := filepath.Join(root, "pre-1"), filepath.Join(root, "pre-2"), filepath.Join(root, "top")
	// Round 1: task 1 has pages 0-3 and 8-9; task 2 (which then exits)
	// page 0.
	writeLevel(t, one, "", 1, map[int][]pm{1: {{0, 4, present}, {8, 2, present}}, 2: {{0, 1, present}}})
	// Round 2: page 1 changed, 8-9 released, page 5 new.
	writeLevel(t, two, "pre-1", 2, map[int][]pm{1: {{0, 1, parent}, {1, 1, present}, {2, 2, parent}, {5, 1, present}}})
	// The dump: pages 0-3 unchanged, page 5 changed again.
	writeLevel(t, top, "pre-2", 3, map[int][]pm{1: {{0, 4, parent}, {5, 1, present}}})

	p, err := Prune(top)
	if err != nil {
		t.Fatal(err)
	}
	// Dead: round 1's page 1 (round 2 has it), pages 8-9 (no image above
	// has them), task 2's page (gone); round 2's page 5 (the dump's).
	if p.Pages != 5 {
		t.Errorf("pruned %d pages, want 5", p.Pages)
	}
	// Held: round 1's pages 0, 2, 3, round 2's page 1, the dump's page 5.
	if p.Held != 5*criu.PageSize {
		t.Errorf("held %d bytes, want %d", p.Held, 5*criu.PageSize)
	}
	zero := make([]byte, criu.PageSize)
	for _, c := range []struct {
		dir      string
		id, i    int
		lvl      byte
		page     uint64
		wantLive bool
	}{
		{one, 1, 0, 1, 0, true},
		{one, 1, 1, 1, 1, false},
		{one, 1, 2, 1, 2, true},
		{one, 1, 3, 1, 3, true},
		{one, 1, 4, 1, 8, false},
		{one, 1, 5, 1, 9, false},
		{one, 2, 0, 1, 0, false},
		{two, 1, 0, 2, 1, true},
		{two, 1, 1, 2, 5, false},
		{top, 1, 0, 3, 5, true},
	} {
		got := readPage(t, c.dir, c.id, c.i)
		want := bytes.Repeat([]byte{fill(c.lvl, c.id, c.page)}, criu.PageSize)
		if !c.wantLive {
			want = zero
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s task %d page %d: byte %#x, want %#x", filepath.Base(c.dir), c.id, c.page, got[0], want[0])
		}
	}
	// A second prune finds nothing more.
	if p, err := Prune(top); err != nil || p.Pages != 0 {
		t.Errorf("second prune: %+v, %v", p, err)
	}
}

// An image Prune cannot read stops it before it punches anything.
func TestPruneRefusesABadImage(t *testing.T) {
	root := t.TempDir()
	one, top := filepath.Join(root, "pre-1"), filepath.Join(root, "top")
	writeLevel(t, one, "", 1, map[int][]pm{1: {{0, 2, present}}})
	writeLevel(t, top, "pre-1", 2, map[int][]pm{1: {{0, 1, present}}, 2: {{0, 1, present}}})
	for name, data := range map[string][]byte{
		"pagemap-2.img": []byte("not an image"),
		"pagemap-3.img": binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, pagemap.ImgCommonMagic), pagemap.Magic), 1<<20),
	} {
		t.Run(name, func(t *testing.T) {
			write(t, filepath.Join(top, name), data)
			t.Cleanup(func() { os.Remove(filepath.Join(top, name)) })
			if _, err := Prune(top); err == nil {
				t.Fatal("no error")
			}
			if got := readPage(t, one, 1, 0); got[0] != fill(1, 1, 0) {
				t.Errorf("a failed prune punched round 1's page 0")
			}
		})
	}
}

func TestExtents(t *testing.T) {
	cut := []extent{{2, 4}, {6, 8}, {10, 12}}
	for _, c := range []struct {
		s    extent
		want []extent
	}{
		{extent{0, 14}, []extent{{0, 2}, {4, 6}, {8, 10}, {12, 14}}},
		{extent{2, 4}, nil},
		{extent{3, 7}, []extent{{4, 6}}},
		{extent{4, 6}, []extent{{4, 6}}},
		{extent{12, 13}, []extent{{12, 13}}},
		{extent{0, 1}, []extent{{0, 1}}},
	} {
		if got := subtract(c.s, cut); !slices.Equal(got, c.want) {
			t.Errorf("subtract(%v) = %v, want %v", c.s, got, c.want)
		}
	}
	got := intersect([]extent{{0, 3}, {5, 11}}, cut)
	if want := []extent{{2, 3}, {6, 8}, {10, 11}}; !slices.Equal(got, want) {
		t.Errorf("intersect = %v, want %v", got, want)
	}
}

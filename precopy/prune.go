package precopy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pagemap"
)

// The destination's side of the page pipeline: its images are a chain of
// directories (the dump's, then the rounds' from the newest down), each
// linked to the one below by "parent". CRIU's page servers run with
// auto-dedup, so a page stored again punches its older copy out of the
// images below as it arrives (criu/page-xfer.c, write_pagemap_loc). What
// they cannot know is which older pages no image above needs any more: the
// pages of memory the tree unmapped or released between rounds, and pages
// a round left out. Prune finds those and punches them too, so that the
// chain holds one copy of the pages the restore will read, and no other.

// Pruned is what Prune did.
type Pruned struct {
	Pages int64 // pages freed from the chain's pages images
	Held  int64 // bytes the chain's pages images occupy afterwards
}

// Prune punches out of the chain below top (top included: the newest
// images) every stored page that CRIU's restore of top would not read: a
// page is read from the highest image that holds it, reached through
// PE_PARENT entries only. It reads the pagemaps of every level before
// punching anything, and punches nothing on an error.
func Prune(top string) (Pruned, error) {
	chain, err := readChain(top)
	if err != nil {
		return Pruned{}, fmt.Errorf("prune %s: %w", top, err)
	}
	before, err := chainHeld(chain)
	if err != nil {
		return Pruned{}, fmt.Errorf("prune %s: %w", top, err)
	}
	var punches []punch
	for _, name := range chainNames(chain) {
		var needed []extent // of this level, by the levels above
		for i, lvl := range chain {
			pm := lvl.maps[name]
			switch {
			case pm == nil:
				needed = nil // nothing below is reached through here
				continue
			case i == 0:
				needed = pm.extents(0) // the restore reads all of the top
			}
			punches = append(punches, pm.dead(lvl.dir, needed)...)
			needed = intersect(needed, pm.extents(criu.PEParent))
		}
	}
	if err := punchAll(punches); err != nil {
		return Pruned{}, fmt.Errorf("prune %s: %w", top, err)
	}
	after, err := chainHeld(chain)
	if err != nil {
		return Pruned{}, fmt.Errorf("prune %s: %w", top, err)
	}
	return Pruned{Pages: (before - after) / criu.PageSize, Held: after}, nil
}

// chainNames are the pagemap images' names found in any level.
func chainNames(chain []level) []string {
	seen := map[string]bool{}
	var names []string
	for _, lvl := range chain {
		for name := range lvl.maps {
			if !seen[name] {
				seen[name] = true
				names = append(names, name)
			}
		}
	}
	slices.Sort(names)
	return names
}

// chainHeld is what the chain's pages images occupy, in bytes.
func chainHeld(chain []level) (int64, error) {
	var n int64
	for _, lvl := range chain {
		b, err := allocated(lvl.dir)
		if err != nil {
			return 0, err
		}
		n += b
	}
	return n, nil
}

// level is one directory of the chain: its pagemaps by file name.
type level struct {
	dir  string
	maps map[string]*pagemapImg
}

// maxChain bounds the chain's length: the rounds a destination accepts,
// and the dump.
const maxChain = 128

// readChain reads the pagemaps of top and of every parent below it.
func readChain(top string) ([]level, error) {
	var chain []level
	for dir := top; ; {
		if len(chain) == maxChain {
			return nil, fmt.Errorf("a chain of more than %d images", maxChain)
		}
		lvl, err := readLevel(dir)
		if err != nil {
			return nil, err
		}
		chain = append(chain, lvl)
		parent := filepath.Join(dir, "parent")
		if _, err := os.Lstat(parent); errors.Is(err, os.ErrNotExist) {
			return chain, nil
		}
		if dir, err = filepath.EvalSymlinks(parent); err != nil {
			return nil, err
		}
	}
}

func readLevel(dir string) (level, error) {
	names, err := filepath.Glob(filepath.Join(dir, "pagemap-*.img"))
	if err != nil {
		return level{}, err
	}
	lvl := level{dir: dir, maps: map[string]*pagemapImg{}}
	for _, path := range names {
		pm, err := readPagemap(path)
		if err != nil {
			return level{}, err
		}
		lvl.maps[filepath.Base(path)] = pm
	}
	return lvl, nil
}

// pagemapImg is one pagemap image: its pages image's id and its entries,
// each with the page offset of its bytes in the pages image (entries with
// bytes, PE_PRESENT, are stored there in the pagemap's order). Entries are
// sorted by address.
type pagemapImg struct {
	pagesID uint32
	entries []pmEntry
}

type pmEntry struct {
	extent
	flags uint32
	off   uint64 // in pages, in the pages image (PE_PRESENT only)
}

// extent is a range of pages, addresses [start, end).
type extent struct{ start, end uint64 }

// readPagemap reads a pagemap image written by a CRIU page server.
func readPagemap(path string) (*pagemapImg, error) {
	img, err := pagemap.Read(path)
	if err != nil {
		return nil, err
	}
	pm := &pagemapImg{pagesID: img.PagesID, entries: make([]pmEntry, len(img.Entries))}
	for i, e := range img.Entries {
		pm.entries[i] = pmEntry{extent{e.Start, e.End}, e.Flags, e.Off}
	}
	return pm, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// extents are the address ranges of the entries with all of flags (all
// entries: 0), merged where they touch.
func (pm *pagemapImg) extents(flags uint32) []extent {
	var out []extent
	for _, e := range pm.entries {
		if e.flags&flags != flags {
			continue
		}
		if k := len(out); k > 0 && out[k-1].end == e.start {
			out[k-1].end = e.end
			continue
		}
		out = append(out, e.extent)
	}
	return out
}

// dead is where the pages of this pagemap's PE_PRESENT entries that are
// not needed (no image above reads them) lie in its pages image.
func (pm *pagemapImg) dead(dir string, needed []extent) []punch {
	var out []punch
	file := filepath.Join(dir, fmt.Sprintf("pages-%d.img", pm.pagesID))
	for _, e := range pm.entries {
		if e.flags&criu.PEPresent == 0 {
			continue
		}
		for _, d := range subtract(e.extent, needed) {
			out = append(out, punch{file: file, off: (e.off + (d.start-e.start)/criu.PageSize) * criu.PageSize, len: d.end - d.start})
		}
	}
	return out
}

// subtract is s less the sorted, disjoint extents of cut.
func subtract(s extent, cut []extent) []extent {
	var out []extent
	i, _ := slices.BinarySearchFunc(cut, s.start, func(c extent, a uint64) int { return cmpU64(c.end, a+1) })
	for ; i < len(cut) && cut[i].start < s.end && s.start < s.end; i++ {
		if cut[i].start > s.start {
			out = append(out, extent{s.start, cut[i].start})
		}
		s.start = max(s.start, cut[i].end)
	}
	if s.start < s.end {
		out = append(out, s)
	}
	return out
}

// intersect is what two sorted lists of disjoint extents have in common.
func intersect(a, b []extent) []extent {
	var out []extent
	for i, j := 0, 0; i < len(a) && j < len(b); {
		lo, hi := max(a[i].start, b[j].start), min(a[i].end, b[j].end)
		if lo < hi {
			out = append(out, extent{lo, hi})
		}
		if a[i].end < b[j].end {
			i++
		} else {
			j++
		}
	}
	return out
}

// punch is a range of a pages image to free: bytes from off, len long.
type punch struct {
	file     string
	off, len uint64
}

// punchAll frees the ranges, opening each file once for the ranges of it
// that follow each other.
func punchAll(punches []punch) error {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for _, p := range punches {
		if f == nil || f.Name() != p.file {
			if f != nil {
				f.Close()
			}
			var err error
			if f, err = os.OpenFile(p.file, os.O_RDWR, 0); err != nil {
				return err
			}
		}
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(p.off), int64(p.len)); err != nil {
			return fmt.Errorf("punch %s at %d+%d: %w", p.file, p.off, p.len, err)
		}
	}
	return nil
}

// allocated is what the pages images of dir occupy, in bytes.
func allocated(dir string) (int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "pages-") || !strings.HasSuffix(e.Name(), ".img") {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, e.Name()), &st); err != nil {
			return 0, err
		}
		n += st.Blocks * 512
	}
	return n, nil
}

package postcopy

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pagemap"
)

// Held is, on the destination of a post-copy migration after pre-copy
// rounds, the lazy pages it holds itself: those the source found
// unchanged since the last round (Classify) and said so. The relay
// answers CRIU's lazy-pages daemon's requests for them from the rounds'
// images instead of asking the source, so that only the pages changed
// since the last round cross after the restore. (The dump cannot say so
// to CRIU itself: its lazy-pages daemon reads a lazy page of the parent
// images without completing the fault, criu/uffd.c.)
//
// Add and the readers may run at once.
type Held struct {
	chain *Snapshot // the rounds' images; nil: none
	mu    sync.RWMutex
	runs  map[uint64]*pagemap.Image // by PID: the held runs, sorted
	pages int64
}

// MaxRunPages bounds one run (as the page-server headers bound a
// request).
const MaxRunPages = 1 << 28

// OpenHeld opens the round images the dump in dir builds on (its
// "parent" link), to read held pages from. A dump without them can hold
// nothing.
func OpenHeld(dir string) (*Held, error) {
	h := &Held{runs: map[uint64]*pagemap.Image{}}
	parent := filepath.Join(dir, "parent")
	if _, err := os.Stat(parent); errors.Is(err, os.ErrNotExist) {
		return h, nil
	}
	var err error
	if h.chain, err = OpenSnapshot(parent); err != nil {
		return nil, fmt.Errorf("held pages: %w", err)
	}
	return h, nil
}

// Add records runs the source says the destination holds. They must be
// page-aligned, not empty, and overlap no run added before; the pages
// must be in the rounds' images (Read fails otherwise).
func (h *Held) Add(runs []Run) error {
	if len(runs) > 0 && h.chain == nil {
		return errors.New("held pages: no round images to hold them")
	}
	// Checked on copies of the tasks' runs, which replace them only if
	// all is well: a refused message changes nothing.
	h.mu.RLock()
	next := map[uint64]*pagemap.Image{}
	var pages int64
	for _, r := range runs {
		if r.Start%criu.PageSize != 0 || r.End%criu.PageSize != 0 || r.End <= r.Start || r.Pages() > MaxRunPages {
			h.mu.RUnlock()
			return fmt.Errorf("held pages: bad run %#x-%#x of task %d", r.Start, r.End, r.Pid)
		}
		im := next[r.Pid]
		if im == nil {
			im = &pagemap.Image{}
			if old := h.runs[r.Pid]; old != nil {
				im.Entries = slices.Clone(old.Entries)
			}
			next[r.Pid] = im
		}
		im.Entries = append(im.Entries, pagemap.Entry{Start: r.Start, End: r.End, Flags: criu.PELazy})
		pages += int64(r.Pages())
	}
	h.mu.RUnlock()
	for pid, im := range next {
		if err := im.Sort(); err != nil {
			return fmt.Errorf("held pages: runs of task %d: %w", pid, err)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	maps.Copy(h.runs, next)
	h.pages += pages
	return nil
}

// Pages is the number of held pages.
func (h *Held) Pages() int64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.pages
}

// Split takes a request for n pages of task pid from vaddr: held, the
// page at vaddr is held (Read answers it); if not, ask is how many of
// the n come before the first held one (at least one), for the source.
func (h *Held) Split(pid, vaddr, n uint64) (held bool, ask uint64) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	r := h.runs[pid]
	if r == nil {
		return false, n
	}
	if r.Find(vaddr) >= 0 {
		return true, 0
	}
	i, _ := slices.BinarySearchFunc(r.Entries, vaddr, func(e pagemap.Entry, va uint64) int { return cmp.Compare(e.Start, va) })
	if i == len(r.Entries) {
		return false, n
	}
	return false, max(1, min(n, (r.Entries[i].Start-vaddr)/criu.PageSize))
}

// Read reads held pages of task pid from vaddr into buf: as many as fill
// it and are held in a row (at least one), and returns their count; 0 if
// the page at vaddr is not held (the source has it).
func (h *Held) Read(pid, vaddr uint64, buf []byte) (int, error) {
	h.mu.RLock()
	r := h.runs[pid]
	i := -1
	if r != nil {
		i = r.Find(vaddr)
	}
	var end uint64
	if i >= 0 {
		end = r.Entries[i].End
	}
	h.mu.RUnlock()
	if i < 0 {
		return 0, nil
	}
	k := min(uint64(len(buf)/criu.PageSize), (end-vaddr)/criu.PageSize)
	return h.chain.Read(pid, vaddr, buf[:k*criu.PageSize])
}

// Close closes the rounds' images.
func (h *Held) Close() error {
	if h.chain != nil {
		return h.chain.Close()
	}
	return nil
}

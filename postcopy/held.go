package postcopy

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/atomicfile"
	"github.com/phaul/phaul/internal/pagemap"
)

// Held is, on the destination of a post-copy migration after pre-copy
// rounds, the lazy pages it holds itself: those the source found unchanged
// since the last round and marked PE_PARENT|PE_LAZY in the dump's stream.
// The restore leaves them out like the others (TakeHeld rewrites them as
// PE_LAZY: CRIU's lazy-pages daemon cannot read lazy pages from parent
// images, it would never complete their faults), and the relay answers the
// daemon's requests for them from the rounds' images instead of asking
// the source: only the pages changed since the last round cross after the
// restore.
type Held struct {
	runs  map[uint64]*pagemap.Image // by PID: the held runs, sorted
	chain *Snapshot                 // the rounds' images; nil if none held
	pages int64
}

// TakeHeld finds the held lazy pages of the dump in dir (a page server's
// images, "parent" linking to the last round's), rewrites their entries
// as PE_LAZY, and opens the rounds' images to read them.
func TakeHeld(dir string) (*Held, error) {
	names, err := filepath.Glob(filepath.Join(dir, "pagemap-*.img"))
	if err != nil {
		return nil, err
	}
	h := &Held{runs: map[uint64]*pagemap.Image{}}
	for _, path := range names {
		pid, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), "pagemap-"), ".img"), 10, 31)
		if err != nil {
			continue // shared memory: never lazy
		}
		runs, err := takeHeld(path)
		if err != nil {
			return nil, fmt.Errorf("held pages: %w", err)
		}
		if len(runs.Entries) > 0 {
			h.runs[pid] = runs
		}
	}
	for _, r := range h.runs {
		for _, e := range r.Entries {
			h.pages += int64(e.Pages())
		}
	}
	if h.pages == 0 {
		return h, nil
	}
	if h.chain, err = OpenSnapshot(filepath.Join(dir, "parent")); err != nil {
		return nil, fmt.Errorf("held pages: %w", err)
	}
	return h, nil
}

// takeHeld rewrites one task's pagemap and returns its held runs.
func takeHeld(path string) (*pagemap.Image, error) {
	pm, err := pagemap.Read(path)
	if err != nil {
		return nil, err
	}
	runs := &pagemap.Image{}
	var off uint64
	for i, e := range pm.Entries {
		if e.Flags&criu.PEPresent != 0 {
			// Read sorts the entries: rewritten in that order, the
			// pages image must still follow them.
			if e.Off != off {
				return nil, fmt.Errorf("%s: entries not in address order", path)
			}
			off += e.Pages()
		}
		if e.Flags == criu.PEParent|criu.PELazy {
			runs.Entries = append(runs.Entries, e)
			pm.Entries[i].Flags = criu.PELazy
		}
	}
	if len(runs.Entries) == 0 {
		return runs, nil
	}
	return runs, atomicfile.Write(path, false, func(f *os.File) error {
		_, err := f.Write(pagemap.Encode(pm.PagesID, pm.Entries))
		return err
	})
}

// Pages is the number of held lazy pages.
func (h *Held) Pages() int64 { return h.pages }

// Holds reports whether the page of task pid at vaddr is held.
func (h *Held) Holds(pid, vaddr uint64) bool {
	r := h.runs[pid]
	return r != nil && r.Find(vaddr) >= 0
}

// Read reads held pages of task pid from vaddr into buf: as many as fill
// it and are held in a row (at least one), and returns their count; 0 if
// the page at vaddr is not held (the source has it).
func (h *Held) Read(pid, vaddr uint64, buf []byte) (int, error) {
	r := h.runs[pid]
	if r == nil {
		return 0, nil
	}
	i := r.Find(vaddr)
	if i < 0 {
		return 0, nil
	}
	k := min(uint64(len(buf)/criu.PageSize), (r.Entries[i].End-vaddr)/criu.PageSize)
	return h.chain.Read(pid, vaddr, buf[:k*criu.PageSize])
}

// Close closes the rounds' images.
func (h *Held) Close() error {
	if h.chain != nil {
		return h.chain.Close()
	}
	return nil
}

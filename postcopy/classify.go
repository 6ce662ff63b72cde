package postcopy

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/precopy"
)

// Run is a range of task Pid's pages, [Start, End).
type Run struct{ Pid, Start, End uint64 }

// Pages is the run's page count.
func (r Run) Pages() uint64 { return (r.End - r.Start) / criu.PageSize }

// classifyChunk is how many pages Classify hashes at once.
const classifyChunk = 256

// Classify finds, among the lazy pages of snap, those the destination
// holds unchanged from pre-copy rounds: each page hashed with h and
// looked up in the rounds' table t (by image and address, as the rounds
// recorded it). The source runs it as the destination restores and its
// copy runs, so that the freeze does not wait for it; it returns the
// runs held, in address order per task.
func Classify(ctx context.Context, snap *Snapshot, h *precopy.Hasher, t *precopy.Table) ([]Run, error) {
	var runs []Run
	for _, pid := range slices.Sorted(maps.Keys(snap.tasks)) {
		var err error
		if runs, err = classifyTask(ctx, snap.tasks[pid], pid, h, t, runs); err != nil {
			return nil, fmt.Errorf("classify task %d: %w", pid, err)
		}
	}
	return runs, nil
}

func classifyTask(ctx context.Context, task *taskPages, pid uint64, h *precopy.Hasher, t *precopy.Table, runs []Run) ([]Run, error) {
	pages, err := mapPages(task.pages)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(pages) //nolint:errcheck
	pm := task.pm
	dst := criu.PageDst(criu.PSTypePid, pid)
	sums := make([]precopy.Sum, classifyChunk)
	for _, e := range pm.Entries {
		if e.Flags != criu.PEPresent|criu.PELazy {
			continue
		}
		if (e.Off+e.Pages())*criu.PageSize > uint64(len(pages)) {
			return nil, fmt.Errorf("entry at %#x: beyond the pages image", e.Start)
		}
		for done := uint64(0); done < e.Pages(); {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			n := min(e.Pages()-done, classifyChunk)
			off := (e.Off + done) * criu.PageSize
			h.SumAll(pages[off:off+n*criu.PageSize], sums[:n])
			for i := range n {
				va := e.Start + (done+i)*criu.PageSize
				if !t.Match(dst, va, sums[i]) {
					continue
				}
				if k := len(runs) - 1; k >= 0 && runs[k].Pid == pid && runs[k].End == va {
					runs[k].End += criu.PageSize
				} else {
					runs = append(runs, Run{Pid: pid, Start: va, End: va + criu.PageSize})
				}
			}
			done += n
		}
	}
	return runs, nil
}

// mapPages maps a pages image to read, its page tables filled at once
// (the snapshot was just written: its pages are in memory, in a tmpfs or
// the page cache; no copy, and no fault per page).
func mapPages(f *os.File) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return nil, err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", f.Name(), err)
	}
	return m, nil
}

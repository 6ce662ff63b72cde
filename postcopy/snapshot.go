package postcopy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pagemap"
)

// Snapshot is a dump's images, read to answer page requests: every task's
// pagemap, and its pages image open. Pages its pagemaps say are in the
// parent images (PE_PARENT: a chain of pre-copy rounds) are read from
// there, through the "parent" link.
type Snapshot struct {
	dir    string
	tasks  map[uint64]*taskPages // by PID as CRIU sees it (in the tree's namespace)
	parent *Snapshot             // nil: no entry refers to it
}

type taskPages struct {
	pm    *pagemap.Image
	pages *os.File
}

// ErrNoPages says a request names pages the snapshot does not hold.
var ErrNoPages = errors.New("pages not in the snapshot")

// OpenSnapshot reads the task pagemaps of the dump in dir.
func OpenSnapshot(dir string) (*Snapshot, error) {
	names, err := filepath.Glob(filepath.Join(dir, "pagemap-*.img"))
	if err != nil {
		return nil, err
	}
	s := &Snapshot{dir: dir, tasks: map[uint64]*taskPages{}}
	for _, path := range names {
		pid, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), "pagemap-"), ".img"), 10, 31)
		if err != nil {
			continue // pagemap-shmem-ID.img: shared memory is never lazy
		}
		pm, err := pagemap.Read(path)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		f, err := os.Open(filepath.Join(dir, fmt.Sprintf("pages-%d.img", pm.PagesID)))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		s.tasks[pid] = &taskPages{pm: pm, pages: f}
	}
	if len(s.tasks) == 0 {
		return nil, fmt.Errorf("snapshot: no task pagemap in %s", dir)
	}
	if s.refersToParent() {
		if s.parent, err = OpenSnapshot(filepath.Join(dir, "parent")); err != nil {
			s.Close()
			return nil, fmt.Errorf("snapshot: the parent images of %s: %w", dir, err)
		}
	}
	return s, nil
}

func (s *Snapshot) refersToParent() bool {
	for _, t := range s.tasks {
		for _, e := range t.pm.Entries {
			if e.Flags&criu.PEParent != 0 {
				return true
			}
		}
	}
	return false
}

// Close closes the pages images, its parents' too.
func (s *Snapshot) Close() error {
	for _, t := range s.tasks {
		t.pages.Close()
	}
	if s.parent != nil {
		s.parent.Close()
	}
	return nil
}

// Lazy is the number of pages of the snapshot that a lazy restore leaves
// to be fetched (PE_LAZY with their bytes).
func (s *Snapshot) Lazy() int64 {
	var n int64
	for _, t := range s.tasks {
		for _, e := range t.pm.Entries {
			if e.Flags&(criu.PELazy|criu.PEPresent) == criu.PELazy|criu.PEPresent {
				n += int64(e.Pages())
			}
		}
	}
	return n
}

// Read reads the pages of task pid from vaddr into buf, as many as fill
// it and follow each other in the snapshot or its parents (at least one),
// and returns their count. ErrNoPages: the snapshot has no bytes at vaddr.
func (s *Snapshot) Read(pid, vaddr uint64, buf []byte) (int, error) {
	t := s.tasks[pid]
	if t == nil {
		return 0, fmt.Errorf("%w: no task %d", ErrNoPages, pid)
	}
	want := uint64(len(buf) / criu.PageSize)
	n := uint64(0)
	for n < want {
		va := vaddr + n*criu.PageSize
		i := t.pm.Find(va)
		if i < 0 {
			break
		}
		e := t.pm.Entries[i]
		k := min(want-n, (e.End-va)/criu.PageSize)
		b := buf[n*criu.PageSize : (n+k)*criu.PageSize]
		var got int
		var err error
		switch {
		case e.Flags&criu.PEPresent != 0:
			got = int(k)
			_, err = t.pages.ReadAt(b, int64(e.Off+(va-e.Start)/criu.PageSize)*criu.PageSize)
		case e.Flags&criu.PEParent != 0 && s.parent != nil:
			got, err = s.parent.Read(pid, va, b)
		}
		if err != nil {
			if n > 0 && errors.Is(err, ErrNoPages) {
				break
			}
			return int(n), fmt.Errorf("snapshot: pages of task %d at %#x: %w", pid, va, err)
		}
		if got == 0 {
			break
		}
		n += uint64(got)
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: task %d at %#x", ErrNoPages, pid, vaddr)
	}
	return int(n), nil
}

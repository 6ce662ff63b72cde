package precopy

// Table holds, for every page the destination's newest image holds, the
// hash of its bytes: by image (a page-server dst_id) and address. It is
// what the destination's chain of images resolves to, and nothing else: a
// page a round did not send or reference is no longer in that round's
// image, so Sweep forgets it.
//
// About 40 bytes per page (1% of the page) in Go's maps.
type Table struct {
	gen    uint32
	images map[uint64]map[uint64]slot
}

type slot struct {
	sum Sum
	gen uint32
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{images: map[uint64]map[uint64]slot{}} }

// Pages is the number of pages the table knows.
func (t *Table) Pages() int {
	n := 0
	for _, m := range t.images {
		n += len(m)
	}
	return n
}

// has reports whether the table knows pages of image dst.
func (t *Table) has(dst uint64) bool { return len(t.images[dst]) > 0 }

// begin starts recording a new image.
func (t *Table) begin() { t.gen++ }

// match reports whether the newest image holds sum at (dst, vaddr).
func (t *Table) match(dst, vaddr uint64, sum Sum) bool {
	s, ok := t.images[dst][vaddr]
	return ok && s.sum == sum
}

// put records that the image being written holds sum at (dst, vaddr).
func (t *Table) put(dst, vaddr uint64, sum Sum) {
	m := t.images[dst]
	if m == nil {
		m = map[uint64]slot{}
		t.images[dst] = m
	}
	m[vaddr] = slot{sum, t.gen}
}

// keep records that the image being written refers to its parent at
// (dst, vaddr): the page stays what it was.
func (t *Table) keep(dst, vaddr uint64) {
	m := t.images[dst]
	s := m[vaddr]
	s.gen = t.gen
	m[vaddr] = s
}

// Sweep ends an image: what it neither sent nor referenced is forgotten.
func (t *Table) Sweep() {
	for dst, m := range t.images {
		for va, s := range m {
			if s.gen != t.gen {
				delete(m, va)
			}
		}
		if len(m) == 0 {
			delete(t.images, dst)
		}
	}
}

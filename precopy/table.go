package precopy

import (
	"math/bits"

	"github.com/phaul/phaul/criu"
)

// Table holds, for every page the destination's newest image holds, the
// hash of its bytes: by image (a page-server dst_id) and address. It is
// what the destination's chain of images resolves to, and nothing else: a
// page a round did not send or reference is no longer in that round's
// image, so Sweep forgets it.
//
// Pages are kept in blocks of 64 (256 KiB of memory): 16 bytes of hash
// each and two bitmaps, about 0.4% of the memory they describe
// (BenchmarkTableMemory).
type Table struct {
	images map[uint64]map[uint64]*block
}

const blockPages = 64

// block is the hashes of 64 consecutive pages of one image.
type block struct {
	sums [blockPages]Sum
	has  uint64 // pages the newest image holds
	seen uint64 // pages the image being written sends or refers to
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{images: map[uint64]map[uint64]*block{}} }

func split(vaddr uint64) (key uint64, bit uint) {
	page := vaddr / criu.PageSize
	return page / blockPages, uint(page % blockPages)
}

// Pages is the number of pages the table knows.
func (t *Table) Pages() int {
	n := 0
	for _, m := range t.images {
		for _, b := range m {
			n += bits.OnesCount64(b.has)
		}
	}
	return n
}

// has reports whether the table knows pages of image dst.
func (t *Table) has(dst uint64) bool { return len(t.images[dst]) > 0 }

// holds reports whether the newest image holds a page at (dst, vaddr).
func (t *Table) holds(dst, vaddr uint64) bool {
	k, i := split(vaddr)
	b := t.images[dst][k]
	return b != nil && b.has&(1<<i) != 0
}

// begin starts recording a new image.
func (t *Table) begin() {
	for _, m := range t.images {
		for _, b := range m {
			b.seen = 0
		}
	}
}

// Match reports whether the newest image holds sum at (dst, vaddr): the
// destination has that page's bytes.
func (t *Table) Match(dst, vaddr uint64, sum Sum) bool {
	k, i := split(vaddr)
	b := t.images[dst][k]
	return b != nil && b.has&(1<<i) != 0 && b.sums[i] == sum
}

// put records that the image being written holds sum at (dst, vaddr).
func (t *Table) put(dst, vaddr uint64, sum Sum) {
	m := t.images[dst]
	if m == nil {
		m = map[uint64]*block{}
		t.images[dst] = m
	}
	k, i := split(vaddr)
	b := m[k]
	if b == nil {
		b = &block{}
		m[k] = b
	}
	b.sums[i] = sum
	b.seen |= 1 << i
}

// keep records that the image being written refers to its parent at
// (dst, vaddr): the page stays what it was.
func (t *Table) keep(dst, vaddr uint64) {
	k, i := split(vaddr)
	if b := t.images[dst][k]; b != nil {
		b.seen |= 1 << i
	}
}

// Sweep ends an image: what it neither sent nor referenced is forgotten.
func (t *Table) Sweep() {
	for dst, m := range t.images {
		for k, b := range m {
			b.has, b.seen = b.seen, 0
			if b.has == 0 {
				delete(m, k)
			}
		}
		if len(m) == 0 {
			delete(t.images, dst)
		}
	}
}

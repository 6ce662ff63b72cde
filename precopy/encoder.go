package precopy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/phaul/phaul/criu"
)

// FlushWriter is where an Encoder writes: the compressed page stream to
// the destination, whose Flush pushes out everything written so far (a
// command that waits for an answer must not stay in a buffer).
type FlushWriter interface {
	io.Writer
	Flush() error
}

// Stats count what one stream carried, in pages.
type Stats struct {
	Pages      int64 // pages of the tree's memory in the stream
	Sent       int64 // of them, sent with their bytes
	Referenced int64 // of them, sent as a reference to the parent images
	// Omitted are pages of a round the destination did not hold, found
	// after the round's budget was spent: left out of its images (the
	// dump sends them).
	Omitted int64
	Images  int // images opened (tasks, shared memory)
}

// Encoder writes one image set in CRIU's page-server protocol to a CRIU
// page server: a round of pre-copy (Open, Pages, Close, driven by Round)
// or CRIU's own final dump (Forward). Pages whose hash the Table holds for
// the same image and address become PE_PARENT entries, provided the page
// server said it has a parent image for that image; the others are sent.
//
// Replies must run beside it to read the page server's answers.
type Encoder struct {
	w      FlushWriter
	hash   *Hasher
	table  *Table
	record bool  // a round: the table learns what this stream sends
	budget int64 // a round adds at most this many pages; negative: no bound
	added  int64 // under a budget, pages sent that the destination did not hold

	// corrupt, a test hook, makes the encoder refer to the parent for
	// the first page whose bytes changed and which it accepts: the
	// restored memory is then wrong there. corrupted counts its uses.
	corrupt   func(dst, vaddr uint64) bool
	corrupted int

	hdr       []byte
	dst       uint64
	open      bool
	decided   bool // useParent is known for the open image
	useParent bool
	lazy      uint16                    // PE_LAZY when CRIU marked the pages being forwarded so
	run       struct{ vaddr, n uint64 } // a PE_PARENT run not yet written
	stats     Stats
	sums      []Sum // of the pages Pages is writing

	mu      sync.Mutex
	parents map[uint64]bool // dst -> the page server has a parent image
	replies chan reply      // answers expected, in order
	quit    chan struct{}   // closed when Replies returns
	quitErr error           // why, set before quit is closed
}

type reply struct {
	h    criu.PageIov
	done chan error // nil in Forward: CRIU itself waits for the answer
}

// NewEncoder returns an encoder writing to w. With record set it writes a
// pre-copy round: the table is updated to what the stream sends, and the
// caller must call Table.Sweep once the page server has stored it.
func NewEncoder(w FlushWriter, h *Hasher, t *Table, record bool) *Encoder {
	if record {
		t.begin()
	}
	return &Encoder{
		w: w, hash: h, table: t, record: record, budget: -1,
		hdr:     make([]byte, 0, criu.PageIovSize),
		parents: map[uint64]bool{},
		replies: make(chan reply, 16),
		quit:    make(chan struct{}),
	}
}

// SetBudget bounds the pages a round adds to what the destination holds
// (its room): pages it did not hold, found beyond the budget, are left
// out of the round. Pages it holds that changed are sent whatever the
// budget: their older copy is freed as they arrive. Negative: no bound
// (the default).
func (e *Encoder) SetBudget(pages int64) { e.budget = pages }

// Stats returns what the stream carried so far.
func (e *Encoder) Stats() Stats { return e.stats }

func (e *Encoder) header(h criu.PageIov) error {
	e.hdr = h.Append(e.hdr[:0])
	_, err := e.w.Write(e.hdr)
	return err
}

// ask writes a command that the page server answers, flushes it, and
// queues the answer for Replies.
func (e *Encoder) ask(h criu.PageIov, done chan error) error {
	if err := e.header(h); err != nil {
		return err
	}
	if err := e.w.Flush(); err != nil {
		return err
	}
	select {
	case e.replies <- reply{h, done}:
		return nil
	case <-e.quit:
		if e.quitErr != nil {
			return e.quitErr
		}
		return errors.New("page server answers: no more expected")
	}
}

// Open starts image dst. The page server answers whether it has a parent
// image for it; the returned channel reports that answer's arrival.
func (e *Encoder) Open(dst uint64) (<-chan error, error) {
	if err := e.endImage(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	if err := e.ask(criu.PageIov{Cmd: criu.PSIovOpen2, DstID: dst}, done); err != nil {
		return nil, err
	}
	e.startImage(dst)
	return done, nil
}

func (e *Encoder) startImage(dst uint64) {
	e.dst, e.open, e.decided, e.useParent = dst, true, false, false
	e.stats.Images++
}

// parentKnown decides, at an image's first pages, whether it may refer to
// the parent: the page server's answer to OPEN2 has arrived by then (the
// sender waits for it before sending pages).
func (e *Encoder) parentKnown() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.parents[e.dst] && e.table.has(e.dst)
}

// Pages writes pages of the open image starting at vaddr (data is whole
// pages): each either by reference to the parent, when its hash is the
// table's for that address, or with its bytes.
func (e *Encoder) Pages(vaddr uint64, data []byte) error {
	if !e.open {
		return errors.New("pages outside an open image")
	}
	if !e.decided {
		e.useParent, e.decided = e.parentKnown(), true
	}
	n := uint64(len(data) / criu.PageSize)
	e.stats.Pages += int64(n)
	if uint64(cap(e.sums)) < n {
		e.sums = make([]Sum, n)
	}
	sums := e.sums[:n]
	e.hash.SumAll(data, sums)
	start := uint64(0) // first page of the run of sent pages being built
	for i := uint64(0); i < n; i++ {
		va := vaddr + i*criu.PageSize
		sum := sums[i]
		if !e.refer(va, sum) {
			// A page the destination holds, sent again, takes no
			// room: its page server frees the older copy. Counted
			// only under a budget.
			added := e.budget >= 0 && !e.table.holds(e.dst, va)
			if added && e.added >= e.budget {
				// Out of room: this page is not in the round at all.
				if err := e.sendRun(vaddr+start*criu.PageSize, data[start*criu.PageSize:i*criu.PageSize]); err != nil {
					return err
				}
				start = i + 1
				e.stats.Omitted++
				continue
			}
			if added {
				e.added++
			}
			if e.record {
				e.table.put(e.dst, va, sum)
			}
			continue
		}
		if err := e.sendRun(vaddr+start*criu.PageSize, data[start*criu.PageSize:i*criu.PageSize]); err != nil {
			return err
		}
		start = i + 1
		if e.record {
			e.table.keep(e.dst, va)
		}
		if err := e.parentPage(va); err != nil {
			return err
		}
	}
	return e.sendRun(vaddr+start*criu.PageSize, data[start*criu.PageSize:])
}

// refer decides whether the page at va with this hash goes by reference.
func (e *Encoder) refer(va uint64, sum Sum) bool {
	if !e.useParent {
		return false
	}
	if e.table.Match(e.dst, va, sum) {
		return true
	}
	if e.corrupt != nil && e.corrupt(e.dst, va) {
		if e.table.holds(e.dst, va) {
			e.corrupt = nil
			e.corrupted++
			return true
		}
	}
	return false
}

// parentPage adds one page to the PE_PARENT run being built.
func (e *Encoder) parentPage(va uint64) error {
	e.stats.Referenced++
	if e.run.n > 0 && e.run.vaddr+e.run.n*criu.PageSize == va {
		e.run.n++
		return nil
	}
	if err := e.flushRun(); err != nil {
		return err
	}
	e.run.vaddr, e.run.n = va, 1
	return nil
}

func (e *Encoder) flushRun() error {
	if e.run.n == 0 {
		return nil
	}
	h := criu.PageIov{Cmd: criu.PSIovAddF, Flags: criu.PEParent, NrPages: e.run.n, Vaddr: e.run.vaddr, DstID: e.dst}
	e.run.n = 0
	return e.header(h)
}

// sendRun writes pages with their bytes.
func (e *Encoder) sendRun(vaddr uint64, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if err := e.flushRun(); err != nil {
		return err
	}
	n := uint64(len(data) / criu.PageSize)
	e.stats.Sent += int64(n)
	if err := e.header(criu.PageIov{Cmd: criu.PSIovAddF, Flags: criu.PEPresent | e.lazy, NrPages: n, Vaddr: vaddr, DstID: e.dst}); err != nil {
		return err
	}
	_, err := e.w.Write(data)
	return err
}

func (e *Encoder) endImage() error {
	err := e.flushRun()
	e.open = false
	return err
}

// Close ends the stream; the returned channel reports the page server's
// final status.
func (e *Encoder) Close() (<-chan error, error) {
	if err := e.endImage(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	if err := e.ask(criu.PageIov{Cmd: criu.PSIovClose}, done); err != nil {
		return nil, err
	}
	close(e.replies)
	return done, nil
}

// Replies reads the page server's answers from r, in the order the
// commands were sent, until the answer to CLOSE. It records which images
// have a parent; when to is not nil (Forward: CRIU's dump waits for the
// answers) it passes each answer on, telling CRIU that no image has a
// parent: phaul, not CRIU, decides what goes by reference, and a CRIU
// dump told otherwise would expect its own parent images.
func (e *Encoder) Replies(ctx context.Context, r io.Reader, to io.Writer) (err error) {
	defer func() {
		e.quitErr = err
		close(e.quit)
	}()
	var b [4]byte
	for {
		var rp reply
		select {
		case r, ok := <-e.replies:
			if !ok {
				return nil
			}
			rp = r
		case <-ctx.Done():
			return ctx.Err()
		}
		n := rp.h.ReplyLen()
		err := readReply(r, b[:n])
		if err == nil && rp.h.Cmd == criu.PSIovOpen2 {
			e.mu.Lock()
			e.parents[rp.h.DstID] = b[0] != 0
			e.mu.Unlock()
			b[0] = 0
		}
		if err == nil && n == 4 && rp.h.Cmd != criu.PSIovParent {
			if st := int32(binary.NativeEndian.Uint32(b[:])); st != 0 {
				err = fmt.Errorf("page server: status %d at the end of the stream", st)
			}
		}
		if err == nil && to != nil {
			_, err = to.Write(b[:n])
		}
		if rp.done != nil {
			rp.done <- err
		}
		if err != nil {
			return err
		}
	}
}

func readReply(r io.Reader, b []byte) error {
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("page server answer: %w", err)
	}
	return nil
}

// wait waits for an answer announced by Open or Close.
func wait(ctx context.Context, done <-chan error) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

package migrate

import (
	"sync"
	"time"

	"github.com/phaul/phaul/transport"
)

// Progress lets a caller watch a migration from another goroutine: the
// source updates it as it goes (phase, pages sent), the caller reads a
// Snapshot at its own pace (a progress bar). The zero value is ready.
type Progress struct {
	mu         sync.Mutex
	phase      string
	phaseStart time.Time
	pagesStart time.Time
	pagesEnd   time.Time
	expected   int64
	counts     *transport.Counts
	round      int
	carry      carryProgress
}

// carryProgress is how far the files carried after the dump are.
type carryProgress struct {
	files, sent   int   // files to carry, and sent so far
	bytes, copied int64 // their bytes, and sent so far
}

// ProgressSnapshot is a Progress at one moment.
type ProgressSnapshot struct {
	Phase      string    // connect, checks, dump, transfer, restore, commit, resume
	PhaseStart time.Time // when the phase began
	PagesStart time.Time // when the page stream began (zero before)
	PagesEnd   time.Time // when it ended (zero before)
	PageBytes  int64     // memory pages sent so far, as CRIU wrote them
	WireBytes  int64     // the same, compressed, on the network
	// ExpectedBytes is the tree's resident memory when the dump began:
	// about what PageBytes will reach (0 until known).
	ExpectedBytes int64
	// Round is the pre-copy round under way (phase "precopy"); the
	// counts are then the round's: its first sends about ExpectedBytes,
	// the next ones what changed.
	Round int
	// CarryFiles are the files to carry after the dump (0: none), and
	// CarrySent how many are sent; CarryBytes and CarryCopied the same
	// in bytes.
	CarryFiles, CarrySent   int
	CarryBytes, CarryCopied int64
}

func (p *Progress) setPhase(phase string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.phase == "dump" && !p.pagesStart.IsZero() && p.pagesEnd.IsZero() {
		p.pagesEnd = now // the pages are sent when the dump ends
	}
	p.phase, p.phaseStart = phase, now
}

func (p *Progress) setPages(expected int64, c *transport.Counts) {
	p.setRound(0, expected, c)
}

func (p *Progress) setRound(n int, expected int64, c *transport.Counts) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.round, p.expected, p.counts, p.pagesStart = n, expected, c, time.Now()
}

func (p *Progress) setCarry(c carryProgress) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.carry = c
}

// Snapshot reads the progress.
func (p *Progress) Snapshot() ProgressSnapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := ProgressSnapshot{Phase: p.phase, PhaseStart: p.phaseStart, PagesStart: p.pagesStart, PagesEnd: p.pagesEnd, ExpectedBytes: p.expected, Round: p.round,
		CarryFiles: p.carry.files, CarrySent: p.carry.sent, CarryBytes: p.carry.bytes, CarryCopied: p.carry.copied}
	if p.counts != nil {
		s.PageBytes, s.WireBytes = p.counts.Raw.Load(), p.counts.Wire.Load()
	}
	return s
}

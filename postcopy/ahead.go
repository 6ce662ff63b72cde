package postcopy

import (
	"sync"

	"github.com/phaul/phaul/criu"
)

// Ahead holds, per task, pages the destination's relay fetched from the
// source beyond what CRIU's lazy-pages daemon asked for, until the daemon
// asks for them. The daemon fetches in the background 64 KiB at a time,
// one request after the other, each a round trip to the source; asked for
// a whole answer's worth instead (MaxAnswer pages), the source sends the
// next requests' pages along, and they are answered here. The snapshot
// does not change: a page fetched ahead is never stale.
type Ahead struct {
	mu   sync.Mutex
	runs map[uint64]aheadRun
}

type aheadRun struct {
	start uint64
	data  []byte
}

// AheadFrom is the least pages of a request the relay fetches ahead for:
// the daemon's background requests (64 KiB and more), not its faults
// (a page or a few: fetching more would only delay them).
const AheadFrom = 16

// Take returns a copy of the pages of task pid from vaddr that it holds,
// at most n; nil if it holds none at vaddr. What comes before vaddr is
// dropped.
func (a *Ahead) Take(pid, vaddr, n uint64) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.runs[pid]
	end := r.start + uint64(len(r.data))
	if !ok || vaddr < r.start || vaddr >= end || vaddr%criu.PageSize != 0 {
		return nil
	}
	off := vaddr - r.start
	k := min(n*criu.PageSize, end-vaddr)
	out := append([]byte(nil), r.data[off:off+k]...)
	if off+k == uint64(len(r.data)) {
		delete(a.runs, pid)
	} else {
		a.runs[pid] = aheadRun{start: vaddr + k, data: r.data[off+k:]}
	}
	return out
}

// Put holds data, pages of task pid from vaddr, instead of what it held
// for pid.
func (a *Ahead) Put(pid, vaddr uint64, data []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.runs == nil {
		a.runs = map[uint64]aheadRun{}
	}
	a.runs[pid] = aheadRun{start: vaddr, data: data}
}

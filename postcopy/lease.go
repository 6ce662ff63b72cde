package postcopy

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The lease: the destination's right to run its copy while the source
// keeps its own tree stopped. The destination asks for it again and
// again (Holder.Ask), the source grants each ask it receives while it
// still keeps its tree stopped (Grantor.Grant), and an ask granted makes
// the lease run until the moment the ask was sent plus its duration, on
// the destination's clock. A grant reaches the source only after the ask
// was sent, so once the source stops granting, the lease has surely ended
// on the destination at the last grant plus the duration: the source adds
// a margin (clock rates, the time the kill takes) and only then may
// resume its tree. Clocks are CLOCK_BOOTTIME: monotonic, and counting a
// suspended host's sleep, which a running copy may not outlive.

// Now is the lease clock: CLOCK_BOOTTIME in nanoseconds.
func Now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic("CLOCK_BOOTTIME: " + err.Error())
	}
	return ts.Nano()
}

// Holder is the destination's side: it numbers its asks and remembers
// when each left.
type Holder struct {
	Duration time.Duration

	mu     sync.Mutex
	next   uint64
	sent   map[uint64]int64
	expiry int64
}

// Ask records an ask sent now and returns its number.
func (h *Holder) Ask() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sent == nil {
		h.sent = map[uint64]int64{}
	}
	h.next++
	h.sent[h.next] = Now()
	return h.next
}

// Granted takes the source's grant of ask seq and returns the lease's end
// (lease clock); ok is false for a grant of no ask of ours. The end only
// moves forward: a late grant of an older ask changes nothing.
func (h *Holder) Granted(seq uint64) (expiry int64, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	at, ok := h.sent[seq]
	if !ok {
		return h.expiry, false
	}
	for s := range h.sent {
		if s <= seq {
			delete(h.sent, s)
		}
	}
	h.expiry = max(h.expiry, at+int64(h.Duration))
	return h.expiry, true
}

// Grantor is the source's side.
type Grantor struct {
	Duration time.Duration
	Margin   time.Duration

	mu      sync.Mutex
	last    int64
	stopped bool
}

// Grant says whether an ask just received is granted: yes until Stop.
func (g *Grantor) Grant() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return false
	}
	g.last = Now()
	return true
}

// Stop grants no more and returns when (lease clock) the destination's
// lease has surely ended: the last grant plus the duration and the
// margin (now, if nothing was ever granted).
func (g *Grantor) Stop() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopped = true
	if g.last == 0 {
		return Now()
	}
	return g.last + int64(g.Duration+g.Margin)
}

// SleepUntil sleeps until the lease clock reads t. It takes no context on
// purpose: the wait before a source resumes its tree is not to be cut
// short.
func SleepUntil(t int64) {
	for d := time.Duration(t - Now()); d > 0; d = time.Duration(t - Now()) {
		time.Sleep(d)
	}
}

package precopy

import (
	"strings"
	"testing"
	"time"
)

func rd(pages, sent int64, wire int64, d time.Duration) RoundStats {
	return RoundStats{Stats: Stats{Pages: pages, Sent: sent, Referenced: pages - sent}, Wire: wire, Duration: d}
}

func TestRule(t *testing.T) {
	const n = 262144 // 1 GiB
	mb := int64(1 << 20)
	for _, c := range []struct {
		name   string
		rounds []RoundStats
		stop   bool
		keep   bool
		why    string
	}{
		{"after the first round, go on", []RoundStats{rd(n, n, 1024*mb, 8*time.Second)}, false, false, ""},
		{"converged", []RoundStats{rd(n, n, 1024*mb, 8*time.Second), rd(n, 2000, 8*mb, time.Second)}, true, true, "converged"},
		{"shrinking but not enough", []RoundStats{rd(n, n, 1024*mb, 8*time.Second), rd(n, 50000, 200*mb, 2*time.Second)}, false, false, ""},
		{"hot: most pages rewritten", []RoundStats{rd(n, n, 1024*mb, 8*time.Second), rd(n, n-10, 1024*mb, 8*time.Second)}, true, false, "not converging"},
		{"stuck, but on few pages", []RoundStats{rd(n, n, 1024*mb, 8*time.Second), rd(n, 60000, 240*mb, 2*time.Second), rd(n, 59000, 236*mb, 2*time.Second)}, true, true, "not converging"},
		{"out of rounds", []RoundStats{rd(n, n, 1024*mb, time.Second), rd(n, 100000, 400*mb, time.Second), rd(n, 80000, 320*mb, time.Second)}, true, true, "3 rounds"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := Rule{MaxRounds: 3}
			d := r.Next(c.rounds)
			if d.Stop != c.stop || (d.Stop && d.Keep != c.keep) || !strings.Contains(d.Why, c.why) {
				t.Errorf("Next = %+v, want stop %v keep %v (%q)", d, c.stop, c.keep, c.why)
			}
		})
	}
	// Room for 480000 pages: after round 1 the next may send 480000 -
	// 262144 - 131072 (half the tree, kept for the dump). Pages sent
	// again take no room (the destination frees their older copy): after
	// a round that rewrote 100000 pages, the budget is the same.
	room := Rule{Room: 480000}
	two := []RoundStats{rd(n, n, 1024*mb, 8*time.Second), rd(n, 100000, 400*mb, 3*time.Second)}
	for i := 1; i <= 2; i++ {
		if b := room.Budget(two[:i]); b != 480000-n-n/2 {
			t.Errorf("budget after round %d: %d", i, b)
		}
	}
	if d := room.Next(two); d.Stop {
		t.Errorf("pages rewritten took the room: %+v", d)
	}
	// A tree that grew by 200000 pages spends it; the dump fits.
	grown := rd(n+200000, 210000, 840*mb, 3*time.Second)
	d := room.Next([]RoundStats{two[0], grown})
	if !d.Stop || !d.Keep || !strings.Contains(d.Why, "room") {
		t.Errorf("room spent, the dump fits: %+v", d)
	}
	// A round that left pages out for lack of room stops the rounds; the
	// dump would not fit on top of them.
	omitted := rd(n+60000, 100000, 400*mb, 3*time.Second)
	omitted.Omitted = 40000
	omitted.Referenced -= omitted.Omitted
	d = Rule{Room: n + 20000}.Next([]RoundStats{rd(n, n, 1024*mb, 8*time.Second), omitted})
	if !d.Stop || d.Keep || !strings.Contains(d.Why, "room") {
		t.Errorf("pages left out, no room for the dump: %+v, want the rounds dropped", d)
	}
	if b := (Rule{}).Budget(two); b != -1 {
		t.Errorf("no room given: budget %d, want -1 (none)", b)
	}
	d = Rule{MaxTime: time.Second}.Next([]RoundStats{rd(n, n, 1024*mb, 2*time.Second)})
	if !d.Stop || d.Keep || !strings.Contains(d.Why, "took") {
		t.Errorf("time limit after one round: %+v (nothing to keep after one round)", d)
	}
}

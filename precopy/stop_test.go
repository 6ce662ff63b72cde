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
	d := Rule{MaxTime: time.Second}.Next([]RoundStats{rd(n, n, 1024*mb, 2*time.Second)})
	if !d.Stop || d.Keep || !strings.Contains(d.Why, "took") {
		t.Errorf("time limit after one round: %+v (nothing to keep after one round)", d)
	}
}

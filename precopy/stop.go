package precopy

import (
	"fmt"
	"time"
)

// Defaults of the stop rule.
const (
	DefaultMaxDowntime = 200 * time.Millisecond
	DefaultMaxRounds   = 8
	DefaultMaxTime     = 5 * time.Minute
	// MinTree is the smallest tree pre-copy is worth it for in auto mode:
	// below it a whole dump crosses any link in about the time a round
	// costs to set up.
	MinTree = 64 << 20
)

// Rule decides when the rounds end and whether the dump builds on them.
type Rule struct {
	// MaxDowntime is the time the pages left for the freeze may take on
	// the link, at the rate the rounds measured.
	MaxDowntime time.Duration
	MaxRounds   int
	MaxTime     time.Duration // for all rounds together
	// Room is how many pages the destination can store (the rounds'
	// images and the dump's together); 0: no bound.
	Room int64
}

// Decision is the rule's answer after a round.
type Decision struct {
	Stop bool
	// Keep: the dump refers to the rounds. Otherwise they are dropped
	// and the dump sends every page as without pre-copy: a tree that
	// rewrote most of its memory during the last round would rewrite it
	// again before the freeze, and hashing it at the freeze would only
	// add to the downtime.
	Keep bool
	Why  string // the rule that stopped the rounds
}

// Next decides after the rounds so far (at least one).
func (r Rule) Next(rounds []RoundStats) Decision {
	r.defaults()
	last := rounds[len(rounds)-1]
	var total time.Duration
	for _, rd := range rounds {
		total += rd.Duration
	}
	rate, perPage := rates(rounds)
	left := time.Duration(float64(last.Sent) * perPage / rate * float64(time.Second))
	keep := len(rounds) > 1 && last.Sent*2 <= last.Pages
	switch {
	case len(rounds) > 1 && left <= r.MaxDowntime:
		return Decision{true, true, fmt.Sprintf("converged: %d pages changed in the last round, about %v on the link", last.Sent, left.Round(time.Millisecond))}
	case len(rounds) > 1 && last.Sent*10 > rounds[len(rounds)-2].Sent*9:
		return Decision{true, keep, fmt.Sprintf("not converging: round %d sent %d pages, the round before %d", len(rounds), last.Sent, rounds[len(rounds)-2].Sent)}
	case r.Room > 0 && len(rounds) > 1 && (last.Omitted > 0 || r.Budget(rounds) == 0):
		// The destination's room is spent; the dump adds what the last
		// round left out to what the rounds hold (a page it sends again
		// replaces the rounds' copy), or sends everything once they
		// are dropped.
		return Decision{true, keep && last.held()+last.Omitted <= r.Room,
			fmt.Sprintf("room: the rounds hold %d pages of the %d the destination has room for", last.held(), r.Room)}
	case len(rounds) >= r.MaxRounds:
		return Decision{true, keep, fmt.Sprintf("%d rounds", len(rounds))}
	case total >= r.MaxTime:
		return Decision{true, keep, fmt.Sprintf("the rounds took %v", total.Round(time.Second))}
	}
	return Decision{}
}

// Budget is how many pages the next round may add to what the destination
// holds (0: none; -1: no bound): its room less what the rounds hold and
// half the tree, kept for the dump and for a tree that grows. Pages sent
// again are not counted: they replace their older copy.
func (r Rule) Budget(rounds []RoundStats) int64 {
	if r.Room <= 0 {
		return -1
	}
	last := rounds[len(rounds)-1]
	return max(r.Room-last.held()-last.Pages/2, 0)
}

// held is how many pages the destination holds after the round: one copy
// of each page the round sent or referred to (its page server freed the
// older copy of a page sent again, and the destination pruned what the
// round did not cover).
func (rd RoundStats) held() int64 { return rd.Sent + rd.Referenced }

func (r *Rule) defaults() {
	if r.MaxDowntime <= 0 {
		r.MaxDowntime = DefaultMaxDowntime
	}
	if r.MaxRounds <= 0 {
		r.MaxRounds = DefaultMaxRounds
	}
	if r.MaxTime <= 0 {
		r.MaxTime = DefaultMaxTime
	}
}

// rates are the link's rate (wire bytes per second) and the wire bytes
// per page sent, from the round that sent the most (the first, usually:
// later rounds are mostly reading and hashing, not sending).
func rates(rounds []RoundStats) (rate, perPage float64) {
	best := rounds[0]
	for _, rd := range rounds {
		if rd.Sent > best.Sent {
			best = rd
		}
	}
	secs := best.Duration.Seconds()
	if best.Sent == 0 || best.Wire == 0 || secs <= 0 {
		return 1, 0 // nothing measured: nothing left to send either
	}
	return float64(best.Wire) / secs, float64(best.Wire) / float64(best.Sent)
}

package migrate

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/precopy"
	"github.com/phaul/phaul/transport"
)

// precopyPlan is what the rounds leave for the dump: the keyed hashes of
// the pages the destination holds. nil: the dump sends every page.
type precopyPlan struct {
	hasher *precopy.Hasher
	table  *precopy.Table
}

// precopy runs the pre-copy rounds while the tree runs, then ends them
// (EndRounds) whether there were any or not. Nothing is frozen here: a
// failure leaves the source untouched.
func (m *source) precopy(ctx context.Context) (*precopyPlan, error) {
	var plan *precopyPlan
	keep := 0
	switch {
	case m.o.Precopy == "off":
		m.r.Precopy = "off: --precopy=off"
	case m.o.Precopy == "auto" && m.rss < precopy.MinTree:
		m.r.Precopy = fmt.Sprintf("off: the tree's %s cross in one dump (auto: from %s)", FormatBytes(m.rss), FormatBytes(precopy.MinTree))
	default:
		m.setPhase("precopy")
		var err error
		if plan, keep, err = m.rounds(ctx); err != nil {
			return nil, err
		}
	}
	if err := m.send(ctx, &pb.Envelope{Msg: &pb.Envelope_EndRounds{EndRounds: &pb.EndRounds{Keep: uint32(keep)}}}); err != nil {
		return nil, err
	}
	msg, err := m.recv(ctx)
	if err != nil {
		return nil, err
	}
	if msg.GetRoundsEnded() == nil {
		return nil, unexpected(msg, "RoundsEnded")
	}
	if keep == 0 {
		return nil, nil
	}
	return plan, nil
}

// rounds runs rounds until the stop rule ends them, and returns the
// round the dump builds on (0: none).
func (m *source) rounds(ctx context.Context) (*precopyPlan, int, error) {
	h, err := precopy.NewHasher()
	if err != nil {
		return nil, 0, err
	}
	plan := &precopyPlan{hasher: h, table: precopy.NewTable()}
	rule := precopy.Rule{MaxDowntime: m.o.MaxDowntime, Room: m.room / 4096}
	if m.o.Postcopy {
		// The snapshot is dumped into fresh memory (a tmpfs work
		// directory, or the page cache) while the tree is frozen: the
		// memory the tree takes, touched while it runs, is given back
		// just before.
		m.warm = warm(uint64(m.rss))
	}
	var done []precopy.RoundStats
	budget := int64(-1)
	for n := 1; ; n++ {
		st, err := m.round(ctx, n, plan, budget)
		if err != nil {
			return nil, 0, m.remoteReason(ctx, fmt.Errorf("pre-copy round %d: %w", n, err))
		}
		done = append(done, st)
		m.r.Rounds = append(m.r.Rounds, RoundReport{Round: n, Pages: st.Pages, Sent: st.Sent, Referenced: st.Referenced, LeftOut: st.Omitted,
			WireBytes: st.Wire, Duration: Duration(st.Duration), HeldBytes: st.HeldBytes})
		m.log.Info("pre-copy round", "round", n, "pages", st.Pages, "sent", st.Sent, "left_out", st.Omitted, "wire_bytes", st.Wire,
			"held_bytes", st.HeldBytes, "took", st.Duration)
		budget = rule.Budget(done)
		if d := rule.Next(done); d.Stop {
			m.r.StopRule = d.Why
			if !d.Keep {
				m.r.Precopy = "dropped"
				return nil, 0, nil
			}
			m.r.Precopy = "rounds"
			return plan, n, nil
		}
	}
}

// remoteReason is the destination's own account of a failure that ended a
// round's stream (its Failure, with CRIU's lines), if it sends one soon;
// err otherwise.
func (m *source) remoteReason(ctx context.Context, err error) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	msg, rerr := m.sess.Control().Recv(ctx)
	if rerr == nil && msg.GetFailure() != nil {
		f := msg.GetFailure()
		return &RemoteError{Phase: f.Phase, Message: f.Message, CRIULines: f.CriuLines}
	}
	return err
}

// round sends round n: Round, then the round stream, then RoundDone.
func (m *source) round(ctx context.Context, n int, plan *precopyPlan, budget int64) (precopy.RoundStats, error) {
	tasks, err := precopy.Tasks(m.o.Pid)
	if err != nil {
		return precopy.RoundStats{}, err
	}
	if err := m.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Round{Round: &pb.Round{Number: uint32(n)}}}); err != nil {
		return precopy.RoundStats{}, err
	}
	st, err := m.sess.Open(ctx, transport.KindRound)
	if err != nil {
		return precopy.RoundStats{}, err
	}
	defer st.Close()
	// Cancelling ends the stream, and with it the waits for answers.
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	var counts transport.Counts
	m.o.Progress.setRound(n, m.rss, &counts)
	cw, err := transport.NewCompressWriter(st, &counts.Raw, &counts.Wire)
	if err != nil {
		return precopy.RoundStats{}, err
	}
	enc := precopy.NewEncoder(cw, plan.hasher, plan.table, true)
	enc.SetBudget(budget)
	replies := make(chan error, 1)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { replies <- enc.Replies(rctx, st, nil) }()
	rs, err := precopy.Round(ctx, enc, tasks)
	if err == nil {
		err = cw.Close()
	}
	if err != nil {
		return precopy.RoundStats{}, err
	}
	if err := <-replies; err != nil {
		return precopy.RoundStats{}, err
	}
	st.Close() // the destination's pump sees the end
	msg, err := m.recv(ctx)
	if err != nil {
		return precopy.RoundStats{}, err
	}
	d := msg.GetRoundDone()
	if d == nil || d.Number != uint32(n) {
		return precopy.RoundStats{}, unexpected(msg, fmt.Sprintf("RoundDone %d", n))
	}
	plan.table.Sweep()
	rs.Wire = counts.Wire.Load()
	rs.HeldBytes = int64(d.HeldBytes)
	return rs, nil
}

// pumpPages carries the dump's pages from CRIU's socket (ours) to the
// pages stream, compressed, and the page server's answers back. With a
// plan, pages the destination holds from the rounds go as references
// (precopy.Encoder.Forward); without, the bytes are copied as they are.
// The returned channel reports the end of the stream.
func (m *source) pumpPages(ctx context.Context, plan *precopyPlan, pages net.Conn, ours *os.File, counts *transport.Counts) <-chan error {
	done := make(chan error, 1)
	end := func(err error) {
		pages.Close() // half-close: the destination still answers
		if err != nil {
			// CRIU must not block writing pages nobody reads: make its
			// writes fail, so that it aborts the dump and resumes.
			shutdown(ours, unix.SHUT_RDWR)
		}
		done <- err
	}
	if plan == nil {
		go func() { end(transport.SendCompressed(pages, ours, counts)) }()
		// The page server's answers come back uncompressed; this copy
		// ends when the stream or the session does.
		go io.Copy(ours, pages)
		return done
	}
	go func() {
		cw, err := transport.NewCompressWriter(pages, nil, &counts.Wire)
		if err != nil {
			end(err)
			return
		}
		enc := precopy.NewEncoder(cw, plan.hasher, plan.table, false)
		replies := make(chan error, 1)
		go func() { replies <- enc.Replies(ctx, pages, ours) }()
		err = enc.Forward(transport.CountReads(ours, &counts.Raw))
		if err == nil {
			err = cw.Close()
		}
		if err == nil {
			err = <-replies
		}
		m.referenced.Store(enc.Stats().Referenced)
		end(err)
	}()
	return done
}

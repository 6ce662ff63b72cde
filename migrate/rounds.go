package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/precopy"
	"github.com/phaul/phaul/transport"
)

// maxRounds bounds the rounds a source may send (its stop rule ends them
// after precopy.DefaultMaxRounds): each costs a page server and a
// directory.
const maxRounds = 64

// roundDir is where round n's page server writes, inside the images
// directory (the tmpfs): CRIU finds a round's parent through its "parent"
// link, and the dump's through images/parent.
func roundDir(imgs string, n int) string { return filepath.Join(imgs, fmt.Sprintf("pre-%d", n)) }

// rounds takes the source's pre-copy rounds, each into a CRIU page server
// of its own whose parent images are the round before's, until EndRounds;
// then it starts the dump's page server, whose parent is the round the
// source builds on, and says RoundsEnded.
func (in *incoming) rounds(ctx context.Context) error {
	for n := 1; ; n++ {
		msg, err := in.recv(ctx)
		if err != nil {
			return err
		}
		if end := msg.GetEndRounds(); end != nil {
			return in.endRounds(ctx, int(end.Keep), n-1)
		}
		r := msg.GetRound()
		switch {
		case r == nil:
			return in.fail(in.phase, unexpected(msg, "Round or EndRounds"))
		case !in.prep.Precopy:
			return in.fail(in.phase, fmt.Errorf("%w: a pre-copy round, but Prepare announced none", ErrProtocol))
		case r.Number != uint32(n):
			return in.fail(in.phase, fmt.Errorf("%w: pre-copy round %d, want %d", ErrProtocol, r.Number, n))
		case n > maxRounds:
			return in.fail(in.phase, fmt.Errorf("%w: more than %d pre-copy rounds", ErrProtocol, maxRounds))
		}
		if n == 1 {
			in.setPhase("precopy")
			// A post-copy restore faults in almost nothing while the
			// tree is frozen: its pages arrive after it runs. Warm
			// memory would only take room while the source dumps
			// (bench: on one machine, a 512 MiB snapshot dump took
			// 1.15 s instead of 0.38 s beside it).
			if !in.prep.Postcopy {
				in.warm = warm(in.prep.MemoryBytes)
			}
		}
		if err := in.round(ctx, n); err != nil {
			return in.fail("precopy", fmt.Errorf("round %d: %w", n, err))
		}
		held, err := in.prune(n)
		if err != nil {
			return in.fail("precopy", fmt.Errorf("round %d: %w", n, err))
		}
		if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_RoundDone{RoundDone: &pb.RoundDone{Number: uint32(n), HeldBytes: uint64(held)}}}); err != nil {
			return err
		}
	}
}

// round receives round n into its page server and waits until it has
// stored it.
func (in *incoming) round(ctx context.Context, n int) error {
	dir := roundDir(in.imgs, n)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	if n > 1 {
		if err := os.Symlink(filepath.Join("..", filepath.Base(roundDir("", n-1))), filepath.Join(dir, "parent")); err != nil {
			return err
		}
	}
	ours, theirs, err := socketpair()
	if err != nil {
		return err
	}
	defer ours.Close()
	ps, err := in.d.o.CRIU.StartPageServer(ctx, criu.Request{ImagesDir: dir, WorkDir: in.logs, PageServer: theirs,
		Opts: &rpc.CriuOpts{LogFile: proto.String(fmt.Sprintf("page-server-round-%d.log", n)), AutoDedup: proto.Bool(n > 1)}})
	theirs.Close()
	if err != nil {
		return err
	}
	defer ps.Close()
	psDone := watchPageServer(ctx, ps, ours)
	actx, cancel := context.WithTimeout(ctx, in.d.o.Timeout)
	kind, st, err := in.sess.Accept(actx)
	cancel()
	if err != nil {
		return fmt.Errorf("round stream: %w", err)
	}
	defer st.Close()
	if kind != transport.KindRound {
		return fmt.Errorf("%w: a %s stream during the pre-copy rounds", ErrProtocol, transport.KindName(kind))
	}
	var counts transport.Counts
	done := make(chan error, 1)
	go func() {
		err := transport.ReceiveCompressed(ours, st, &counts)
		shutdown(ours, unix.SHUT_WR)
		done <- err
	}()
	go func() {
		// The page server's answers; its end (done, or failed) ends
		// the stream, so that the source stops waiting for answers.
		io.Copy(st, ours)
		st.Close()
	}()
	if err := in.waitFlow(ctx, done, psDone, &counts); err != nil {
		return err
	}
	<-psDone.done
	return psDone.err
}

// prune frees, after round n, the pages of the rounds below it that no
// image needs any more (precopy.Prune: memory the tree released, pages a
// round left out; what a round stored again, its page server freed as it
// came, with auto-dedup), and returns what the rounds' pages occupy.
func (in *incoming) prune(n int) (int64, error) {
	start := time.Now()
	p, err := precopy.Prune(roundDir(in.imgs, n))
	if err != nil {
		return 0, err
	}
	in.log.Debug("pre-copy round pruned", "round", n, "freed_pages", p.Pages, "held_bytes", p.Held, "took", time.Since(start))
	return p.Held, nil
}

// psWatch is a page server being waited for: err is its result once done
// is closed.
type psWatch struct {
	done chan struct{}
	err  error
}

// watchPageServer waits for a page server's end. One that fails (a full
// tmpfs, a bad stream) leaves its socket open, held by the criu swrk that
// started it: the pump would wait on it for ever, so our end of the
// socket is shut down then.
func watchPageServer(ctx context.Context, ps PageServer, sock *os.File) *psWatch {
	w := &psWatch{done: make(chan struct{})}
	go func() {
		w.err = ps.Wait(ctx)
		if w.err != nil {
			shutdown(sock, unix.SHUT_RDWR)
		}
		close(w.done)
	}()
	return w
}

// waitFlow waits for a page stream's end (done). There is no bound on the
// whole: only on a stall, when no byte arrived for the timeout (a dead
// connection is found sooner by the session's keepalive).
func (in *incoming) waitFlow(ctx context.Context, done <-chan error, ps *psWatch, counts *transport.Counts) error {
	psDone := ps.done
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	watch := stallWatch{counts: counts, timeout: in.d.o.Timeout}
	for {
		select {
		case err := <-done:
			return err
		case <-psDone:
			if ps.err != nil {
				return ps.err
			}
			psDone = nil // it served its stream: the pump ends soon
		case <-ctx.Done():
			return ctx.Err()
		case <-in.sess.Done():
			return errors.New("connection to the source lost")
		case <-tick.C:
			if err := watch.check(); err != nil {
				return err
			}
		}
	}
}

// stallWatch finds a stalled page stream: no byte on the wire for the
// timeout, checked at every tick.
type stallWatch struct {
	counts  *transport.Counts
	timeout time.Duration
	last    int64
	since   time.Time
}

func (w *stallWatch) check() error {
	if n := w.counts.Wire.Load(); n != w.last || w.since.IsZero() {
		w.last, w.since = n, time.Now()
		return nil
	}
	if time.Since(w.since) > w.timeout {
		return fmt.Errorf("no pages for %v", w.timeout)
	}
	return nil
}

// endRounds links the dump's images to the last round (or drops every
// round, keep 0, to free their room), starts the dump's page server and
// says so. No round but the last can be the parent: each round freed what
// the rounds below held of the pages it stored again.
func (in *incoming) endRounds(ctx context.Context, keep, last int) error {
	if keep != 0 && keep != last {
		return in.fail(in.phase, fmt.Errorf("%w: the dump builds on round %d of %d (only the last, or none)", ErrProtocol, keep, last))
	}
	for n := keep + 1; n <= last; n++ {
		if err := os.RemoveAll(roundDir(in.imgs, n)); err != nil {
			return in.fail(in.phase, err)
		}
	}
	if keep > 0 {
		if err := os.Symlink(filepath.Base(roundDir(in.imgs, keep)), filepath.Join(in.imgs, "parent")); err != nil {
			return in.fail(in.phase, err)
		}
	}
	if last > 0 {
		in.log.Info("pre-copy rounds ended", "rounds", last, "kept", keep)
	}
	if err := in.startPages(ctx, keep > 0); err != nil {
		return in.fail(in.phase, err)
	}
	go in.acceptStreams(ctx)
	return in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_RoundsEnded{RoundsEnded: &pb.RoundsEnded{}}})
}

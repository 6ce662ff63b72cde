package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/postcopy"
	"github.com/phaul/phaul/transport"
)

// Post-copy on the destination, once the eager pages and the images are
// in, as its phases run:
//
//   - restore: the rounds' images opened, if any (postcopy.OpenHeld); a
//     first lease asked and granted; the lease keeper started (a process
//     of its own: postcopy.Keeper), holding the lazy-pages socket too, so
//     that the daemon never sees it end before the copy is dead; CRIU's
//     lazy-pages daemon started on that socket, relayed to a lazy stream
//     to the source (the pages it holds, once the source said which:
//     HeldPages, the relay answers itself); CRIU restores with lazy pages
//     and the copy runs at once; Restored;
//   - pages: the lease renewed every fifth of it (from the first grant
//     on, through the restore), until the daemon has every page (it
//     exits 0); AllPages;
//   - commit: on Commit the keeper stops guarding (committed, on its
//     record), and Done.
//
// Any failure before the keeper committed ends with the keeper killing
// the copy (finish closes it): the source resumes its own tree once the
// lease has surely ended.

// lazyPagesKeeperRecord is the keeper's record in a migration's directory.
const lazyPagesKeeperRecord = "lease.json"

// LazyRestorer is what post-copy needs of CRIU besides Restorer (CRIU
// has it).
type LazyRestorer interface {
	StartLazyPages(ctx context.Context, r criu.LazyPagesRequest) (*criu.LazyPages, error)
}

// postcopyState is the destination's part of a post-copy migration.
type postcopyState struct {
	holder *postcopy.Holder
	keeper *postcopy.Keeper
	daemon *criu.LazyPages
	sock   *os.File // the relay's end of the daemon's socket
	stream io.ReadWriteCloser
	held   *postcopy.Held // the lazy pages served here, from the rounds
	ahead  postcopy.Ahead // pages fetched ahead of the daemon's requests
	start  time.Time      // the restore began
	// committed: the keeper stopped guarding; the copy is the workload.
	committed bool
	commit    chan struct{} // closed when Commit arrives (leaseLoop)
	failed    chan error    // why the lease loop ended early
	// asked are when the page requests not answered yet were sent, oldest
	// first.
	mu    sync.Mutex
	asked []time.Time
}

// waiting is how long the oldest page request unanswered has waited.
func (pc *postcopyState) waiting() time.Duration {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if len(pc.asked) == 0 {
		return 0
	}
	return time.Since(pc.asked[0])
}

func (pc *postcopyState) ask() {
	pc.mu.Lock()
	pc.asked = append(pc.asked, time.Now())
	pc.mu.Unlock()
}

// fail ends the post-copy phases with err (the first failure only).
func (pc *postcopyState) fail(err error) {
	select {
	case pc.failed <- err:
	default:
	}
}

func (pc *postcopyState) answered() {
	pc.mu.Lock()
	if len(pc.asked) > 0 {
		pc.asked = pc.asked[1:]
	}
	pc.mu.Unlock()
}

// judgePostcopy is the verdict on post-copy here: a real lazy restore of
// a probe, run once per service (postcopy.SelfTest).
func (d *Destination) judgePostcopy(ctx context.Context) *pb.Verdict {
	d.lazyOnce.Do(func() {
		c, ok := d.o.CRIU.(CRIU)
		if !ok {
			d.lazyVerdict = &pb.Verdict{Check: "postcopy", Result: pb.Verdict_FAIL, Detail: "this service's CRIU cannot run lazy pages"}
			return
		}
		res, err := lazySelfTest(ctx, c.Client, d.o.WorkDir)
		switch {
		case err != nil:
			d.lazyVerdict = &pb.Verdict{Check: "postcopy", Result: pb.Verdict_FAIL, Detail: "the lazy-pages self-test could not run: " + err.Error()}
		case !res.Worked:
			d.lazyVerdict = &pb.Verdict{Check: "postcopy", Result: pb.Verdict_FAIL, Detail: res.String() + ": migrate without --postcopy"}
		default:
			d.lazyVerdict = &pb.Verdict{Check: "postcopy", Result: pb.Verdict_PASS, Detail: res.String()}
		}
	})
	return proto.Clone(d.lazyVerdict).(*pb.Verdict)
}

func lazySelfTest(ctx context.Context, c *criu.Client, workDir string) (postcopy.SelfTestResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return postcopy.SelfTestResult{}, err
	}
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return postcopy.SelfTestResult{}, err
	}
	dir, err := os.MkdirTemp(workDir, "lazy-self-test-")
	if err != nil {
		return postcopy.SelfTestResult{}, err
	}
	defer os.RemoveAll(dir)
	return postcopy.SelfTest(ctx, c, dir, exe)
}

// postcopy runs the destination's post-copy phases.
func (in *incoming) postcopy(ctx context.Context) error {
	in.setPhase("restore")
	ctx, stop := context.WithCancel(ctx)
	defer stop() // ends the lease loop
	pc := &postcopyState{holder: &postcopy.Holder{Duration: time.Duration(in.prep.LeaseMillis) * time.Millisecond},
		commit: make(chan struct{}), failed: make(chan error, 1)}
	in.pc = pc
	var err error
	if pc.held, err = postcopy.OpenHeld(in.imgs); err != nil {
		return in.fail("restore", err)
	}
	if err := in.startLazy(ctx); err != nil {
		return in.fail("restore", err)
	}
	go in.leaseLoop(ctx)
	restored, err := in.restoreLazily(ctx)
	if err != nil {
		return in.fail("restore", err)
	}
	if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Restored{Restored: restored}}); err != nil {
		return err
	}
	in.setPhase("pages")
	select {
	case <-pc.daemon.Done():
	case err := <-pc.failed:
		return in.fail("pages", err)
	}
	if err := pc.daemon.Wait(); err != nil {
		return in.fail("pages", err)
	}
	all := &pb.AllPages{Pages: in.pcFetched.Load(), Held: in.pcHeld.Load(), Nanos: int64(time.Since(pc.start))}
	in.log.Info("every page has arrived", "fetched", all.Pages, "ahead", in.pcAhead.Load(), "held", all.Held, "after", time.Duration(all.Nanos))
	if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_AllPages{AllPages: all}}); err != nil {
		return err
	}
	in.setPhase("commit")
	select {
	case <-pc.commit:
	case err := <-pc.failed:
		return in.fail("commit", err)
	}
	return in.commitPostcopy(ctx)
}

// startLazy takes a first lease, starts the keeper and the lazy-pages
// daemon, and relays the daemon's requests to the source.
func (in *incoming) startLazy(ctx context.Context) error {
	pc := in.pc
	lr, ok := in.d.o.CRIU.(LazyRestorer)
	if !ok {
		return errors.New("this service's CRIU cannot run lazy pages")
	}
	seq := pc.holder.Ask()
	if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_LeaseAsk{LeaseAsk: &pb.LeaseAsk{Seq: seq}}}); err != nil {
		return err
	}
	msg, err := in.recv(ctx)
	if err != nil {
		return err
	}
	if msg.GetLeaseGrant() == nil {
		return unexpected(msg, "LeaseGrant")
	}
	expiry, ok := pc.holder.Granted(msg.GetLeaseGrant().Seq)
	if !ok {
		return fmt.Errorf("%w: a grant of lease ask %d, not asked", ErrProtocol, msg.GetLeaseGrant().Seq)
	}
	ours, theirs, err := socketpair()
	if err != nil {
		return err
	}
	defer theirs.Close()
	pc.sock = ours
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if pc.keeper, err = postcopy.StartKeeper(exe, filepath.Join(in.dir, lazyPagesKeeperRecord), expiry, ours); err != nil {
		return err
	}
	if pc.stream, err = in.sess.Open(ctx, transport.KindLazy); err != nil {
		return err
	}
	if pc.daemon, err = lr.StartLazyPages(ctx, criu.LazyPagesRequest{ImagesDir: in.imgs, WorkDir: in.logs, PageServer: theirs}); err != nil {
		return err
	}
	go in.relayLazy()
	return nil
}

// lazyAsk is a command of the daemon's that the relay took: a page
// request or its closing one, answered by the source or, for held pages,
// here.
type lazyAsk struct {
	h    criu.PageIov
	held bool
	// give is how many of the pages asked of the source go to the
	// daemon (the rest were asked ahead: postcopy.Ahead); ahead, pages
	// fetched ahead before, which answer it instead.
	give  uint64
	ahead []byte
}

// relayLazy copies the daemon's page requests to the source and the
// answers back, counting the pages: a page answer for each PS_IOV_GET,
// a status for its closing request. Requests for held pages it answers
// itself, in their turn (the daemon takes answers in the order it asked).
// It never closes the daemon's socket: only finish does, once the copy is
// dead or committed.
func (in *incoming) relayLazy() {
	asked := make(chan lazyAsk, 1024) // the commands taken, in order
	answering := make(chan struct{})  // closed when the answers end
	go in.forwardAsks(asked, answering)
	in.answerAsks(asked)
	close(answering)
}

// forwardAsks reads the daemon's commands into asked, and sends those
// the source answers to it, until answering is closed.
func (in *incoming) forwardAsks(asked chan<- lazyAsk, answering <-chan struct{}) {
	pc := in.pc
	defer close(asked)
	var hdr [criu.PageIovSize]byte
	for {
		h, err := criu.ReadPageIov(pc.sock, &hdr)
		if err != nil || (h.Cmd != criu.PSIovGet && h.Cmd != criu.PSIovClose && h.Cmd != criu.PSIovForceClose) {
			return
		}
		a := lazyAsk{h: h}
		if h.Cmd == criu.PSIovGet {
			in.planAsk(&a, &hdr)
		}
		if !a.held && a.ahead == nil {
			if h.Cmd == criu.PSIovGet {
				pc.ask()
			}
			if _, err := pc.stream.Write(hdr[:]); err != nil {
				return
			}
		}
		select {
		case asked <- a:
		case <-answering:
			return
		}
		if h.Cmd != criu.PSIovGet {
			return
		}
	}
}

// planAsk decides how a page request is answered: held pages here, pages
// fetched ahead before here too; the others by the source, only up to the
// next held page (the daemon asks again for the rest, which is then
// answered here), and for a background request a whole answer's worth
// (postcopy.Ahead). hdr is rewritten to what goes to the source.
func (in *incoming) planAsk(a *lazyAsk, hdr *[criu.PageIovSize]byte) {
	pc := in.pc
	h := a.h
	var n uint64
	if a.held, n = pc.held.Split(h.DstID, h.Vaddr, h.NrPages); a.held {
		return
	}
	if a.ahead = pc.ahead.Take(h.DstID, h.Vaddr, min(n, postcopy.MaxAnswer)); a.ahead != nil {
		return
	}
	a.give = n
	if n >= postcopy.AheadFrom && n < postcopy.MaxAnswer {
		_, n = pc.held.Split(h.DstID, h.Vaddr, postcopy.MaxAnswer)
	}
	if n != h.NrPages {
		h.NrPages = n
		h.Append(hdr[:0])
	}
}

// answerAsks passes the answers to the daemon, in the order it asked.
func (in *incoming) answerAsks(asked <-chan lazyAsk) {
	pc := in.pc
	var hdr [criu.PageIovSize]byte
	buf := make([]byte, postcopy.MaxAnswer*criu.PageSize)
	for a := range asked {
		switch {
		case a.held:
			n, err := in.answerHeld(a.h, buf)
			if err != nil {
				pc.fail(fmt.Errorf("held pages: %w", err))
				return
			}
			in.pcHeld.Add(int64(n))
		case a.ahead != nil:
			if err := in.answerPages(a.h, a.ahead); err != nil {
				return
			}
			in.pcFetched.Add(int64(len(a.ahead) / criu.PageSize))
			in.pcAhead.Add(int64(len(a.ahead) / criu.PageSize))
		case a.h.Cmd != criu.PSIovGet:
			io.CopyN(pc.sock, pc.stream, 4) //nolint:errcheck // the daemon sees a short answer
			return
		default:
			n, err := in.answerFromSource(a, &hdr)
			if err != nil {
				return
			}
			pc.answered()
			in.pcFetched.Add(int64(n))
		}
	}
}

// answerFromSource reads the source's answer to a request and passes on
// the pages the daemon asked for; those asked ahead it keeps.
func (in *incoming) answerFromSource(a lazyAsk, hdr *[criu.PageIovSize]byte) (uint64, error) {
	pc := in.pc
	h, err := criu.ReadLazyAnswer(pc.stream, hdr)
	if err != nil {
		return 0, err
	}
	give := min(h.NrPages, a.give)
	if give == h.NrPages {
		if _, err := pc.sock.Write(hdr[:]); err != nil {
			return 0, err
		}
		_, err := io.CopyN(pc.sock, pc.stream, h.DataLen())
		return give, err
	}
	// The pages ahead are put by before the daemon has its answer, and
	// with it the turn to ask for them.
	pages := make([]byte, h.DataLen())
	if _, err := io.ReadFull(pc.stream, pages); err != nil {
		return 0, err
	}
	pc.ahead.Put(h.DstID, h.Vaddr+give*criu.PageSize, pages[give*criu.PageSize:])
	return give, in.answerPages(h, pages[:give*criu.PageSize])
}

// answerPages answers a request with pages from vaddr, as the source
// would.
func (in *incoming) answerPages(h criu.PageIov, pages []byte) error {
	pc := in.pc
	if _, err := pc.sock.Write(criu.LazyAnswer(h, uint64(len(pages)/criu.PageSize)).Append(nil)); err != nil {
		return err
	}
	_, err := pc.sock.Write(pages)
	return err
}

// answerHeld answers a request for held pages from the rounds' images:
// as many as are held in a row, up to postcopy.MaxAnswer (the daemon
// asks again for the rest).
func (in *incoming) answerHeld(h criu.PageIov, buf []byte) (int, error) {
	pc := in.pc
	want := min(h.NrPages, postcopy.MaxAnswer)
	n, err := pc.held.Read(h.DstID, h.Vaddr, buf[:want*criu.PageSize])
	if err == nil && n == 0 {
		err = fmt.Errorf("no page of task %d at %#x", h.DstID, h.Vaddr)
	}
	if err != nil {
		return 0, err
	}
	return n, in.answerPages(h, buf[:n*criu.PageSize])
}

// restoreLazily restores the tree with lazy pages: it runs at once, under
// the lease.
func (in *incoming) restoreLazily(ctx context.Context) (*pb.Restored, error) {
	pc := in.pc
	req, err := in.restoreRequest(false)
	if err != nil {
		return nil, err
	}
	req.Opts.LazyPages = proto.Bool(true)
	req.Opts.LeaveStopped = proto.Bool(false)
	if !in.d.reg.restoring(in.id) {
		return nil, errResolvedAbort
	}
	in.warm.release()
	pc.start = time.Now()
	res, err := in.d.o.CRIU.Restore(ctx, req)
	if err != nil {
		return nil, err
	}
	in.restored = res.Pid
	if st, err := proc.ReadStat(res.Pid); err == nil {
		in.restoredStart = st.StartTime
	}
	if err := pc.keeper.Target(res.Pid, in.restoredStart); err != nil {
		return nil, err
	}
	in.d.reg.update(in.id, func(st *pb.MigrationState) { st.Pid = int32(res.Pid) })
	restored := &pb.Restored{Pid: int32(res.Pid), Postcopy: true, RestoreNanos: int64(time.Since(pc.start))}
	if err := in.placeTree(restored); err != nil {
		return nil, err
	}
	if err := in.record(statePostcopy); err != nil {
		return nil, err
	}
	in.log.Info("restored with lazy pages: the copy runs, under the lease", "pid", res.Pid, "took", time.Since(pc.start))
	return restored, nil
}

// statePostcopy is a migration's state on disk while its copy runs under
// the lease: its keeper's record says whether it was committed.
const statePostcopy = "postcopy"

// leaseLoop renews the lease every fifth of it, from the first grant
// until ctx ends, and reads the source's messages meanwhile: Commit is
// said on pc.commit; the keeper killing the copy, the source lost or a
// message out of place on pc.failed.
func (in *incoming) leaseLoop(ctx context.Context) {
	pc := in.pc
	fail := pc.fail
	msgs, errs := in.receiveAll(ctx)
	tick := time.NewTicker(pc.holder.Duration / 5)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-pc.keeper.Dead():
			fail(errors.New("the lease keeper killed the copy: the lease ended (the source was not heard from in time)"))
			return
		case err := <-errs:
			fail(err)
			return
		case <-tick.C:
			// A copy that cannot get its pages is as cut off as one
			// that does not hear from the source.
			if w := pc.waiting(); w > pc.holder.Duration {
				fail(fmt.Errorf("a page request has waited %v, more than the lease: the copy cannot go on", w.Round(time.Millisecond)))
				return
			}
			seq := pc.holder.Ask()
			if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_LeaseAsk{LeaseAsk: &pb.LeaseAsk{Seq: seq}}}); err != nil {
				fail(err)
				return
			}
		case msg := <-msgs:
			switch {
			case msg.GetLeaseGrant() != nil:
				if expiry, ok := pc.holder.Granted(msg.GetLeaseGrant().Seq); ok {
					if err := pc.keeper.Extend(expiry); err != nil {
						fail(err)
						return
					}
				}
			case msg.GetHeldPages() != nil:
				if err := pc.held.Add(heldRuns(msg.GetHeldPages())); err != nil {
					fail(fmt.Errorf("%w: %w", ErrProtocol, err))
					return
				}
			case msg.GetCommit() != nil:
				close(pc.commit)
			default:
				fail(unexpected(msg, "LeaseGrant, HeldPages or Commit"))
				return
			}
		}
	}
}

// heldRuns are the runs of a HeldPages message.
func heldRuns(m *pb.HeldPages) []postcopy.Run {
	runs := make([]postcopy.Run, 0, len(m.Runs))
	for _, r := range m.Runs {
		if r.Pages > postcopy.MaxRunPages {
			r.Pages = 0 // refused by Held.Add, without overflowing
		}
		runs = append(runs, postcopy.Run{Pid: uint64(r.Pid), Start: r.Vaddr, End: r.Vaddr + r.Pages*criu.PageSize})
	}
	return runs
}

// receiveAll reads control messages into msgs until one fails (errs) or
// ctx ends. One reader at a time: a call's reader ends before the next
// call starts (each waits for its own first message or error).
func (in *incoming) receiveAll(ctx context.Context) (<-chan *pb.Envelope, <-chan error) {
	if in.pcMsgs == nil {
		in.pcMsgs, in.pcErrs = make(chan *pb.Envelope), make(chan error, 1)
		go func() {
			for {
				msg, err := in.recvWithin(ctx, in.d.o.Timeout)
				if err != nil {
					in.pcErrs <- err
					return
				}
				select {
				case in.pcMsgs <- msg:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	return in.pcMsgs, in.pcErrs
}

// commitPostcopy: the source has committed; the keeper stops guarding
// the copy, or says it killed it.
func (in *incoming) commitPostcopy(ctx context.Context) error {
	pc := in.pc
	if err := pc.keeper.Commit(); err != nil {
		return in.fail("commit", err)
	}
	pc.committed = true
	if err := in.record("running"); err != nil {
		in.log.Warn("the tree runs, but its state could not be recorded", "err", err)
	}
	reap(in.restored)
	in.d.reg.end(in.id, StateDone, nil, true)
	if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Done{Done: &pb.Done{Pid: int32(in.restored)}}}); err != nil {
		in.log.Warn("could not confirm to the source", "err", err)
	}
	return nil
}

// endPostcopy, in finish: the keeper kills the copy unless it committed
// (closing its commands), then the daemon and the relay go.
func (in *incoming) endPostcopy() {
	pc := in.pc
	if pc == nil {
		return
	}
	if pc.keeper != nil {
		pc.keeper.Close()
		if !pc.committed {
			in.log.Warn("the lease keeper killed the copy", "pid", in.restored)
		}
	}
	if pc.daemon != nil {
		pc.daemon.Kill()
		<-pc.daemon.Done()
	}
	if pc.stream != nil {
		pc.stream.Close()
	}
	if pc.sock != nil {
		pc.sock.Close()
	}
	if pc.held != nil {
		pc.held.Close()
	}
}

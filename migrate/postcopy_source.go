package migrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/postcopy"
	"github.com/phaul/phaul/transport"
)

// Post-copy on the source, as its phases run:
//
//   - snapshot: CRIU dumps the tree into the work directory, every page
//     included, and leaves it stopped (SIGSTOP): held by the kernel, not
//     by a process of phaul's, so that nothing (phaul or CRIU killed)
//     lets it run while the destination's copy may;
//   - eager: the pages the restore reads go to the destination's page
//     server (postcopy.WriteEager), then the other images;
//   - serve: the destination restores with lazy pages and runs its copy;
//     the source answers its page requests from the snapshot and grants
//     its lease asks, until it says every page has arrived (AllPages);
//     after pre-copy rounds it also finds, from the first grant on (as
//     the destination restores), the lazy pages it holds unchanged from
//     the rounds (postcopy.Classify) and says so (HeldPages): the
//     destination serves those itself, so that only what changed crosses
//     after the restore, and nothing is added to the freeze;
//   - commit: the decision recorded, Commit; on Done the stopped tree is
//     killed and the snapshot removed.
//
// A failure before the commit is decided stops the grants; once the
// destination's lease has surely ended (its last grant, the lease and a
// margin later) the tree is let go (SIGCONT) where it was frozen. What the
// destination's copy did meanwhile is lost.

// DefaultLease is how long the destination's copy may run without
// hearing from the source; the source waits this and LeaseMargin after
// its last grant before it resumes its own tree.
const (
	DefaultLease = 5 * time.Second
	LeaseMargin  = time.Second
)

// heldTask is a task of a tree the source keeps stopped.
type heldTask struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
	// Stopped: it was stopped before the migration, and stays so.
	Stopped bool `json:"stopped,omitempty"`
}

// treeTasks lists the tasks of the tree of pid, as they are now.
func treeTasks(pid int) []heldTask {
	var out []heldTask
	for _, p := range proc.Tree(pid) {
		if st, err := proc.ReadStat(p); err == nil {
			out = append(out, heldTask{Pid: p, Start: st.StartTime, Stopped: st.State == 'T'})
		}
	}
	return out
}

// letGo resumes the held tasks that were not stopped before.
func letGo(tasks []heldTask) error {
	var first error
	for _, t := range tasks {
		if t.Stopped || !proc.Same(t.Pid, t.Start) {
			continue
		}
		if err := unix.Kill(t.Pid, unix.SIGCONT); err != nil && first == nil {
			first = fmt.Errorf("resume %d: %w", t.Pid, err)
		}
	}
	return first
}

// killHeld kills the held tasks and waits until they are gone.
func killHeld(tasks []heldTask) error {
	for _, t := range tasks {
		if proc.Same(t.Pid, t.Start) {
			_ = unix.Kill(t.Pid, unix.SIGKILL)
		}
	}
	for _, t := range tasks {
		for deadline := time.Now().Add(5 * time.Second); proc.Same(t.Pid, t.Start); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				return fmt.Errorf("pid %d does not die", t.Pid)
			}
		}
	}
	return nil
}

// postcopyRefusal says why this migration cannot be post-copy (yet).
func (m *source) postcopyRefusal() error {
	switch {
	case len(m.moves) > 0:
		return errors.New("--postcopy cannot move addresses yet: leave out --move-address")
	case m.o.TCPEstablished:
		return errors.New("--postcopy cannot carry established TCP connections yet: the tree has some (stop them, or migrate without --postcopy)")
	}
	return nil
}

// snapshotDump dumps the tree into dir, every page included, and leaves
// it stopped. It returns when the tree was frozen.
func (m *source) snapshotDump(ctx context.Context, dir string) (time.Time, error) {
	o := m.o
	var frozen time.Time
	notify := func(ctx context.Context, n criu.Notification) error {
		if n.Name == criu.NotifyPreDump {
			frozen = time.Now()
		}
		return nil
	}
	opts := &rpc.CriuOpts{
		Pid:               proto.Int32(int32(o.Pid)),
		ShellJob:          proto.Bool(o.ShellJob),
		FileLocks:         proto.Bool(o.FileLocks),
		LeaveStopped:      proto.Bool(true),
		ManageCgroupsMode: rpc.CriuCgMode_SOFT.Enum(),
	}
	for _, t := range m.terms {
		opts.External = append(opts.External, t.Key)
	}
	opts.CgroupDumpController = dumpControllers(m.sets)
	m.r.Freeze = "ptrace"
	_, err := o.CRIU.Dump(ctx, criu.Request{Opts: opts, ImagesDir: dir, Notify: notify})
	m.r.Dump = Duration(time.Since(frozen))
	return frozen, err
}

// sendSnapshot sends the pages the restore reads through the page stream
// (as CRIU's dump would), then the other images.
func (m *source) sendSnapshot(ctx context.Context, dir string) error {
	pages, err := m.sess.Open(ctx, transport.KindPages)
	if err != nil {
		return err
	}
	defer pages.Close()
	ours, theirs, err := socketpair()
	if err != nil {
		return err
	}
	defer ours.Close()
	defer theirs.Close()
	var counts transport.Counts
	pumpDone := m.pumpPages(ctx, nil, pages, ours, &counts)
	// A lost session or a cancelled ctx fails the writer's waits for the
	// page server's answers (a failed pump shuts ours down).
	stop := context.AfterFunc(ctx, func() { shutdown(theirs, unix.SHUT_RDWR) })
	defer stop()
	written := make(chan struct{})
	defer close(written)
	go func() {
		select {
		case <-m.sess.Done():
			shutdown(theirs, unix.SHUT_RDWR)
		case <-written:
		}
	}()
	st, err := postcopy.WriteEager(theirs, dir)
	if err != nil {
		return fmt.Errorf("eager pages: %w", err)
	}
	shutdown(theirs, unix.SHUT_WR)
	m.r.EagerPages = st.Pages
	if err := m.sendImages(ctx, dir, pumpDone, &counts); err != nil {
		return err
	}
	m.r.PageBytes, m.r.WireBytes = counts.Raw.Load(), counts.Wire.Load()
	return nil
}

// dumpPostcopy is the post-copy source after the checks (and the
// pre-copy rounds that left plan).
func (m *source) dumpPostcopy(ctx context.Context, plan *precopyPlan) error {
	o := m.o
	defer m.warm.release()
	m.setPhase("dump")
	if err := os.MkdirAll(o.WorkDir, 0o700); err != nil {
		m.abort(err)
		return m.refuse(err)
	}
	dir, err := os.MkdirTemp(o.WorkDir, o.ID+"-")
	if err != nil {
		m.abort(err)
		return m.refuse(err)
	}
	m.held = treeTasks(o.Pid)
	if err := m.decide(StateUndecided); err != nil {
		m.abort(err)
		os.RemoveAll(dir)
		return m.refuse(err)
	}
	m.warm.release()
	frozen, err := m.snapshotDump(ctx, dir)
	if err != nil {
		// CRIU resumed the tree: nothing was sent. Its log stays.
		m.abort(err)
		removeDecision(o.WorkDir, o.ID)
		return &Error{Phase: m.phase, SourceRunning: proc.ValidateTarget(o.Pid) == nil, Err: err}
	}
	m.r.Postcopy, m.frozen = true, frozen
	g := &postcopy.Grantor{Duration: o.Lease, Margin: LeaseMargin}
	all, err := m.handOver(ctx, dir, g, plan)
	if err == nil {
		err = m.commitPostcopy(ctx, g, all, frozen)
	}
	if err != nil {
		return m.postcopyFailed(err, g, dir)
	}
	os.RemoveAll(dir)
	return nil
}

// handOver sends the snapshot, then serves its lazy pages and grants the
// destination's lease until every page has arrived.
func (m *source) handOver(ctx context.Context, dir string, g *postcopy.Grantor, plan *precopyPlan) (*pb.AllPages, error) {
	snap, err := postcopy.OpenSnapshot(dir)
	if err != nil {
		return nil, err
	}
	defer snap.Close()
	m.r.LazyPages = snap.Lazy()
	if err := m.sendSnapshot(ctx, dir); err != nil {
		return nil, err
	}
	m.setPhase("restore")
	served := make(chan error, 1)
	go func() { served <- m.serveLazy(ctx, snap) }()
	var held *heldFinder
	if plan != nil {
		held = &heldFinder{m: m, snap: snap, plan: plan}
		defer held.stop()
	}
	return m.grantUntilAllPages(ctx, g, served, held)
}

// heldFinder finds the lazy pages the destination holds from the rounds
// and says so (HeldPages), beside the grants.
type heldFinder struct {
	m      *source
	snap   *postcopy.Snapshot
	plan   *precopyPlan
	cancel context.CancelFunc
	done   chan struct{}
}

// maxHeldRuns bounds the runs of one HeldPages message (about 20 bytes
// each: a lease grant never waits long behind one).
const maxHeldRuns = 4096

// start classifies the snapshot's lazy pages and sends the held runs,
// unless it has started already.
func (f *heldFinder) start(ctx context.Context) {
	if f.cancel != nil {
		return
	}
	// stop cancels the search, and the sending between messages: a
	// message is never cut short on the control stream.
	search, cancel := context.WithCancel(ctx)
	f.cancel = cancel
	f.done = make(chan struct{})
	go func() {
		defer close(f.done)
		t0 := time.Now()
		runs, err := postcopy.Classify(search, f.snap, f.plan.hasher, f.plan.table)
		if err != nil {
			f.m.log.Warn("could not find the pages the destination holds: it fetches them all", "err", err)
			return
		}
		var pages int64
		for len(runs) > 0 && search.Err() == nil {
			n := min(len(runs), maxHeldRuns)
			msg := &pb.HeldPages{}
			for _, r := range runs[:n] {
				msg.Runs = append(msg.Runs, &pb.HeldRun{Pid: uint32(r.Pid), Vaddr: r.Start, Pages: r.Pages()})
				pages += int64(r.Pages())
			}
			if err := f.m.send(ctx, &pb.Envelope{Msg: &pb.Envelope_HeldPages{HeldPages: msg}}); err != nil {
				return
			}
			runs = runs[n:]
		}
		f.m.log.Info("the destination holds lazy pages from the rounds", "pages", pages, "took", time.Since(t0))
	}()
}

// stop ends the search and waits for it.
func (f *heldFinder) stop() {
	if f.cancel != nil {
		f.cancel()
		<-f.done
	}
}

// serveLazy takes the destination's lazy stream and answers its page
// requests from the snapshot.
func (m *source) serveLazy(ctx context.Context, snap *postcopy.Snapshot) error {
	kind, st, err := m.sess.Accept(ctx)
	if err != nil {
		return err
	}
	if kind != transport.KindLazy {
		st.Close()
		return fmt.Errorf("%w: unexpected %s stream", ErrProtocol, transport.KindName(kind))
	}
	return postcopy.Serve(ctx, st, snap, &m.lazy)
}

// grantUntilAllPages answers the destination's control messages while
// its copy runs: lease asks granted, its restore noted, until AllPages.
func (m *source) grantUntilAllPages(ctx context.Context, g *postcopy.Grantor, served <-chan error, held *heldFinder) (*pb.AllPages, error) {
	for {
		// The destination asks every fifth of the lease: silent for a
		// whole one, it is lost (or stalled), and its copy dies.
		msg, err := m.recvWithin(ctx, m.o.Lease)
		if err != nil {
			select {
			case serr := <-served:
				if serr != nil {
					err = fmt.Errorf("%w (serving pages: %v)", err, serr)
				}
			default:
			}
			return nil, err
		}
		switch {
		case msg.GetLeaseAsk() != nil:
			if err := m.grant(ctx, g, msg.GetLeaseAsk()); err != nil {
				return nil, err
			}
			// From the first grant on the destination takes any
			// message: the search starts before its restore.
			if held != nil {
				held.start(ctx)
			}
		case msg.GetRestored() != nil:
			m.restored(msg.GetRestored())
			m.r.DestPid = int(msg.GetRestored().Pid)
			m.r.Downtime = Duration(time.Since(m.frozen))
			m.log.Info("the destination's copy runs; serving its pages", "dest_pid", m.r.DestPid, "lazy_pages", m.r.LazyPages)
			m.setPhase("pages")
		case msg.GetAllPages() != nil:
			return msg.GetAllPages(), nil
		default:
			return nil, unexpected(msg, "LeaseAsk, Restored or AllPages")
		}
	}
}

// commitPostcopy: every page has arrived; the source commits, and once
// the destination confirms (its keeper stopped guarding the copy) kills
// its stopped tree.
func (m *source) commitPostcopy(ctx context.Context, g *postcopy.Grantor, all *pb.AllPages, frozen time.Time) error {
	m.setPhase("commit")
	m.r.LazyFetched, m.r.LazyHeld, m.r.AllPagesAfter = all.Pages, all.Held, Duration(time.Duration(all.Nanos))
	if err := m.decide("commit"); err != nil {
		return err
	}
	// Grants go on until Done: the keeper must not let the lease end
	// while it is asked to commit.
	pid, err := m.commitLeased(ctx, g)
	if err != nil {
		return err
	}
	g.Stop()
	m.setPhase("resume")
	if err := killHeld(m.held); err != nil {
		m.log.Error("the source tree, stopped, does not die", "err", err)
	}
	m.r.Committed, m.r.Running, m.r.DestPid = true, true, pid
	if err := m.decide("committed"); err != nil {
		m.log.Warn("cannot record the commit", "err", err)
	}
	removeDecision(m.o.WorkDir, m.o.ID)
	m.log.Info("post-copy done", "dest_pid", pid, "since_freeze", time.Since(frozen))
	return nil
}

// commitLeased sends Commit and waits for Done, granting the lease asks
// that come meanwhile.
func (m *source) commitLeased(ctx context.Context, g *postcopy.Grantor) (int, error) {
	if err := m.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Commit{Commit: &pb.Commit{}}}); err != nil {
		return 0, err
	}
	for {
		msg, err := m.recv(ctx)
		if err != nil {
			return 0, err
		}
		switch {
		case msg.GetLeaseAsk() != nil:
			if err := m.grant(ctx, g, msg.GetLeaseAsk()); err != nil {
				return 0, err
			}
		case msg.GetDone() != nil:
			return int(msg.GetDone().Pid), nil
		default:
			return 0, unexpected(msg, "LeaseAsk or Done")
		}
	}
}

// grant grants an ask, while the grantor grants.
func (m *source) grant(ctx context.Context, g *postcopy.Grantor, ask *pb.LeaseAsk) error {
	if !g.Grant() {
		return nil
	}
	return m.send(ctx, &pb.Envelope{Msg: &pb.Envelope_LeaseGrant{LeaseGrant: &pb.LeaseGrant{Seq: ask.Seq}}})
}

// postcopyFailed ends a post-copy migration that failed after the
// snapshot. Before the commit was decided, the source waits until the
// destination's lease has surely ended, then lets its tree go. After it,
// unless the destination said its copy was killed, the tree stays
// stopped: the destination may run the only copy.
func (m *source) postcopyFailed(err error, g *postcopy.Grantor, dir string) error {
	safe := g.Stop()
	var re *RemoteError
	killed := errors.As(err, &re)
	if m.decided == "commit" && !killed {
		m.log.Error("lost the destination after deciding to commit: the source tree stays stopped", "err", err, "snapshot", dir)
		return &Error{Phase: m.phase, InDoubt: true, Err: fmt.Errorf("%w; the source tree stays stopped (its snapshot in %s): run `phaul resolve %s` once the destination is reachable", err, dir, m.o.ID)}
	}
	m.abort(err)
	if wait := time.Duration(safe - postcopy.Now()); wait > 0 {
		m.log.Warn("waiting until the destination's lease has surely ended before resuming the tree here", "wait", wait.Round(time.Millisecond), "err", err)
	}
	postcopy.SleepUntil(safe)
	if rerr := letGo(m.held); rerr != nil {
		m.log.Error("the source tree could not all be resumed", "err", rerr)
	}
	removeDecision(m.o.WorkDir, m.o.ID)
	os.RemoveAll(dir)
	m.log.Warn("post-copy failed: the tree runs here again from where it was frozen; what the destination's copy did is lost", "err", err)
	return &Error{Phase: m.phase, SourceRunning: proc.ValidateTarget(m.o.Pid) == nil, Err: err}
}

package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/cgroups"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/internal/tty"
	"github.com/phaul/phaul/precheck"
	"github.com/phaul/phaul/transport"
)

// DestOptions configure the destination side.
type DestOptions struct {
	WorkDir string // one directory per migration below it
	// LogDir, if set, gets the logs of each migration (CRIU's, the
	// terminals') in LogDir/ID, kept when a failed migration's work
	// directory is removed; "" keeps them in the work directory.
	LogDir        string
	CgroupRoot    string         // default root for restored trees
	ManageCgroups rpc.CriuCgMode // CRIU's cgroup mode on restore
	Timeout       time.Duration  // bound on each wait for the source
	CRIU          Restorer
	CRIUVersion   string
	Breakpoints   string // how this host's CRIU copes with hardware breakpoints, for the checks
	// MaxMigrations bounds the migrations restoring at once; beyond it
	// the checks answer a transient "busy". 0 means no bound.
	MaxMigrations int
	// AddressInterface is the interface addresses moved here go to; ""
	// is the one on each address's subnet.
	AddressInterface string
	// ImagesOnDisk keeps the images in the work dir instead of a tmpfs
	// per migration; for tests that cannot mount.
	ImagesOnDisk bool
	Logger       *slog.Logger
}

// Destination restores migrations on this host.
type Destination struct {
	o       DestOptions
	layout  *cgroups.Layout
	cpuOnce sync.Once
	cpu     *precheck.CPUInfo
	// The post-copy verdict: a lazy self-test, run once (postcopy_dest.go).
	lazyOnce    sync.Once
	lazyVerdict *pb.Verdict

	mu     sync.Mutex
	active int // migrations past Prepare

	reg       registry   // for Status
	resolveMu sync.Mutex // one Resolve at a time
}

// admit takes a place for one migration, or says why not.
func (d *Destination) admit() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.o.MaxMigrations > 0 && d.active >= d.o.MaxMigrations {
		return fmt.Errorf("the destination is busy: %d migrations in flight (its limit, --max-migrations, is %d); retry later", d.active, d.o.MaxMigrations)
	}
	d.active++
	return nil
}

func (d *Destination) release() {
	d.mu.Lock()
	d.active--
	d.mu.Unlock()
}

// busy says whether a new migration would be refused now.
func (d *Destination) busy() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.o.MaxMigrations > 0 && d.active >= d.o.MaxMigrations {
		return fmt.Errorf("the destination is busy: %d migrations in flight (its limit, --max-migrations, is %d)", d.active, d.o.MaxMigrations)
	}
	return nil
}

// NewDestination checks the options and the host's cgroup layout.
func NewDestination(o DestOptions) (*Destination, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.CRIU == nil {
		return nil, errors.New("destination: no CRIU")
	}
	if err := os.MkdirAll(o.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("destination: work dir: %w", err)
	}
	if o.LogDir != "" {
		if err := os.MkdirAll(o.LogDir, 0o700); err != nil {
			return nil, fmt.Errorf("destination: log dir: %w", err)
		}
	}
	if _, err := CgroupRoots(nil, o.CgroupRoot, &cgroups.Layout{}); err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	layout, err := cgroups.Detect()
	if err != nil {
		return nil, err
	}
	d := &Destination{o: o, layout: layout}
	d.recover()
	return d, nil
}

// errAborted: the migration was called off (by the source, unless it
// says otherwise).
var errAborted = errors.New("aborted")

// incoming is one migration being received.
type incoming struct {
	d *Destination
	// cancel ends the migration from outside (a resolve's abort: see
	// why).
	cancel context.CancelCauseFunc
	sess   *transport.Session
	log    *slog.Logger
	id     string
	dir    string // work dir of this migration
	imgs   string // its images
	logs   string // its logs: dir, or LogDir/ID
	prep   *pb.Prepare
	roots  []*pb.CgroupRoot
	phase  string

	ps        PageServer
	psw       *psWatch    // ps's end
	warm      *warmMemory // touched for the restore (warm.go)
	pagesDone chan error
	imgsDone  chan error
	pagesSock *os.File
	imgFiles  int // received, valid once imgsDone has answered
	// imgsReceived: imgsDone answered nil while the pages were coming.
	imgsReceived bool
	protoErr     chan error // a protocol error found by acceptStreams
	imgBytes     int64
	pageCounts   transport.Counts
	// carry places the files the source carries (carry.go); filesDone
	// answers once their stream has ended (filesReceived: while the
	// pages were still coming).
	carry         *carrier
	filesDone     chan error
	filesReceived bool
	fileCounts    transport.Counts
	mounted       bool // a tmpfs is mounted on imgs
	restored      int  // root pid of the restored, held tree
	// freezer is the freezer cgroup directory the tree is held frozen
	// in; "" when it is held stopped (hold.go).
	freezer string
	// addrs are the addresses that came with the tree, as placed here;
	// guarded, whether the guard for them is up (addresses.go).
	addrs   []placedAddress
	guarded bool
	// stopped lists the tasks that were stopped at the dump (their PIDs
	// in the tree's namespace): the resume leaves them so.
	stopped []int
	// restoredStart is its start time (proc.Stat.StartTime).
	restoredStart uint64
	mode          rpc.CriuCgMode // CRIU's cgroup mode for this migration
	ttyMode       tty.Mode
	terms         *terminals
	checkOnly     bool            // a `phaul check`: not listed by Status
	facts         *pb.SourceFacts // from the checks; nil if the source skipped them
	started       time.Time       // Hello received
	sourceHost    string
	// Post-copy (postcopy_dest.go): its state, the pages fetched, the
	// control messages read while the copy runs.
	pc *postcopyState
	// Pages from the source (of them, fetched ahead of the daemon's
	// requests), and held here.
	pcFetched, pcAhead, pcHeld atomic.Int64
	pcMsgs                     chan *pb.Envelope
	pcErrs                     chan error
}

// Serve runs one migration on sess until it is done, failed or in doubt.
func (d *Destination) Serve(ctx context.Context, sess *transport.Session) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	in := &incoming{d: d, sess: sess, log: d.o.Logger.With("peer", sess.RemoteAddr().String()),
		cancel:    cancel,
		pagesDone: make(chan error, 1), imgsDone: make(chan error, 1), protoErr: make(chan error, 1), filesDone: make(chan error, 1)}
	in.carry = &carrier{offered: map[string]*pb.Carry{}, replace: func(string) bool { return false }, log: in.log}
	err := in.run(ctx)
	if err != nil {
		err = in.why(err)
	}
	in.finish(err)
	d.reg.finished(in.id)
	return err
}

// errResolvedAbort: `phaul resolve` (abort) ended the migration before
// the tree was restored and handed over here.
var errResolvedAbort = fmt.Errorf("%w by phaul resolve before its tree was handed over here", errAborted)

// why is err, or the reason the migration was ended from outside (a
// resolve's abort, recorded in the registry before it cancels anything),
// which made err.
func (in *incoming) why(err error) error {
	if in.d.reg.aborted(in.id) {
		return errResolvedAbort
	}
	return err
}

func (in *incoming) fail(phase string, err error) error {
	err = in.why(err)
	// Listed as failed before the source hears it: it may ask phaul
	// status right away.
	state := StateFailed
	if errors.Is(err, errResolvedAbort) {
		state = StateAborted
	}
	in.d.reg.end(in.id, state, fmt.Errorf("%s: %w", phase, err), !in.checkOnly)
	f := &pb.Failure{Phase: phase, Message: err.Error()}
	var ce *criu.Error
	if errors.As(err, &ce) {
		f.CriuLines = ce.Lines
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	in.sess.Control().Send(ctx, &pb.Envelope{Msg: &pb.Envelope_Failure{Failure: f}})
	return fmt.Errorf("%s: %w", phase, err)
}

func (in *incoming) recv(ctx context.Context) (*pb.Envelope, error) {
	return in.recvWithin(ctx, in.d.o.Timeout)
}

func (in *incoming) recvWithin(ctx context.Context, d time.Duration) (*pb.Envelope, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	msg, err := in.sess.Control().Recv(ctx)
	if errors.Is(err, transport.ErrFrameTooLarge) || errors.Is(err, transport.ErrUnknownMessage) || errors.Is(err, transport.ErrMalformed) {
		// The source broke the protocol: say so, then hang up.
		return nil, in.fail(in.phase, fmt.Errorf("%w: %w", ErrProtocol, err))
	}
	if err != nil {
		return nil, fmt.Errorf("connection to the source: %w", err)
	}
	if a := msg.GetAbort(); a != nil {
		return nil, fmt.Errorf("the source %w: %s", errAborted, a.Reason)
	}
	return msg, nil
}

func (in *incoming) send(ctx context.Context, e *pb.Envelope) error {
	ctx, cancel := context.WithTimeout(ctx, in.d.o.Timeout)
	defer cancel()
	return in.sess.Control().Send(ctx, e)
}

func (in *incoming) setPhase(p string) {
	in.phase = p
	in.d.reg.update(in.id, func(st *pb.MigrationState) { st.Phase = p })
	in.log.Info("phase", "phase", p)
}

func (in *incoming) run(ctx context.Context) error {
	in.phase = "connect" // logged once the migration's ID is known
	msg, err := in.recv(ctx)
	if err != nil {
		return err
	}
	if req := msg.GetStatusRequest(); req != nil {
		in.checkOnly = true
		return in.serveStatus(ctx, req)
	}
	if req := msg.GetResolve(); req != nil {
		return in.serveResolve(ctx, req)
	}
	if err := in.hello(ctx, msg); err != nil {
		return err
	}
	in.setPhase("checks")
	if msg, err = in.checks(ctx); err != nil || msg == nil {
		return err // nil and nil: the checks were all it asked for
	}
	if err := in.accept(msg); err != nil {
		return in.fail("checks", err)
	}
	if err := in.d.admit(); err != nil {
		return in.fail("checks", err)
	}
	defer in.d.release()
	size, err := in.prepare()
	if err != nil {
		return in.fail("checks", err)
	}
	if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Ready{Ready: &pb.Ready{CgroupRoots: in.roots, PageRoom: size - imagesMargin}}}); err != nil {
		return err
	}
	if err := in.rounds(ctx); err != nil {
		return err
	}
	in.setPhase("transfer")
	if err := in.receive(ctx); err != nil {
		return err
	}
	if in.prep.Postcopy {
		return in.postcopy(ctx)
	}
	in.setPhase("restore")
	if err := in.takeAddresses(); err != nil {
		return in.fail("restore", err)
	}
	restored, err := in.restoreTree(ctx)
	if err != nil {
		return in.fail("restore", err)
	}
	if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Restored{Restored: restored}}); err != nil {
		return err
	}
	in.setPhase("commit")
	if msg, err = in.recv(ctx); err != nil {
		return err
	}
	if msg.GetCommit() == nil {
		return in.fail("commit", unexpected(msg, "Commit"))
	}
	return in.resume(ctx)
}

// hello takes the source's Hello: the protocol, the migration's ID (its
// place in the registry), and answers Welcome.
func (in *incoming) hello(ctx context.Context, msg *pb.Envelope) error {
	hello := msg.GetHello()
	if hello == nil {
		return in.fail("connect", unexpected(msg, "Hello"))
	}
	if hello.ProtocolVersion != transport.ProtocolVersion {
		return in.fail("connect", fmt.Errorf("source speaks protocol %d, this phaul-service %d: install the same phaul version on both hosts", hello.ProtocolVersion, transport.ProtocolVersion))
	}
	if err := validID(hello.MigrationId); err != nil {
		return in.fail("connect", err)
	}
	in.id, in.started, in.sourceHost = hello.MigrationId, time.Now(), hello.GetHost().GetHostname()
	in.log = in.log.With("migration", in.id)
	if err := in.d.reg.start(&pb.MigrationState{Id: in.id, Phase: in.phase, SourceHost: in.sourceHost,
		Peer: in.sess.RemoteAddr().String(), StartedUnixNano: in.started.UnixNano()}, in.cancel); err != nil {
		in.id = "" // not ours to end
		return in.fail("connect", err)
	}
	in.setPhase("connect")
	in.log.Info("migration offered", "source_host", hello.GetHost().GetHostname())
	return in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Welcome{Welcome: &pb.Welcome{
		ProtocolVersion: transport.ProtocolVersion, Host: hostInfo(in.d.o.CRIUVersion),
	}}})
}

// checks answers the source's Check, if it sends one, and returns the
// message after it (Prepare); nil, nil when the checks were all it asked
// for (phaul check).
func (in *incoming) checks(ctx context.Context) (*pb.Envelope, error) {
	msg, err := in.recv(ctx)
	if err != nil {
		return nil, err
	}
	chk := msg.GetCheck()
	if chk == nil {
		return msg, nil
	}
	in.checkOnly = chk.Only
	in.facts = chk.Facts
	if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_CheckReport{CheckReport: &pb.CheckReport{Verdicts: in.judge(ctx, chk)}}}); err != nil {
		if chk.Only {
			// yamux may report a frame it did write as failed when
			// the peer hangs up at once, as `phaul check` does
			// after reading it; nothing to clean up either way.
			in.log.Debug("checks answered; the source hung up", "err", err)
			return nil, nil
		}
		return nil, err
	}
	if chk.Only {
		in.log.Info("checks answered", "only", true)
		return nil, nil
	}
	return in.recv(ctx)
}

// accept takes Prepare and the files it says will be carried.
func (in *incoming) accept(msg *pb.Envelope) error {
	in.prep = msg.GetPrepare()
	if in.prep == nil {
		return unexpected(msg, "Prepare")
	}
	in.d.reg.update(in.id, func(st *pb.MigrationState) { st.Comm, st.SourcePid = in.prep.Comm, in.prep.Pid })
	return in.carry.accept(in.prep.Carry)
}

// prepare readies this host for an admitted migration: the cgroup mode
// and roots, the terminals' mode, the work directory, the log directory
// and the tmpfs the images go to; then it records the migration as
// receiving. It returns the tmpfs's size.
func (in *incoming) prepare() (uint64, error) {
	o := in.d.o
	var err error
	if in.mode, err = in.d.cgroupMode(in.prep.ManageCgroups); err != nil {
		return 0, err
	}
	if in.ttyMode, err = tty.ParseMode(in.prep.Tty); err != nil {
		return 0, err
	}
	if in.roots, err = in.cgroupRoots(in.prep.Cgroups, in.prep.CgroupRoot, in.mode); err != nil {
		return 0, err
	}
	if err := prepareCpuset(in.d.layout, in.roots); err != nil {
		return 0, err
	}
	// in.dir is set only once it is ours: finish removes it on failure,
	// and a second migration with the ID of an earlier one must not
	// remove the earlier one's directory.
	dir := filepath.Join(o.WorkDir, in.id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			err = fmt.Errorf("migration %s was already received here (%s exists): a migration ID is used once", in.id, dir)
		}
		return 0, fmt.Errorf("work dir: %w", err)
	}
	in.dir = dir
	in.carry.dir, in.carry.id, in.carry.log = dir, in.id, in.log
	in.imgs = filepath.Join(in.dir, "images")
	in.logs = in.dir
	if o.LogDir != "" {
		in.logs = filepath.Join(o.LogDir, in.id)
		if err := os.MkdirAll(in.logs, 0o700); err != nil {
			return 0, fmt.Errorf("log dir: %w", err)
		}
	}
	if err := os.Mkdir(in.imgs, 0o700); err != nil {
		return 0, fmt.Errorf("work dir: %w", err)
	}
	// The pages never touch a disk: they go to a tmpfs of this
	// migration, sized from the memory the source announced, which also
	// bounds what a source can make the service store.
	size := imagesTmpfsSize(in.prep.MemoryBytes, in.prep.Precopy)
	if o.ImagesOnDisk {
		// only for tests without the privilege to mount
	} else if err := unix.Mount("phaul-"+in.id, in.imgs, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC,
		fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		return 0, fmt.Errorf("mount a tmpfs of %d bytes for the images: %w", size, err)
	}
	in.mounted = true
	return size, in.record("receiving")
}

// receive takes the dump: the page stream (as long as it keeps coming),
// then ImagesSent, and the streams it counts.
func (in *incoming) receive(ctx context.Context) error {
	if err := in.waitPages(ctx); err != nil {
		// The source may have said why; prefer its Abort.
		if msg, rerr := in.recvWithin(ctx, time.Second); rerr != nil && errors.Is(rerr, errAborted) {
			return rerr
		} else if rerr == nil && msg.GetImagesSent() == nil {
			return in.fail("transfer", unexpected(msg, "ImagesSent"))
		}
		return in.fail("transfer", fmt.Errorf("page stream: %w", err))
	}
	msg, err := in.recv(ctx)
	if err != nil {
		return err
	}
	sent := msg.GetImagesSent()
	if sent == nil {
		return in.fail("transfer", unexpected(msg, "ImagesSent"))
	}
	if err := in.waitStreams(ctx, sent); err != nil {
		return in.fail("transfer", err)
	}
	return nil
}

// resume lets the restored tree run once the source committed (its
// moved addresses open first), and confirms it with Done.
func (in *incoming) resume(ctx context.Context) error {
	in.setPhase("resume")
	if in.guarded {
		// The guard comes down before the tree runs: its first answers
		// go out at once.
		if err := openAddresses(in.id, in.addrs, in.log); err != nil {
			return in.fail("resume", err)
		}
		in.guarded = false
	}
	if err := releaseTree(in.log, in.restored, in.freezer, in.stopped); err != nil {
		return in.fail("resume", err)
	}
	if err := in.record("running"); err != nil {
		in.log.Warn("the tree runs, but its state could not be recorded", "err", err)
	}
	reap(in.restored)
	in.d.reg.end(in.id, StateDone, nil, true) // before the source hears it
	if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Done{Done: &pb.Done{Pid: int32(in.restored)}}}); err != nil {
		in.log.Warn("could not confirm to the source", "err", err)
	}
	return nil
}

// restoreRequest is the CRIU restore of the images received: their
// credentials compared with the source's, the terminals connected, the
// cgroups CRIU wants to exist made.
func (in *incoming) restoreRequest(hold bool) (criu.Request, error) {
	if hold {
		if err := in.chooseHold(); err != nil {
			return criu.Request{}, err
		}
	}
	opts := &rpc.CriuOpts{
		ShellJob:          proto.Bool(in.prep.ShellJob),
		TcpEstablished:    proto.Bool(in.prep.TcpEstablished),
		FileLocks:         proto.Bool(in.prep.FileLocks),
		LeaveStopped:      proto.Bool(in.freezer == ""),
		ManageCgroupsMode: in.mode.Enum(),
		CgRoot:            criuRoots(in.roots),
	}
	// The images must not give the tree more than it had on the source.
	if err := checkCreds(in.imgs, in.facts); err != nil {
		return criu.Request{}, err
	}
	req := criu.Request{Opts: opts, ImagesDir: in.imgs, WorkDir: in.logs}
	if n, err := rearmTimerfds(in.imgs); err != nil {
		return req, err
	} else if n > 0 {
		in.log.Info("re-armed periodic timerfds CRIU would restore disarmed (expired, unread at the dump)", "timerfds", n)
	}
	if len(in.prep.Terminals) > 0 {
		n, err := tty.DetachSessions(in.imgs)
		if err != nil {
			return req, err
		} else if n > 0 {
			in.log.Info("terminals restored without their session (it stays on the source)", "terminals", n)
		}
		if in.terms, err = openTerminals(in.prep.Terminals, in.ttyMode, in.logs); err != nil {
			return req, err
		}
		req.Inherit = in.terms.inherit(in.prep.Terminals)
	}
	return req, in.precreateCgroups()
}

// restoreTree restores the tree, stopped, places it in its cgroups and
// records it, and hands it over to the source's decision (unless a
// resolve aborted the migration first).
func (in *incoming) restoreTree(ctx context.Context) (*pb.Restored, error) {
	t0 := time.Now()
	req, err := in.restoreRequest(true)
	if err != nil {
		return nil, err
	}
	if !in.d.reg.restoring(in.id) {
		return nil, errResolvedAbort
	}
	in.warm.release()
	res, err := in.d.o.CRIU.Restore(ctx, req)
	if err != nil {
		return nil, err
	}
	in.restored = res.Pid
	if st, err := proc.ReadStat(res.Pid); err == nil {
		in.restoredStart = st.StartTime
	}
	if in.freezer != "" {
		if err := checkFrozen(res.Pid, in.freezer, in.cgroupRoot(in.prep.CgroupRoot)); err != nil {
			return nil, fmt.Errorf("the restored tree is not held: %w", err)
		}
	}
	if in.stopped, err = stoppedTasks(in.imgs); err != nil {
		return nil, err
	}
	in.d.reg.update(in.id, func(st *pb.MigrationState) { st.Pid = int32(res.Pid) })
	restored := &pb.Restored{Pid: int32(res.Pid), Hold: holdStopped}
	for _, a := range in.addrs {
		restored.Addresses = append(restored.Addresses, a.Prefix+" on "+a.Link)
	}
	if in.freezer != "" {
		restored.Hold = holdFrozen
	}
	if in.terms != nil {
		in.terms.start()
		restored.TtyLogs = in.terms.logs
		in.log.Info("terminals connected", "mode", in.ttyMode.String(), "logs", in.terms.logs)
	}
	if err := in.placeTree(restored); err != nil {
		return nil, err
	}
	// Without this record a crash of the service would forget the copy:
	// no commit without it.
	if err := in.record("restored"); err != nil {
		return nil, err
	}
	in.log.Info("restored, held "+restored.Hold, "pid", res.Pid, "took", time.Since(t0))
	restored.RestoreNanos = int64(time.Since(t0))
	if !in.d.reg.handOver(in.id) {
		return nil, errResolvedAbort
	}
	return restored, nil
}

// placeTree puts the restored tree in its cgroups where CRIU did not,
// applies the cgroup v2 limits, and says where it is.
func (in *incoming) placeTree(restored *pb.Restored) error {
	if in.mode != rpc.CriuCgMode_IGNORE {
		moved, err := placeTree(in.d.layout, in.roots, in.restored)
		if err != nil {
			return err
		} else if len(moved) > 0 {
			in.log.Info("placed the tree under the cgroup root (CRIU had no cgroups for it)", "cgroups", moved)
		}
		if restored.LimitsApplied, err = applyV2Limits(in.d.layout, in.restored, in.prep.Limits); err != nil {
			return err
		} else if len(restored.LimitsApplied) > 0 {
			in.log.Info("applied cgroup v2 limits", "limits", restored.LimitsApplied)
		}
	}
	if sets, err := cgroups.ProcessSets(in.restored); err == nil {
		for _, s := range sets {
			restored.Cgroups = append(restored.Cgroups, s.Controllers+":"+s.Path)
		}
	}
	return nil
}

// finish cleans up: on success only the logs stay; on failure before the
// restored tree was handed over, it is killed and the directory removed;
// in the window after Restored was sent and before Commit or Abort
// arrived, the stopped tree is kept and recorded as in doubt.
func (in *incoming) finish(err error) {
	in.endPostcopy() // first: a copy not committed dies before anything else goes
	in.warm.release()
	if in.ps != nil {
		in.ps.Close()
	}
	in.d.reg.end(in.id, endState(in, err), err, !in.checkOnly)
	if in.dir == "" {
		return
	}
	unmount := func() {
		if in.mounted {
			if err := unix.Unmount(in.imgs, unix.MNT_DETACH); err != nil {
				in.log.Warn("unmount images", "err", err)
			}
			in.mounted = false
		}
	}
	switch {
	case err == nil:
		in.log.Info("migration done", "pid", in.restored)
		unmount()
		commitCarried(in.dir, in.log)
	case in.inDoubt(err):
		unmount() // the restored tree holds its memory; the images are not needed
		// The source may take its addresses back: fenced until resolved.
		if err := dropAddresses(in.id, in.addrs, true, in.log); err != nil {
			in.log.Error("the moved addresses could not all be taken off this host", "err", err)
		}
		if err := in.record("in-doubt"); err != nil {
			in.log.Error("cannot record the doubt: the state on disk says restored, which a restart also treats as in doubt", "err", err)
		}
		in.log.Error("lost the source after restoring: keeping the stopped tree, in doubt", "pid", in.restored, "err", err, "state", filepath.Join(in.dir, "state.json"))
	default:
		if in.restored > 0 {
			// Gone before the migration is over: a resolve that ended
			// it answers only then. Its connections are the source's.
			silenceConnections(in.restored, in.log)
			if err := killTree(in.restored, in.restoredStart, in.freezer); err != nil {
				in.log.Error("the restored tree does not die", "err", err)
			} else {
				in.log.Info("killed the restored tree", "pid", in.restored)
			}
			reap(in.restored)
		}
		if in.guarded {
			// The tree died behind the guard: no reset left this host.
			if err := dropAddresses(in.id, in.addrs, false, in.log); err != nil {
				in.log.Error("the moved addresses could not all be taken off this host", "err", err)
			}
		}
		in.terms.close()
		if uerr := undoCarried(in.dir, in.log); uerr != nil {
			in.log.Error("the files carried could not all be put back", "err", uerr)
		}
		if in.logs != in.dir {
			in.log.Error("migration failed", "phase", in.phase, "err", err, "logs", in.logs)
		} else {
			in.log.Error("migration failed", "phase", in.phase, "err", err)
		}
		unmount()
		os.RemoveAll(in.dir)
	}
}

// inDoubt says whether err leaves the restored tree in doubt: it came
// after Restored was sent and before Commit or Abort arrived.
func (in *incoming) inDoubt(err error) bool {
	return err != nil && in.restored > 0 && (in.phase == "commit" || in.phase == "resume") && !errors.Is(err, errAborted) && in.pc == nil
}

// endState is how Status reports a migration that ended with err.
func endState(in *incoming, err error) string {
	switch {
	case err == nil:
		return StateDone
	case in.inDoubt(err):
		return StateInDoubt
	case errors.Is(err, errAborted):
		return StateAborted
	}
	return StateFailed
}

// record writes the migration's state to disk, so that an in-doubt
// migration survives a restart of the service, and Status lists the
// finished ones after one.
func (in *incoming) record(state string) error {
	f := stateFile{ID: in.id, State: state, Pid: in.restored, PidStart: in.restoredStart, Freezer: in.freezer, Stopped: in.stopped, SourceHost: in.sourceHost,
		Peer: in.sess.RemoteAddr().String(), Started: in.started.UTC(), Addresses: in.addrs, Guarded: in.guarded}
	if in.prep != nil {
		f.Comm, f.SourcePid = in.prep.Comm, int(in.prep.Pid)
	}
	return writeState(in.dir, f)
}

// startPages starts CRIU's page server on one end of a socketpair whose
// other end is fed from the pages stream. Over pre-copy rounds (parent),
// it frees a round's copy of each page the dump sends again.
func (in *incoming) startPages(ctx context.Context, parent bool) error {
	ours, theirs, err := socketpair()
	if err != nil {
		return err
	}
	ps, err := in.d.o.CRIU.StartPageServer(ctx, criu.Request{ImagesDir: in.imgs, WorkDir: in.logs, PageServer: theirs,
		Opts: &rpc.CriuOpts{AutoDedup: proto.Bool(parent)}})
	theirs.Close()
	if err != nil {
		ours.Close()
		return err
	}
	in.ps = ps
	in.psw = watchPageServer(ctx, ps, ours)
	in.pagesSock = ours
	return nil
}

// acceptStreams takes the pages and images streams of this migration, and
// the files stream if files are carried.
func (in *incoming) acceptStreams(ctx context.Context) {
	var gotPages, gotImages bool
	gotFiles := len(in.prep.Carry) == 0
	for !gotPages || !gotImages || !gotFiles {
		kind, st, err := in.sess.Accept(ctx)
		if err != nil {
			if !gotPages {
				in.pagesDone <- err
			}
			if !gotImages {
				in.imgsDone <- err
			}
			if !gotFiles {
				in.filesDone <- err
			}
			return
		}
		switch {
		case kind == transport.KindFiles && !gotFiles:
			gotFiles = true
			go func() {
				_, _, err := transport.ReceiveFiles(ctx, st, &in.fileCounts, in.carry.place)
				st.Close()
				if err == nil {
					err = in.carry.missing()
				}
				in.filesDone <- err
			}()
		case kind == transport.KindPages && !gotPages:
			gotPages = true
			go in.pumpPages(st)
		case kind == transport.KindImages && !gotImages:
			gotImages = true
			go func() {
				files, total, err := transport.ReceiveImages(ctx, st, in.imgs, transport.ImageLimits{})
				st.Close()
				in.imgFiles, in.imgBytes = files, total
				in.imgsDone <- err
			}()
		default:
			// A stream of another kind, or a second one of a kind,
			// breaks the protocol: the migration ends.
			in.log.Warn("unexpected stream refused", "kind", transport.KindName(kind))
			st.Close()
			select {
			case in.protoErr <- fmt.Errorf("%w: unexpected %s stream", ErrProtocol, transport.KindName(kind)):
			default:
			}
		}
	}
}

func (in *incoming) pumpPages(st io.ReadWriteCloser) {
	sock := in.pagesSock
	counts := &in.pageCounts
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(st, sock) // answers of the page server
		st.Close()
	}()
	err := transport.ReceiveCompressed(sock, st, counts)
	shutdown(sock, unix.SHUT_WR)
	if err == nil {
		in.log.Info("pages received", "raw", counts.Raw.Load(), "wire", counts.Wire.Load())
	}
	in.pagesDone <- err
	wg.Wait()
	sock.Close()
}

// waitPages waits for the end of the pages stream. There is no bound on
// the whole: only on a stall, when no byte arrived for the timeout (a
// dead connection is found sooner by the session's keepalive).
func (in *incoming) waitPages(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	watch := stallWatch{counts: &in.pageCounts, timeout: in.d.o.Timeout}
	psDone := in.psw.done
	for {
		select {
		case err := <-in.pagesDone:
			return err
		case <-psDone:
			// A page server that failed (a full tmpfs) ends the
			// migration now, not at the stall timeout.
			if in.psw.err != nil {
				return in.psw.err
			}
			psDone = nil
		case err := <-in.protoErr:
			return err
		case err := <-in.imgsDone:
			// A bad images stream (a refused name, a full tmpfs) ends
			// the migration now, not when the pages are done.
			if err != nil {
				return fmt.Errorf("images stream: %w", err)
			}
			in.imgsReceived = true
		case err := <-in.filesDone:
			if err != nil {
				return fmt.Errorf("files stream: %w", err)
			}
			in.filesReceived = true
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

// waitStreams waits until the images are received and the page server has
// written the pages.
func (in *incoming) waitStreams(ctx context.Context, sent *pb.ImagesSent) error {
	ctx, cancel := context.WithTimeout(ctx, in.d.o.Timeout)
	defer cancel()
	if !in.imgsReceived {
		select {
		case err := <-in.imgsDone:
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return fmt.Errorf("images did not arrive: %w", ctx.Err())
		}
	}
	if in.imgFiles != int(sent.Files) || in.imgBytes != int64(sent.Bytes) {
		return fmt.Errorf("received %d image files (%d bytes), the source sent %d (%d bytes)", in.imgFiles, in.imgBytes, sent.Files, sent.Bytes)
	}
	if len(in.prep.Carry) > 0 && !in.filesReceived {
		select {
		case err := <-in.filesDone:
			if err != nil {
				return fmt.Errorf("files stream: %w", err)
			}
		case <-ctx.Done():
			return fmt.Errorf("the files carried did not arrive: %w", ctx.Err())
		}
	}
	if in.carry.files != int(sent.CarriedFiles) || in.carry.bytes != int64(sent.CarriedBytes) {
		return fmt.Errorf("received %d files carried (%d bytes), the source sent %d (%d bytes)", in.carry.files, in.carry.bytes, sent.CarriedFiles, sent.CarriedBytes)
	}
	select {
	case <-in.psw.done:
		return in.psw.err
	case <-ctx.Done():
		return fmt.Errorf("the page server did not end: %w", ctx.Err())
	}
}

// imagesTmpfsSize is the size of a migration's images tmpfs: the memory
// the source announced (an upper bound of the pages, which CRIU does not
// compress) plus room for the other images. The rounds and the dump hold
// one copy of the pages between them (auto-dedup and precopy.Prune); with
// pre-copy the room is doubled for a tree that grows during the rounds and
// for what a round frees only once it is stored. It is a bound, not a
// reservation: a tmpfs takes only what is written.
func imagesTmpfsSize(memoryBytes uint64, precopy bool) uint64 {
	if precopy {
		memoryBytes *= 2
	}
	return memoryBytes + memoryBytes/8 + imagesMargin
}

// imagesMargin is the room of the images tmpfs kept for the images other
// than the pages.
const imagesMargin = 64 << 20

// reap waits for a restored root once it is our child (it becomes one when
// CRIU exits, because the service is a child subreaper), so that it does
// not linger as a zombie when it ends.
func reap(pid int) {
	go func() {
		for {
			var ws unix.WaitStatus
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err == unix.EINTR {
				continue
			}
			if err == unix.ECHILD {
				// Not (yet) ours: look again while it exists.
				if _, serr := os.Stat(fmt.Sprintf("/proc/%d", pid)); serr != nil {
					return
				}
				time.Sleep(time.Second)
				continue
			}
			return
		}
	}()
}

// cgroupRoots computes where the tree goes: exactly the root the source
// asked for, or else a cgroup of its own, phaul-ID, below the service's
// root (so that trees moved to one host do not share limits).
func (in *incoming) cgroupRoots(sets []*pb.CgroupSet, requested string, mode rpc.CriuCgMode) ([]*pb.CgroupRoot, error) {
	if mode == rpc.CriuCgMode_IGNORE {
		return nil, nil
	}
	return CgroupRoots(sets, in.cgroupRoot(requested), in.d.layout)
}

// cgroupRoot is the tree's cgroup root here: the one the source asked
// for, or phaul-ID below the service's.
func (in *incoming) cgroupRoot(requested string) string {
	if requested != "" {
		return requested
	}
	return path.Join(in.d.o.CgroupRoot, "phaul-"+in.id)
}

// chooseHold decides how the restored tree is held until the commit
// (hold.go): frozen where it can be, its images edited for it, and the
// freezer hold added to the cgroup roots; stopped otherwise.
func (in *incoming) chooseHold() error {
	root := in.cgroupRoot(in.prep.CgroupRoot)
	dir, whyNot := freezerHold(in.d.layout, in.mode, root)
	if whyNot == "" {
		err := freezeInImages(in.imgs)
		switch {
		case errors.Is(err, errNoFreezerHold):
			whyNot = err.Error()
		case err != nil:
			return fmt.Errorf("hold the tree frozen: %w", err)
		}
	}
	if whyNot != "" {
		in.log.Info("the restored tree is held stopped (SIGSTOP) until the commit, not frozen: its parent may see it stop and continue", "why", whyNot)
		return nil
	}
	in.freezer = dir
	in.roots = withFreezerRoot(in.roots, root)
	// A crash of the service from here on leaves a frozen tree to kill.
	return in.record("receiving")
}

// localCPUInfo dumps this host's cpuinfo once (it does not change).
func (d *Destination) localCPUInfo(ctx context.Context) *precheck.CPUInfo {
	d.cpuOnce.Do(func() {
		dumper, ok := d.o.CRIU.(CPUInfoDumper)
		if !ok {
			return
		}
		dir, err := os.MkdirTemp(d.o.WorkDir, "cpuinfo-")
		if err != nil {
			return
		}
		defer os.RemoveAll(dir)
		if err := dumper.CPUInfoDump(ctx, dir); err != nil {
			d.o.Logger.Warn("cpuinfo dump", "err", err)
			return
		}
		if img, err := os.ReadFile(filepath.Join(dir, "cpuinfo.img")); err == nil {
			d.cpu, _ = precheck.ParseCPUInfoImg(img)
		}
	})
	return d.cpu
}

// judge runs the destination's checks on the source's facts.
func (in *incoming) judge(ctx context.Context, chk *pb.Check) []*pb.Verdict {
	env := &precheck.Env{Layout: in.d.layout, TempDir: in.d.o.WorkDir, Breakpoints: in.d.o.Breakpoints}
	env.CgroupMode, env.CgroupErr = in.d.cgroupMode(chk.ManageCgroups)
	if v, err := criu.ParseVersion(in.d.o.CRIUVersion); err == nil {
		env.CRIUVersion = v
	}
	if c, ok := in.d.o.CRIU.(precheck.CPUChecker); ok {
		env.CRIU = c
	}
	if k, err := criu.RunningKernel(); err == nil {
		env.Kernel = k.String()
	}
	env.LocalCPUInfo = in.d.localCPUInfo(ctx)
	if env.CgroupErr == nil {
		env.CgroupRoots, env.CgroupErr = in.cgroupRoots(chk.GetFacts().GetCgroups(), chk.CgroupRoot, env.CgroupMode)
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				env.Addrs = append(env.Addrs, ipn.IP)
			}
		}
	}
	env.AddressInterface = in.d.o.AddressInterface
	opts := precheck.Options{ShellJob: chk.ShellJob, TCPEstablished: chk.TcpEstablished, CPUCap: chk.CpuCap, Skip: chk.Skip,
		Carry:         precheck.CarryOptions{Mode: chk.FilesMode, ReplaceAll: chk.ReplaceFiles, ReplacePaths: chk.ReplacePaths},
		MoveAddresses: chk.MoveAddresses}
	t0 := time.Now()
	vs := precheck.JudgeDestination(ctx, chk.GetFacts(), opts, env)
	if chk.Postcopy && !slices.Contains(chk.Skip, "postcopy") {
		vs = append(vs, in.d.judgePostcopy(ctx))
	}
	if opts.Carry.Carrying() {
		in.carry.offered = offered(vs, func(p string) bool { return opts.Carry.MayWrite(p, false) == "" })
		in.carry.replace = func(p string) bool { return opts.Carry.MayWrite(p, true) == "" }
	}
	if err := in.d.busy(); err != nil {
		vs = append(vs, &pb.Verdict{Check: "transient", Result: pb.Verdict_FAIL, Transient: true, Detail: err.Error()})
	}
	in.log.Info("checks judged", "took", time.Since(t0), "outcome", precheck.Judge(vs))
	return vs
}

// prepareCpuset creates the parents of a cpuset root with cpus and mems
// copied from above: CRIU would create them empty, and then cannot put a
// task in them. The root itself is left to CRIU (strict mode wants to
// create it).
func prepareCpuset(l *cgroups.Layout, roots []*pb.CgroupRoot) error {
	mnt, ok := l.V1["cpuset"]
	if !ok {
		return nil
	}
	for _, r := range roots {
		if r.Controllers == "cpuset" {
			if err := mkdirCgroup(mnt, path.Dir(r.Path), true); err != nil {
				return err
			}
		}
	}
	return nil
}

// cgroupMode is the source's choice of CRIU's cgroup mode, or the
// service's default.
func (d *Destination) cgroupMode(asked string) (rpc.CriuCgMode, error) {
	if asked == "" {
		return d.o.ManageCgroups, nil
	}
	return criu.ParseCgroupMode(asked)
}

// precreateCgroups makes the cgroup roots where CRIU wants them to exist
// already: in the none and props modes it neither creates cgroups nor
// accepts missing ones.
func (in *incoming) precreateCgroups() error {
	if in.mode != rpc.CriuCgMode_CG_NONE && in.mode != rpc.CriuCgMode_PROPS {
		return nil
	}
	for _, r := range in.roots {
		mnt := in.d.layout.Mount(r.Controllers)
		if mnt == "" {
			continue
		}
		if err := mkdirCgroup(mnt, r.Path, r.Controllers == "cpuset"); err != nil {
			return err
		}
	}
	return nil
}

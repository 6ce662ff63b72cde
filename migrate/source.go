package migrate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
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
	"github.com/phaul/phaul/netmove"
	"github.com/phaul/phaul/postcopy"
	"github.com/phaul/phaul/precheck"
	"github.com/phaul/phaul/transport"
)

// DefaultTimeout bounds each wait for the other side.
const DefaultTimeout = 2 * time.Minute

// Options configure the source side of one migration.
type Options struct {
	Pid            int         // root of the tree to move
	Addr           string      // HOST:PORT of phaul-service
	TLS            *tls.Config // transport.ClientTLS
	ShellJob       bool        // force CRIU's shell-job mode (detected when needed: proc.ShellJobReason)
	TCPEstablished bool        // checkpoint established TCP connections (chosen when both ends of each are in the tree)
	FileLocks      bool        // checkpoint file locks (chosen when the tree holds any)
	CgroupRoot     string      // ask the destination for this cgroup root
	// ManageCgroups is CRIU's cgroup mode on the destination (ignore,
	// none, props, soft, full, strict); "" leaves the service's default.
	ManageCgroups string
	// TTY is where the tree's terminals from outside it lead on the
	// destination: "pty" (default: a new pty, output logged by the
	// service), "null", or "file:PATH" (tty.ParseMode).
	TTY         string
	Timeout     time.Duration
	ID          string // migration ID; empty means NewID()
	WorkDir     string // where the source writes its (small) images; default /var/tmp/phaul
	CRIU        Checkpointer
	CRIUVersion string // of o.CRIU, for the destination's checks (criu.New's Host.Version)
	Logger      *slog.Logger
	// Progress, if set, is kept up to date for a progress bar.
	Progress *Progress

	// Precopy is "auto" (default: pre-copy rounds unless the tree is
	// smaller than precopy.MinTree), "on" (rounds whatever the size) or
	// "off" (all pages while frozen).
	Precopy string
	// MaxDowntime is the stop rule's budget: the rounds end once what
	// changed in the last one would cross the link in this time (default
	// precopy.DefaultMaxDowntime).
	MaxDowntime time.Duration

	// Files is what to do with the files of the tree the destination
	// lacks or has in another version: "carry" (default: sent after the
	// dump) or "check" (the files check fails on them). ReplaceFiles lets
	// a file the destination has in another version be replaced (not a
	// system file); ReplacePaths names files that may be, system files
	// included. CarryLimit bounds the bytes carried (0: no bound).
	Files        string
	ReplaceFiles bool
	ReplacePaths []string
	CarryLimit   uint64
	// MoveAddresses are addresses that leave with the tree (IP[/PREFIX],
	// or "auto": those its sockets are bound to): its TCP connections are
	// then carried too (tcp_established).
	MoveAddresses []string
	// Postcopy restores the tree on the destination before its memory
	// has crossed: the pages follow on demand while the source keeps its
	// tree stopped, under a lease of Lease (default DefaultLease).
	Postcopy bool
	Lease    time.Duration

	Skip           []string      // checks not to run (precheck.Names)
	CPUCap         uint32        // CRIU's cpu_cap for the CPU check; 0: fpu|cpu|ins
	RetryTransient int           // retry this many times when only transient checks fail
	RetryDelay     time.Duration // between retries; default 5s
	checkOnly      bool
}

// CPUInfoDumper is implemented by a Checkpointer that can dump this host's
// CPU description (criu.Client can); the CPU check then uses CRIU's own
// comparison too.
type CPUInfoDumper interface {
	CPUInfoDump(ctx context.Context, dir string) error
}

// Check runs the checks of a migration of o.Pid to o.Addr without freezing
// anything. The report holds the verdicts; the error is a *precheck.Error
// when they say the migration cannot work.
func Check(ctx context.Context, o Options) (*Report, error) {
	o.checkOnly = true
	return Migrate(ctx, o)
}

// Migrate moves the tree rooted at o.Pid to the phaul-service at o.Addr.
// On success the tree runs on the destination and no longer on the
// source. On failure the returned *Error says where the workload is.
func Migrate(ctx context.Context, o Options) (*Report, error) {
	start := time.Now()
	if o.ID == "" {
		o.ID = NewID()
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.WorkDir == "" {
		o.WorkDir = "/var/tmp/phaul"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 5 * time.Second
	}
	for _, n := range o.Skip {
		if !precheck.ValidName(n) {
			return nil, &Error{Phase: "checks", SourceRunning: true, Err: fmt.Errorf("unknown check %q: the checks are %s", n, strings.Join(precheck.Names, ", "))}
		}
	}
	if o.ManageCgroups != "" {
		if _, err := criu.ParseCgroupMode(o.ManageCgroups); err != nil {
			return nil, &Error{Phase: "checks", SourceRunning: true, Err: err}
		}
	}
	if _, err := tty.ParseMode(o.TTY); err != nil {
		return nil, &Error{Phase: "checks", SourceRunning: true, Err: err}
	}
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	switch o.Precopy {
	case "":
		o.Precopy = "auto"
	case "auto", "on", "off":
	default:
		return nil, &Error{Phase: "checks", SourceRunning: true, Err: fmt.Errorf("pre-copy mode %q: want auto, on or off", o.Precopy)}
	}
	var shellWhy string
	if !o.ShellJob {
		if shellWhy = proc.ShellJobReason(o.Pid); shellWhy != "" {
			o.ShellJob = true
			o.Logger.Info("migrating as a shell job", "why", shellWhy)
		}
	}
	if o.TLS != nil {
		settlePending(ctx, o)
	}
	for attempt := 0; ; attempt++ {
		r, err := migrateOnce(ctx, o, start)
		if r != nil {
			r.ShellJobReason = shellWhy
		}
		var pe *precheck.Error
		if err == nil || !errors.As(err, &pe) || pe.Outcome != precheck.Transient || attempt >= o.RetryTransient {
			return r, err
		}
		o.Logger.Warn("transient check failure; retrying", "attempt", attempt+1, "of", o.RetryTransient, "in", o.RetryDelay, "err", err)
		select {
		case <-time.After(o.RetryDelay):
		case <-ctx.Done():
			return r, err
		}
	}
}

func migrateOnce(ctx context.Context, o Options, start time.Time) (*Report, error) {
	m := &source{o: o, log: o.Logger.With("migration", o.ID), r: &Report{ID: o.ID, Pid: o.Pid, Destination: o.Addr, ShellJob: o.ShellJob}}
	cpu0 := cpuTime()
	err := m.run(ctx)
	m.r.Total = Duration(time.Since(start))
	m.r.CPU = Duration(cpuTime() - cpu0)
	if o.checkOnly {
		var pe *precheck.Error
		if errors.As(err, &pe) {
			m.log.Info("checks failed", "err", err)
			return m.r, pe
		}
		if err != nil {
			m.log.Error("checks could not run", "phase", m.phase, "err", err)
		}
		return m.r, err
	}
	if err != nil {
		var me *Error
		if !errors.As(err, &me) {
			err = &Error{Phase: m.phase, Err: err, SourceRunning: proc.ValidateTarget(o.Pid) == nil}
		}
		m.log.Error("migration failed", "phase", m.phase, "err", err)
		return m.r, err
	}
	m.log.Info("migration done", "dest_pid", m.r.DestPid, "downtime", m.r.Downtime, "total", m.r.Total)
	return m.r, nil
}

type source struct {
	o      Options
	log    *slog.Logger
	r      *Report
	phase  string
	sess   *transport.Session
	terms  []*pb.Terminal  // from outside the tree, declared external in the dump
	sets   []cgroups.Set   // the cgroups of the tree's root
	layout *cgroups.Layout // this host's cgroups; nil if unreadable
	rss    int64           // of the tree, announced in Prepare
	room   int64           // bytes of pages the destination has room for (Ready)
	start  uint64          // the root's start time (proc.Stat.StartTime)
	// decided is the state of the Decision last recorded (decide).
	decided string
	carry   []*pb.Carry // the files to send after the dump (precheck.SettleCarry)
	// moves are the addresses that leave with the tree; released, those
	// taken off this host at post-dump (addresses.go).
	moves, released []netmove.Assigned
	// referenced counts the pages the dump sent as references (set by
	// the page pump).
	referenced atomic.Int64
	// Post-copy (postcopy_source.go): the tasks of the tree kept
	// stopped, when it was frozen, what was served of its lazy pages.
	held   []heldTask
	frozen time.Time
	lazy   postcopy.Stats
	// warm is memory touched during the rounds of a post-copy migration
	// and given back just before its snapshot is dumped (warm.go).
	warm *warmMemory
}

func (m *source) setPhase(p string) {
	m.phase = p
	m.o.Progress.setPhase(p)
	m.log.Info("phase", "phase", p)
}

// refuse fails before anything was frozen.
func (m *source) refuse(err error) error {
	return &Error{Phase: m.phase, SourceRunning: true, Err: err}
}

func (m *source) run(ctx context.Context) error {
	o := m.o
	m.setPhase("checks")
	if err := proc.ValidateTarget(o.Pid); err != nil {
		return m.refuse(err)
	}
	unlock, err := lockTree(o.Pid)
	if errors.Is(err, errBusy) {
		// Another phaul is moving this tree: waiting may help.
		v := &pb.Verdict{Check: "transient", Result: pb.Verdict_FAIL, Transient: true, Detail: err.Error()}
		m.r.Verdicts = precheck.ForReport([]*pb.Verdict{v})
		return m.refuse(&precheck.Error{Outcome: precheck.Transient, Verdicts: []*pb.Verdict{v}})
	}
	if err != nil {
		return m.refuse(err)
	}
	defer unlock()
	st, err := proc.ReadStat(o.Pid)
	if err != nil {
		return m.refuse(err)
	}
	m.start = st.StartTime
	sets, err := cgroups.ProcessSets(o.Pid)
	if err != nil {
		return m.refuse(err)
	}
	m.sets = sets
	if m.layout, err = cgroups.Detect(); err != nil {
		m.log.Warn("cannot read this host's cgroup layout: no freezer cgroup, no v2 limits carried", "err", err)
	}

	m.setPhase("connect")
	t0 := time.Now()
	sess, err := transport.Dial(ctx, o.Addr, o.TLS)
	if err != nil {
		return m.refuse(err)
	}
	m.sess = sess
	defer sess.Close()
	if err := m.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Hello{Hello: &pb.Hello{
		ProtocolVersion: transport.ProtocolVersion, MigrationId: o.ID, Host: hostInfo(o.CRIUVersion),
	}}}); err != nil {
		return m.refuse(err)
	}
	msg, err := m.recv(ctx)
	if err != nil {
		return m.refuse(err)
	}
	welcome := msg.GetWelcome()
	if welcome == nil {
		return m.refuse(unexpected(msg, "Welcome"))
	}
	if welcome.ProtocolVersion != transport.ProtocolVersion {
		return m.refuse(fmt.Errorf("the destination speaks protocol %d, this phaul %d: install the same phaul version on both hosts", welcome.ProtocolVersion, transport.ProtocolVersion))
	}
	m.log.Info("connected", "dest", o.Addr, "dest_host", welcome.GetHost().GetHostname(), "dest_criu", welcome.GetHost().GetCriuVersion())
	m.r.Connect = Duration(time.Since(t0))

	m.setPhase("checks")
	t0 = time.Now()
	verdicts, err := m.check(ctx)
	m.r.Verdicts = precheck.ForReport(verdicts)
	m.r.Checks = Duration(time.Since(t0))
	if err != nil {
		m.abort(err)
		return m.refuse(err)
	}
	if o.checkOnly {
		return nil
	}
	t0 = time.Now()
	rss := proc.RSS(o.Pid)
	m.rss = int64(rss)
	if err := m.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Prepare{Prepare: &pb.Prepare{
		Pid: int32(o.Pid), Comm: st.Comm, ShellJob: o.ShellJob, TcpEstablished: m.o.TCPEstablished, FileLocks: m.o.FileLocks,
		CgroupRoot: o.CgroupRoot, Cgroups: setsToPB(sets), MemoryBytes: rss, Precopy: o.Precopy != "off",
		ManageCgroups: o.ManageCgroups, Tty: o.TTY, Terminals: m.terms, Limits: v2Limits(m.layout, sets),
		Carry: m.carry, MoveAddresses: prefixes(m.moves), Postcopy: o.Postcopy, LeaseMillis: uint32(o.Lease / time.Millisecond),
	}}}); err != nil {
		return m.refuse(err)
	}
	if msg, err = m.recv(ctx); err != nil {
		return m.refuse(err)
	}
	ready := msg.GetReady()
	if ready == nil {
		return m.refuse(unexpected(msg, "Ready"))
	}
	m.room = int64(ready.PageRoom)
	for _, cr := range ready.CgroupRoots {
		m.r.CgroupRoots = append(m.r.CgroupRoots, strings.TrimPrefix(cr.Controllers+":"+cr.Path, ":"))
	}
	m.r.Checks += Duration(time.Since(t0))

	if o.Postcopy {
		if err := m.postcopyRefusal(); err != nil {
			m.abort(err)
			return m.refuse(err)
		}
	}
	plan, err := m.precopy(ctx)
	if err != nil {
		m.warm.release()
		m.abort(err)
		return m.refuse(err)
	}
	if o.Postcopy {
		return m.dumpPostcopy(ctx, plan)
	}
	return m.dump(ctx, plan)
}

// freezerDir is the freezer cgroup CRIU may freeze the tree with
// (cgroups.FreezerDir), unless a task of the tree is stopped: CRIU 4.2's
// ptrace attach to a stopped task in a frozen cgroup waits, in
// uninterruptible sleep, for a trap the frozen task never reaches, so the
// dump would hang with the tree frozen until someone thaws the cgroup.
func freezerDir(l *cgroups.Layout, tree []int) (string, string) {
	for _, p := range tree {
		if st, err := proc.ReadStat(p); err == nil && (st.State == 'T' || st.State == 't') {
			return "", fmt.Sprintf("pid %d is stopped: CRIU would hang attaching to it in a frozen cgroup", p)
		}
	}
	return cgroups.FreezerDir(l, tree)
}

// chooseOptions turns on the CRIU options the tree's state needs and that
// can only help, saying why in the report: tcp_established when every
// established connection has both ends in the tree (they move together),
// file_locks when the tree holds a lock.
func (m *source) chooseOptions(facts *pb.SourceFacts, fds []precheck.TreeFd) {
	if n, all := precheck.InTreeConnections(facts.GetSockets()); all && !m.o.TCPEstablished {
		m.o.TCPEstablished = true
		m.r.CRIUOptions = append(m.r.CRIUOptions, fmt.Sprintf("tcp_established: the %d ends of the tree's established TCP connections are all in the tree", n))
	}
	if why := precheck.FileLocks(fds); why != "" && !m.o.FileLocks {
		m.o.FileLocks = true
		m.r.CRIUOptions = append(m.r.CRIUOptions, "file_locks: "+why)
	}
	for _, c := range m.r.CRIUOptions {
		m.log.Info("CRIU option chosen", "why", c)
	}
}

// check gathers the facts of the tree and this host, judges what only the
// source can, and has the destination judge the rest.
func (m *source) check(ctx context.Context) ([]*pb.Verdict, error) {
	o := m.o
	info := hostInfo(o.CRIUVersion)
	var img []byte
	if d, ok := o.CRIU.(CPUInfoDumper); ok {
		if dir, err := os.MkdirTemp("", "phaul-cpuinfo-"); err == nil {
			if err := d.CPUInfoDump(ctx, dir); err == nil {
				img, _ = os.ReadFile(filepath.Join(dir, "cpuinfo.img"))
			} else {
				m.log.Warn("cpuinfo dump failed; the CPU check compares flags only", "err", err)
			}
			os.RemoveAll(dir)
		}
	}
	facts, err := precheck.GatherSource(ctx, o.Pid, info, img)
	if err != nil {
		return nil, fmt.Errorf("gather facts: %w", err)
	}
	terms, err := tty.External(proc.Tree(o.Pid))
	if err != nil {
		return nil, fmt.Errorf("find the tree's terminals: %w", err)
	}
	m.terms = terminalsToPB(terms)
	fds := precheck.TreeFds(o.Pid)
	facts.Held = precheck.HeldBy(fds)
	m.chooseOptions(facts, fds)
	moving := m.resolveMoves(facts)
	o = m.o
	popts := precheck.Options{ShellJob: o.ShellJob, TCPEstablished: o.TCPEstablished, CPUCap: o.CPUCap, Skip: o.Skip}
	local := append(precheck.JudgeSource(facts, popts), precheck.JudgeSession(o.Pid, popts)...)
	if moving != nil {
		local = append(local, moving)
	}
	local = append(local, precheck.JudgeProcfs(o.Pid, popts)...)
	local = append(local, precheck.JudgeNestedPidns(o.Pid, popts)...)
	local = append(local, precheck.JudgeUnfaithful(fds, popts)...)
	local = append(local, precheck.JudgeTerminals(m.terms, o.TTY, popts)...)
	if err := m.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Check{Check: &pb.Check{
		Facts: facts, ShellJob: o.ShellJob, TcpEstablished: o.TCPEstablished, CgroupRoot: o.CgroupRoot,
		CpuCap: o.CPUCap, Skip: o.Skip, Only: o.checkOnly, ManageCgroups: o.ManageCgroups,
		FilesMode: o.Files, ReplaceFiles: o.ReplaceFiles, ReplacePaths: o.ReplacePaths, MoveAddresses: prefixes(m.moves),
		Postcopy: o.Postcopy,
	}}}); err != nil {
		return nil, err
	}
	msg, err := m.recv(ctx)
	if err != nil {
		return nil, err
	}
	rep := msg.GetCheckReport()
	if rep == nil {
		return nil, unexpected(msg, "CheckReport")
	}
	carry := o.carryOptions()
	precheck.SettleWrittenMissing(ctx, rep.Verdicts, o.Pid, facts, carry)
	m.carry = precheck.SettleCarry(rep.Verdicts, carry)
	vs := precheck.Merge(o.Skip, local, rep.Verdicts)
	for _, v := range vs {
		m.log.Info("check", "check", v.Check, "result", v.Result.String(), "transient", v.Transient, "detail", v.Detail)
	}
	if out := precheck.Judge(vs); out != precheck.OK {
		return vs, &precheck.Error{Outcome: out, Verdicts: vs}
	}
	return vs, nil
}

// dump runs CRIU with the pages streamed to the destination and holds it
// at post-dump until the destination has restored the tree.
func (m *source) dump(ctx context.Context, plan *precopyPlan) error {
	o := m.o
	m.setPhase("dump")
	if err := os.MkdirAll(o.WorkDir, 0o700); err != nil {
		return m.refuse(err)
	}
	dir, err := os.MkdirTemp(o.WorkDir, o.ID+"-")
	if err != nil {
		return m.refuse(err)
	}
	keepDir := true // for CRIU's log, unless all went well
	defer func() {
		if !keepDir {
			os.RemoveAll(dir)
		}
	}()

	pages, err := m.sess.Open(ctx, transport.KindPages)
	if err != nil {
		return m.refuse(err)
	}
	ours, theirs, err := socketpair()
	if err != nil {
		pages.Close()
		return m.refuse(err)
	}
	var counts transport.Counts
	o.Progress.setPages(m.rss, &counts)
	pumpDone := m.pumpPages(ctx, plan, pages, ours, &counts)
	// CRIU may be blocked reading an answer that will never come (the
	// network died): when the session or ctx ends, make its socket fail
	// so that it aborts the dump and resumes the tasks.
	unblock := context.AfterFunc(ctx, func() { shutdown(ours, unix.SHUT_RDWR) })
	defer unblock()
	watchDone := make(chan struct{})
	defer close(watchDone)
	go func() {
		select {
		case <-m.sess.Done():
			shutdown(ours, unix.SHUT_RDWR)
		case <-watchDone:
		}
	}()
	defer func() {
		theirs.Close()
		ours.Close()
		pages.Close()
	}()

	var (
		frozen, dumped time.Time
		restored       *pb.Restored
		cause          error // why we refused post-dump
	)
	notify := func(ctx context.Context, n criu.Notification) error {
		switch n.Name {
		case criu.NotifyPreDump:
			frozen = time.Now()
			theirs.Close() // CRIU holds its own copy now
		case criu.NotifyPostDump:
			dumped = time.Now()
			m.r.Dump = Duration(dumped.Sub(frozen))
			// The addresses leave first: the destination adds them
			// before it restores.
			err := m.releaseAddresses()
			if err == nil {
				restored, err = m.transfer(ctx, dir, pumpDone, &counts)
			}
			// The point of no return: the decision to commit is on disk
			// before CRIU may kill the source tree, so that whatever
			// happens next it can be settled (resolve.go).
			if err == nil {
				err = m.decide("commit")
			}
			if err != nil {
				// The tree runs here again once this returns.
				m.reclaimAddresses()
				cause = err
				return err
			}
		}
		return nil
	}
	opts := &rpc.CriuOpts{
		Pid:               proto.Int32(int32(o.Pid)),
		ShellJob:          proto.Bool(o.ShellJob),
		TcpEstablished:    proto.Bool(o.TCPEstablished),
		FileLocks:         proto.Bool(o.FileLocks),
		ManageCgroupsMode: rpc.CriuCgMode_SOFT.Enum(),
	}
	for _, t := range m.terms {
		opts.External = append(opts.External, t.Key)
	}
	opts.CgroupDumpController = dumpControllers(m.sets)
	if o.TCPEstablished {
		opts.NetworkLock = rpc.CriuNetworkLockMethod_NFTABLES.Enum()
	}
	m.r.Freeze = "ptrace"
	if m.layout != nil {
		// A tree alone in its freezer cgroup is frozen at once by the
		// kernel rather than seized task by task.
		if dir, why := freezerDir(m.layout, proc.Tree(o.Pid)); dir != "" {
			opts.FreezeCgroup = proto.String(dir)
			m.r.Freeze = "cgroup"
			m.log.Info("freezing with the freezer cgroup", "cgroup", dir)
		} else {
			m.log.Info("freezing with ptrace", "why not the freezer cgroup", why)
		}
	}
	// Before anything is frozen: a record that this migration has not
	// been decided yet, so that if this agent dies from here on, whoever
	// settles it later (the next phaul migrate, phaul resolve) knows the
	// source never committed while its tree still runs.
	if err := m.decide(StateUndecided); err != nil {
		return m.refuse(err)
	}
	var locks []string
	if o.TCPEstablished {
		locks = criuTables()
	}
	_, err = o.CRIU.Dump(ctx, criu.Request{Opts: opts, ImagesDir: dir, PageServer: theirs, Notify: notify})
	m.r.PageBytes, m.r.WireBytes, m.r.Referenced = counts.Raw.Load(), counts.Wire.Load(), m.referenced.Load()
	if err != nil {
		return m.dumpFailed(err, cause, restored != nil, locks)
	}
	if o.TCPEstablished {
		m.dropCRIULocks(dir)
	}
	keepDir = false
	m.r.Committed = true
	if err := m.decide("committed"); err != nil {
		m.log.Warn("cannot record the commit (the record of the decision to commit stays)", "err", err)
	}

	// The source tree is gone: only the destination's stopped copy is
	// left. Tell it to resume.
	m.setPhase("resume")
	pid, err := m.commit(ctx)
	if err != nil {
		// Lost the destination after the commit: it holds the only
		// copy, stopped. Reconnect and tell it to resume.
		m.log.Warn("lost the destination after the commit; reconnecting to resume its copy", "err", err)
		m.sess.Close() // so that the destination stops waiting on this one
		if pid, err = m.reconnect(ctx, err); err != nil {
			return &Error{Phase: "resume", InDoubt: true, Err: err}
		}
	}
	removeDecision(o.WorkDir, o.ID)
	m.r.DestPid = pid
	m.r.Running = true
	m.r.Downtime = Duration(time.Since(frozen))
	return nil
}

// dumpFailed settles a dump that failed (err; cause: why the source
// refused post-dump, if it did; restored: the destination had restored
// its copy): the tree runs here again with what it gave up (addresses,
// connections CRIU left locked if it died), the destination is told, and
// the decision is recorded where it may still matter.
func (m *source) dumpFailed(err, cause error, restored bool, locks []string) error {
	o := m.o
	running := proc.ValidateTarget(o.Pid) == nil
	if running {
		// CRIU may have died after post-dump: the tree runs here,
		// with what it gave up back.
		m.reclaimAddresses()
		if o.TCPEstablished {
			m.releaseConnections(o.Pid, locks)
		}
	}
	reason := err
	if cause != nil {
		reason = cause
	}
	select {
	case <-m.sess.Done():
		reason = fmt.Errorf("connection to the destination lost: %w", reason)
	default:
	}
	m.abort(reason)
	var re *RemoteError
	if running && m.phase != "dump" && m.phase != "transfer" && !errors.As(reason, &re) {
		// The destination may hold a restored copy and may not have
		// heard the Abort: the decision stays on disk until it
		// has (settlePending, phaul resolve).
		if err := m.decide("abort"); err != nil {
			m.log.Warn("cannot record the decision to abort", "err", err)
		}
	} else if m.decided == StateUndecided {
		// Nothing to settle: the destination restored nothing, or
		// failed itself and said so.
		removeDecision(o.WorkDir, o.ID)
	}
	if !running && restored {
		// CRIU failed after we let it commit: the source is gone
		// and the destination holds the stopped copy.
		return &Error{Phase: "commit", InDoubt: true, Err: err}
	}
	return &Error{Phase: m.phase, SourceRunning: running, Err: reason}
}

// decide records the source's decision on this migration on disk
// (resolve.go: state is one of Decision's states) and remembers it.
func (m *source) decide(state string) error {
	o := m.o
	if err := writeDecision(o.WorkDir, Decision{ID: o.ID, Addr: o.Addr, Pid: o.Pid, PidStart: m.start, State: state, Released: placed(m.released),
		Held: m.held, Lease: o.Lease}); err != nil {
		return err
	}
	m.decided = state
	return nil
}

// commit sends Commit and waits for Done.
func (m *source) commit(ctx context.Context) (int, error) {
	if err := m.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Commit{Commit: &pb.Commit{}}}); err != nil {
		return 0, err
	}
	msg, err := m.recv(ctx)
	if err != nil {
		return 0, err
	}
	done := msg.GetDone()
	if done == nil {
		return 0, unexpected(msg, "Done")
	}
	return int(done.Pid), nil
}

// reconnect settles the migration over a new connection, retrying for
// the timeout: the destination resumes its copy (Resolve, commit). lost
// is why the first connection ended.
func (m *source) reconnect(ctx context.Context, lost error) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, m.o.Timeout)
	defer cancel()
	last := lost
	for {
		r, err := ResolveAt(ctx, m.o.Addr, m.o.TLS, m.o.ID, true)
		if err == nil {
			m.log.Info("reconnected: the destination resumed its copy", "dest_pid", r.Pid)
			return r.Pid, nil
		}
		var re *RemoteError
		if errors.As(err, &re) {
			return 0, fmt.Errorf("%v; then the destination refused to resume its copy: %w", lost, err)
		}
		last = err
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%v; then could not reach the destination for %v (%v): run `phaul resolve %s` once it is reachable", lost, m.o.Timeout, last, m.o.ID)
		case <-time.After(time.Second):
		}
	}
}

// transfer runs at post-dump: the pages are through, the tasks frozen.
// It sends the other images and waits for the destination's restore.
func (m *source) transfer(ctx context.Context, dir string, pumpDone <-chan error, counts *transport.Counts) (*pb.Restored, error) {
	if err := m.sendImages(ctx, dir, pumpDone, counts); err != nil {
		return nil, err
	}
	m.setPhase("restore")
	msg, err := m.recv(ctx)
	if err != nil {
		return nil, err
	}
	restored := msg.GetRestored()
	if restored == nil {
		return nil, unexpected(msg, "Restored")
	}
	m.restored(restored)
	m.log.Info("restored on the destination, committing", "dest_pid", restored.Pid)
	m.setPhase("commit")
	return restored, nil
}

// restored takes what the destination said of its restore into the
// report.
func (m *source) restored(r *pb.Restored) {
	m.r.Restore = Duration(time.Duration(r.RestoreNanos))
	m.r.TTYLogs, m.r.LimitsApplied, m.r.Cgroups, m.r.Hold = r.TtyLogs, r.LimitsApplied, r.Cgroups, r.Hold
	m.r.Addresses = movedReport(m.moves, r.Addresses)
}

// sendImages waits for the end of the page stream, then sends the files
// carried and the other images of dir, and says so (ImagesSent).
func (m *source) sendImages(ctx context.Context, dir string, pumpDone <-chan error, counts *transport.Counts) error {
	m.setPhase("transfer")
	t0 := time.Now()
	select {
	case err := <-pumpDone:
		if err != nil {
			return fmt.Errorf("page stream: %w", err)
		}
	case <-time.After(m.o.Timeout):
		return fmt.Errorf("page stream did not end %v after the dump", m.o.Timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := m.sendCarried(ctx); err != nil {
		return err
	}
	names, err := imageNames(dir, m.o.Postcopy)
	if err != nil {
		return err
	}
	st, err := m.sess.Open(ctx, transport.KindImages)
	if err != nil {
		return err
	}
	files, total, err := transport.SendImages(ctx, st, dir, names)
	st.Close()
	if err != nil {
		return err
	}
	m.r.ImageFiles, m.r.ImageBytes = files, total
	if err := m.send(ctx, &pb.Envelope{Msg: &pb.Envelope_ImagesSent{ImagesSent: &pb.ImagesSent{Files: uint32(files), Bytes: uint64(total),
		CarriedFiles: uint32(m.r.Carried.Files), CarriedBytes: uint64(m.r.Carried.Bytes)}}}); err != nil {
		return err
	}
	m.r.Transfer = Duration(time.Since(t0))
	m.log.Info("dumped", "page_bytes", counts.Raw.Load(), "wire_bytes", counts.Wire.Load(), "image_files", files)
	return nil
}

// imageNames lists the image files to send: everything CRIU wrote but its
// log, and but the pages' images of a snapshot (post-copy: their pages
// went to the destination's page server).
func imageNames(dir string, snapshot bool) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if !e.Type().IsRegular() || strings.HasSuffix(n, ".log") || snapshot && (strings.HasPrefix(n, "pagemap-") || strings.HasPrefix(n, "pages-")) {
			continue
		}
		names = append(names, n)
	}
	return names, nil
}

// abort tells the destination to drop the migration (best effort).
func (m *source) abort(reason error) {
	if m.sess == nil {
		return
	}
	var re *RemoteError
	if errors.As(reason, &re) {
		return // the destination failed it itself
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m.sess.Control().Send(ctx, &pb.Envelope{Msg: &pb.Envelope_Abort{Abort: &pb.Abort{Reason: reason.Error()}}})
}

func (m *source) send(ctx context.Context, e *pb.Envelope) error {
	ctx, cancel := context.WithTimeout(ctx, m.o.Timeout)
	defer cancel()
	return m.sess.Control().Send(ctx, e)
}

// recv waits for the next message; a Failure becomes a *RemoteError.
func (m *source) recv(ctx context.Context) (*pb.Envelope, error) {
	return m.recvWithin(ctx, m.o.Timeout)
}

// recvWithin is recv waiting at most d.
func (m *source) recvWithin(ctx context.Context, d time.Duration) (*pb.Envelope, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	msg, err := m.sess.Control().Recv(ctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("no answer from the destination within %v: %w", d, err)
		}
		return nil, fmt.Errorf("connection to the destination: %w", err)
	}
	if f := msg.GetFailure(); f != nil {
		return nil, &RemoteError{Phase: f.Phase, Message: f.Message, CRIULines: f.CriuLines}
	}
	return msg, nil
}

func unexpected(msg *pb.Envelope, want string) error {
	return fmt.Errorf("%w: got %s, want %s", ErrProtocol, transport.MessageName(msg), want)
}

// shutdown shuts a socket down; safe against a concurrent Close (then it
// does nothing).
func shutdown(f *os.File, how int) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), how) })
	}
}

func socketpair() (ours, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "pages"), os.NewFile(uintptr(fds[1]), "pages-criu"), nil
}

// cpuTime is the CPU time this process used so far, not counting its
// children.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var errBusy = errors.New("busy")

// lockTree takes a lock on pid that a second migration of the same tree
// cannot take. The kernel drops it if phaul dies.
func lockTree(pid int) (func(), error) {
	dir := "/run/phaul"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, fmt.Sprintf("migrate-%d.lock", pid))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: pid %d is already being migrated by another phaul (lock %s); wait for it to finish", errBusy, pid, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// terminalsToPB converts what tty.External found.
func terminalsToPB(ts []tty.Terminal) []*pb.Terminal {
	out := make([]*pb.Terminal, 0, len(ts))
	for _, t := range ts {
		out = append(out, &pb.Terminal{Key: t.Key, Path: t.Path, Ctty: t.Ctty, Users: t.Users})
	}
	return out
}

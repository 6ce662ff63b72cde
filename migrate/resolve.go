package migrate

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/postcopy"
	"github.com/phaul/phaul/transport"
)

// The window of doubt. The source decides to commit when the destination
// has restored the tree: it records that decision on disk (Decision, in
// WORK_DIR/decisions/ID.json) before it lets CRIU kill the source tree,
// and removes it once the destination confirmed the tree runs. If the two
// lose each other in between, the destination keeps the restored tree
// stopped (in doubt, in its state.json) until it is told: by the source
// reconnecting (it retries for --timeout, and any later `phaul migrate` to
// the same service sends the decisions still on disk), or by an operator
// (`phaul resolve`), which the destination records too.

// StateUndecided is the state of a Decision written before the dump: the
// source has not decided yet.
const StateUndecided = "undecided"

// Decision is the source's record of a migration from its dump on.
type Decision struct {
	ID   string `json:"id"`
	Addr string `json:"addr"` // the destination
	Pid  int    `json:"pid"`  // the source tree's root
	// PidStart is the root's start time (proc.Stat.StartTime): with Pid,
	// it tells whether the source tree still exists.
	PidStart uint64 `json:"pid_start"`
	// State: undecided (the dump is about to begin: if the record
	// stays so, the source agent died before deciding), commit (about
	// to let CRIU kill the source tree), committed (it did), abort (the
	// migration failed after the destination may have restored a copy;
	// the source tree runs).
	State string    `json:"state"`
	Time  time.Time `json:"time"`
	// Released are the addresses taken off this host for the
	// destination: a source tree that runs again gets them back.
	Released []placedAddress `json:"released,omitempty"`
	// Held are the tasks of a post-copy source tree, kept stopped from
	// the snapshot until the commit: an abort lets them go (those not
	// stopped before), once the destination's lease (Lease) has surely
	// ended.
	Held  []heldTask    `json:"held,omitempty"`
	Lease time.Duration `json:"lease,omitempty"`
}

func decisionsDir(workDir string) string { return filepath.Join(workDir, "decisions") }

func writeDecision(workDir string, d Decision) error {
	dir := decisionsDir(workDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	d.Time = time.Now().UTC()
	data, _ := json.Marshal(d)
	// It must survive a crash of this host.
	if err := writeDurable(filepath.Join(dir, d.ID+".json"), data); err != nil {
		return fmt.Errorf("record the decision (%s): %w", d.State, err)
	}
	return nil
}

func removeDecision(workDir, id string) {
	os.Remove(filepath.Join(decisionsDir(workDir), id+".json"))
}

// ForgetDecision removes the source's record of migration id, once it is
// settled.
func ForgetDecision(workDir, id string) {
	if validID(id) == nil {
		removeDecision(workDir, id)
	}
}

// ReadDecision returns the source's record of migration id in workDir
// (os.ErrNotExist when there is none: the source never dumped for it, left
// nothing to settle, or it was settled).
func ReadDecision(workDir, id string) (*Decision, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(decisionsDir(workDir), id+".json"))
	if err != nil {
		return nil, err
	}
	var d Decision
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("decision %s: %w", id, err)
	}
	return &d, nil
}

// PendingDecisions lists the source's unsettled decisions, oldest first.
func PendingDecisions(workDir string) []Decision {
	paths, _ := filepath.Glob(filepath.Join(decisionsDir(workDir), "*.json"))
	var out []Decision
	for _, p := range paths {
		id := filepath.Base(p)
		id = id[:len(id)-len(".json")]
		if d, err := ReadDecision(workDir, id); err == nil {
			out = append(out, *d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out
}

// ErrUndecided: the source agent died before deciding, and the source tree
// is gone too; only an operator can tell whether the destination's copy
// is the one to keep.
var ErrUndecided = errors.New("undecided")

// ReclaimAddresses adds back to this host the addresses the source gave
// up for the destination (Released), announced: for a source tree that
// runs here again (an abort).
func (d *Decision) ReclaimAddresses(log *slog.Logger) error {
	if len(d.Released) == 0 {
		return nil
	}
	return reclaim(d.Released, log)
}

// Commit says what the decision means for the destination's copy: commit
// when the source tree is gone (CRIU killed it), abort when it still runs
// (CRIU resumed it: the source never let it commit after all). An
// undecided record means abort while the source tree runs (CRIU resumes
// it when the agent dies before deciding); with the tree gone too, it is
// ErrUndecided: phaul does not guess.
func (d *Decision) Commit() (bool, string, error) {
	if len(d.Held) > 0 {
		// Post-copy: the source tree is kept stopped whatever the
		// decision; the destination's copy was committed only if the
		// source decided so first.
		if d.State == "commit" || d.State == "committed" {
			return true, "the source decided to commit (post-copy): the destination's copy is the workload if its keeper committed it", nil
		}
		return false, "the source never committed (post-copy): its tree, stopped here, resumes once the destination's lease has surely ended", nil
	}
	if d.State == "abort" {
		return false, "the source aborted the migration: its tree runs there", nil
	}
	if proc.Same(d.Pid, d.PidStart) {
		if d.State == StateUndecided {
			return false, fmt.Sprintf("the source never decided (its agent stopped) and its tree (pid %d) still runs here", d.Pid), nil
		}
		return false, fmt.Sprintf("the source tree (pid %d) still runs here: CRIU resumed it", d.Pid), nil
	}
	if d.State == StateUndecided {
		return false, "", fmt.Errorf("migration %s: %w: the source agent stopped before deciding and the source tree (pid %d) is gone; see whether the destination's copy is the workload, then say commit or abort", d.ID, ErrUndecided, d.Pid)
	}
	return true, fmt.Sprintf("the source tree (pid %d) is gone: the destination's copy is the only one", d.Pid), nil
}

// Resolution is the destination's answer to a Resolve.
type Resolution struct {
	ID      string `json:"id"`
	State   string `json:"state"` // done or aborted
	Pid     int    `json:"pid"`   // the running copy on the destination, when done
	Already bool   `json:"already"`
}

// ResolveAt tells the phaul-service at addr to commit (resume its stopped
// copy) or abort (kill it) migration id, held there in doubt. A migration
// the service is still receiving is ended there by an abort if it was not
// handed over yet; otherwise ResolveAt asks again every resolveRetry
// until it is settled there or ctx ends (ErrInFlight).
func ResolveAt(ctx context.Context, addr string, conf *tls.Config, id string, commit bool) (*Resolution, error) {
	for {
		r, err := resolveOnce(ctx, addr, conf, id, commit)
		if !errors.Is(err, ErrInFlight) {
			return r, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(resolveRetry):
		}
	}
}

// resolveRetry is how often ResolveAt asks again about a migration in
// flight.
const resolveRetry = 500 * time.Millisecond

func resolveOnce(ctx context.Context, addr string, conf *tls.Config, id string, commit bool) (*Resolution, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	sess, err := transport.Dial(ctx, addr, conf)
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	if err := sess.Control().Send(ctx, &pb.Envelope{Msg: &pb.Envelope_Resolve{Resolve: &pb.Resolve{
		ProtocolVersion: transport.ProtocolVersion, MigrationId: id, Commit: commit,
	}}}); err != nil {
		return nil, err
	}
	msg, err := sess.Control().Recv(ctx)
	if err != nil {
		return nil, fmt.Errorf("resolve: %w", err)
	}
	if f := msg.GetFailure(); f != nil {
		if !commit && f.Phase == phaseNotHere {
			// Nothing of it there: the destination cleaned up itself.
			return &Resolution{ID: id, State: StateAborted, Already: true}, nil
		}
		if f.Phase == phaseInFlight {
			return nil, fmt.Errorf("%w: %s", ErrInFlight, f.Message)
		}
		return nil, &RemoteError{Phase: f.Phase, Message: f.Message}
	}
	r := msg.GetResolved()
	if r == nil {
		return nil, fmt.Errorf("resolve: %w", unexpected(msg, "Resolved"))
	}
	return &Resolution{ID: r.MigrationId, State: r.State, Pid: int(r.Pid), Already: r.Already}, nil
}

// settle sends the source's decision on d to its destination and removes
// the record once the destination has acted on it.
func settle(ctx context.Context, workDir string, conf *tls.Config, d Decision) (*Resolution, error) {
	commit, _, err := d.Commit()
	if err != nil {
		return nil, err
	}
	r, err := ResolveAt(ctx, d.Addr, conf, d.ID, commit)
	if len(d.Held) > 0 {
		if commit && IsNotHere(err) {
			// The keeper killed the copy there: the source's resumes.
			commit, err, r = false, nil, &Resolution{ID: d.ID, State: StateAborted, Already: true}
		}
		if err == nil || !commit {
			if herr := d.SettleHeld(commit, slog.Default()); herr != nil {
				err = errors.Join(err, herr)
			}
		}
	}
	if !commit {
		// The source tree runs: its addresses come back, once the
		// destination has given them up if it answers.
		if rerr := d.ReclaimAddresses(slog.Default()); rerr != nil {
			err = errors.Join(err, fmt.Errorf("migration %s: the source's addresses: %w", d.ID, rerr))
		}
	}
	if err != nil {
		return nil, err
	}
	removeDecision(workDir, d.ID)
	return r, nil
}

// IsNotHere says the destination has no record of the migration (a
// post-copy copy its keeper killed, or one that failed there).
func IsNotHere(err error) bool {
	var re *RemoteError
	return errors.As(err, &re) && re.Phase == phaseNotHere
}

// SettleHeld acts on the tree a post-copy source kept stopped (Held):
// committed, it is killed (the destination's copy is the workload);
// otherwise it is let go (those of its tasks not stopped before) once the
// destination's lease has surely ended: the lease and its margin from
// now, the migration's agent being gone (it holds the tree's lock while
// it runs, and grants leases only then). It refuses while that agent
// runs.
func (d *Decision) SettleHeld(committed bool, log *slog.Logger) error {
	if len(d.Held) == 0 {
		return nil
	}
	unlock, err := lockTree(d.Pid)
	if err != nil {
		return fmt.Errorf("migration %s: its agent still runs: %w", d.ID, err)
	}
	defer unlock()
	if committed {
		return killHeld(d.Held)
	}
	lease := d.Lease
	if lease <= 0 {
		lease = DefaultLease
	}
	log.Info("the source tree resumes once the destination's lease has surely ended", "migration", d.ID, "wait", lease+LeaseMargin)
	time.Sleep(lease + LeaseMargin)
	return letGo(d.Held)
}

// phaseInFlight is the Failure phase of a Resolve for a migration still in
// flight: the source retries.
const phaseInFlight = "in flight"

// ErrInFlight: the destination is still working on the migration (it
// settles itself, or will be in doubt shortly): ask again in a moment.
var ErrInFlight = errors.New("the migration is still in flight on the destination")

// phaseNotHere is the Failure phase of a Resolve for a migration the
// service has no record of.
const phaseNotHere = "not here"

type phaseError struct {
	phase string
	err   error
}

func (e *phaseError) Error() string { return e.err.Error() }
func (e *phaseError) Unwrap() error { return e.err }

// settlePending sends the decisions left on disk by earlier migrations to
// o.Addr (best effort: they stay for the next time, or `phaul resolve`).
func settlePending(ctx context.Context, o Options) {
	for _, d := range PendingDecisions(o.WorkDir) {
		if d.Addr != o.Addr {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := settle(cctx, o.WorkDir, o.TLS, d)
		cancel()
		if err != nil {
			o.Logger.Warn("an earlier migration is still in doubt on the destination", "migration", d.ID, "err", err)
			continue
		}
		o.Logger.Info("settled an earlier migration left in doubt", "migration", d.ID, "state", r.State, "dest_pid", r.Pid)
	}
}

// errNotHere: the service has no record of the migration.
var errNotHere = errors.New("no such migration here")

// serveResolve acts on a Resolve: resumes or kills a tree held in doubt,
// from its state.json (so that it works after a restart of the service).
func (in *incoming) serveResolve(ctx context.Context, req *pb.Resolve) error {
	in.checkOnly = true // not a migration of its own in Status
	if req.ProtocolVersion != transport.ProtocolVersion {
		return in.fail("resolve", fmt.Errorf("client speaks protocol %d, this phaul-service %d", req.ProtocolVersion, transport.ProtocolVersion))
	}
	if err := validID(req.MigrationId); err != nil {
		return in.fail("resolve", err)
	}
	in.log = in.log.With("migration", req.MigrationId)
	res, err := in.d.resolve(ctx, req.MigrationId, req.Commit)
	if err != nil {
		in.log.Warn("resolve refused", "commit", req.Commit, "err", err)
		phase := "resolve"
		var pe *phaseError
		if errors.As(err, &pe) {
			phase = pe.phase
		}
		return in.fail(phase, err)
	}
	in.log.Info("resolved", "state", res.State, "pid", res.Pid, "already", res.Already)
	if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_Resolved{Resolved: res}}); err != nil {
		in.log.Debug("resolution sent; the client hung up", "err", err)
	}
	return nil
}

// resolve settles migration id: see serveResolve. An abort of a
// migration still being received, not yet handed over to the source's
// decision, ends it here and now: nothing of it was restored for good,
// so nothing is in doubt (the source, if it is still there, hears a
// failure and keeps its tree). Once handed over, only the source's word
// or the doubt ends it: the client is told it is in flight, and asks
// again.
func (d *Destination) resolve(ctx context.Context, id string, commit bool) (*pb.Resolved, error) {
	if !commit {
		if done := d.reg.abort(id, errResolvedAbort); done != nil {
			select {
			case <-done:
			case <-ctx.Done():
				return nil, fmt.Errorf("migration %s: ending it here: %w", id, ctx.Err())
			}
			d.o.Logger.Info("ended a migration in flight on the word of phaul resolve", "migration", id)
			return &pb.Resolved{MigrationId: id, State: StateAborted}, nil
		}
	}
	d.resolveMu.Lock()
	defer d.resolveMu.Unlock()
	if d.reg.inFlight(id) {
		return nil, &phaseError{phaseInFlight, fmt.Errorf("migration %s is in flight here (phase %s): it settles itself (the source's decision, or the doubt once the source is gone for the service's --timeout)", id, d.reg.phase(id))}
	}
	dir := filepath.Join(d.o.WorkDir, id)
	f, err := readState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &phaseError{phaseNotHere, fmt.Errorf("migration %s: %w (it failed or was aborted, and its copy here is gone)", id, errNotHere)}
	} else if err != nil {
		return nil, err
	}
	res := &pb.Resolved{MigrationId: id}
	switch {
	case f.State == "running" && commit:
		res.State, res.Pid, res.Already = StateDone, int32(f.Pid), true
		return res, nil
	case f.State == "running":
		return nil, fmt.Errorf("migration %s was committed and runs here (pid %d): it cannot be aborted", id, f.Pid)
	case f.State != "in-doubt":
		return nil, fmt.Errorf("migration %s is %q here, not in doubt", id, f.State)
	}
	alive := f.Pid > 0 && proc.Same(f.Pid, f.PidStart)
	switch {
	case commit && !alive:
		return nil, fmt.Errorf("migration %s: the stopped copy here (pid %d) is gone; nothing to resume", id, f.Pid)
	case commit:
		if f.Guarded {
			if err := reclaim(f.Addresses, d.o.Logger); err != nil {
				return nil, fmt.Errorf("migration %s: its addresses: %w", id, err)
			}
			if err := openAddresses(id, f.Addresses, d.o.Logger); err != nil {
				return nil, fmt.Errorf("migration %s: %w", id, err)
			}
			f.Guarded = false
		}
		if err := releaseTree(d.o.Logger, f.Pid, f.Freezer, f.Stopped); err != nil {
			return nil, fmt.Errorf("resume pid %d: %w", f.Pid, err)
		}
		f.State = "running"
		if err := writeState(dir, f); err != nil {
			d.o.Logger.Warn("resumed, but the state could not be recorded", "migration", id, "err", err)
		}
		reap(f.Pid)
		commitCarried(dir, d.o.Logger)
		d.reg.settled(id, StateDone)
		res.State, res.Pid = StateDone, int32(f.Pid)
	default:
		// Say "aborted" only once the copy is gone.
		if alive {
			silenceConnections(f.Pid, d.o.Logger)
			if err := killTree(f.Pid, f.PidStart, f.Freezer); err != nil {
				return nil, fmt.Errorf("migration %s: the stopped copy: %w", id, err)
			}
		}
		if f.Guarded {
			if err := dropAddresses(id, f.Addresses, false, d.o.Logger); err != nil {
				return nil, fmt.Errorf("migration %s: %w", id, err)
			}
		}
		if err := undoCarried(dir, d.o.Logger); err != nil {
			return nil, fmt.Errorf("migration %s: %w", id, err)
		}
		os.RemoveAll(dir)
		d.reg.settled(id, StateAborted)
		res.State = StateAborted
	}
	return res, nil
}

// killTree kills the tree rooted at pid (start: its start time), held in
// the freezer cgroup freezer if not "", and waits, a few seconds at most,
// until its root is gone.
func killTree(pid int, start uint64, freezer string) error {
	proc.SignalTree(pid, unix.SIGKILL)
	if freezer != "" {
		// A task frozen in a v1 freezer cgroup dies only once thawed;
		// killed first, it runs no instruction of its own.
		if err := thaw(freezer); err != nil {
			return err
		}
	}
	for deadline := time.Now().Add(5 * time.Second); proc.Same(pid, start); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d does not die", pid)
		}
	}
	return nil
}

// recover looks at what an earlier run of the service left in the work
// directory (it was killed, or the host went down): a migration it was
// receiving (no tree restored, or one CRIU was restoring when it died) is
// cleaned up, its restored tree if any killed; one it had restored but
// not resumed is kept stopped and recorded in doubt, for the source or an
// operator to resolve.
func (d *Destination) recover() {
	forEachState(d.o.WorkDir, func(dir string, f stateFile) {
		// Whatever its state, the images tmpfs of a migration the
		// earlier run did not finish is not needed any more.
		images := filepath.Join(dir, "images")
		if unix.Unmount(images, unix.MNT_DETACH) == nil {
			d.o.Logger.Info("unmounted the images of a migration the service did not finish", "migration", f.ID)
		}
		switch f.State {
		case "running": // done, but the service died before its cleanup
			os.RemoveAll(images)
			commitCarried(dir, d.o.Logger)
		case statePostcopy:
			// Its keeper killed the copy when the service went, unless
			// it had committed it.
			if r, err := postcopy.ReadKeeperRecord(filepath.Join(dir, lazyPagesKeeperRecord)); err == nil && r.State == postcopy.KeeperCommitted {
				os.RemoveAll(images)
				f.State = "running"
				if err := writeState(dir, f); err != nil {
					d.o.Logger.Warn("cannot record a committed post-copy migration as running", "migration", f.ID, "err", err)
				}
				d.o.Logger.Info("a post-copy migration was committed before the service stopped: its copy runs", "migration", f.ID, "pid", f.Pid)
				return
			}
			d.cleanupReceiving(dir, f)
		case "receiving":
			d.cleanupReceiving(dir, f)
		case "restored":
			if f.Guarded {
				if err := dropAddresses(f.ID, f.Addresses, true, d.o.Logger); err != nil {
					d.o.Logger.Error("the addresses of a migration in doubt could not all be taken off", "migration", f.ID, "err", err)
				}
			}
			f.State = "in-doubt"
			if err := writeState(dir, f); err != nil {
				d.o.Logger.Warn("cannot record the doubt (restored, on disk, means the same)", "migration", f.ID, "err", err)
			}
			d.o.Logger.Warn("a migration restored before the service stopped is in doubt: its copy stays stopped until resolved",
				"migration", f.ID, "pid", f.Pid)
		case "in-doubt":
			d.o.Logger.Warn("a migration is in doubt: its copy stays stopped until resolved", "migration", f.ID, "pid", f.Pid)
		}
	})
}

// cleanupReceiving ends a migration the service was receiving when it
// stopped: its copy killed, its addresses and files given back, its
// directory removed.
func (d *Destination) cleanupReceiving(dir string, f stateFile) {
	if f.Pid > 0 && proc.Same(f.Pid, f.PidStart) {
		silenceConnections(f.Pid, d.o.Logger)
		proc.SignalTree(f.Pid, unix.SIGKILL)
	}
	// CRIU may have restored the tree just before the service
	// died, too late for its PID to be recorded: whatever runs
	// in the migration's own cgroups is that tree.
	d.killInCgroups(f.ID, f.Freezer)
	if f.Guarded {
		if err := dropAddresses(f.ID, f.Addresses, false, d.o.Logger); err != nil {
			d.o.Logger.Error("the addresses of a migration the service was receiving could not all be taken off", "migration", f.ID, "err", err)
		}
	}
	if err := undoCarried(dir, d.o.Logger); err != nil {
		d.o.Logger.Error("the files carried by a migration the service was receiving could not all be put back", "migration", f.ID, "err", err)
	}
	os.RemoveAll(dir)
	d.reg.settled(f.ID, StateInterrupted)
	d.o.Logger.Warn("cleaned up a migration the service was receiving when it stopped", "migration", f.ID)
}

// killInCgroups kills the tasks in the cgroups the service made for
// migration id (ROOT/phaul-ID and below, in every v1 hierarchy and the
// unified one) and in the freezer cgroup freezer (if not ""), then thaws
// the freezer cgroups among them: only then do frozen tasks die.
func (d *Destination) killInCgroups(id, freezer string) {
	var roots []string
	if freezer != "" {
		roots = append(roots, freezer)
	}
	for _, mnt := range d.layout.V1 {
		roots = append(roots, filepath.Join(mnt, d.o.CgroupRoot, "phaul-"+id))
	}
	if d.layout.V2 != "" {
		roots = append(roots, filepath.Join(d.layout.V2, d.o.CgroupRoot, "phaul-"+id))
	}
	for _, root := range roots {
		filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
			if err != nil || !e.IsDir() {
				return nil
			}
			data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
					unix.Kill(pid, unix.SIGKILL)
				}
			}
			return nil
		})
	}
	for _, root := range roots {
		if _, err := os.Stat(filepath.Join(root, "freezer.state")); err == nil {
			if err := thaw(root); err != nil {
				d.o.Logger.Warn("the killed tasks of a migration stay frozen", "migration", id, "err", err)
			}
		}
	}
}

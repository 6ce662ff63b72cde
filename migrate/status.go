package migrate

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/atomicfile"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/transport"
)

// The states of a migration as the service reports them (phaul status).
const (
	StateInFlight    = "in-flight"   // between Hello and the end
	StateInDoubt     = "in-doubt"    // restored, stopped, the source's decision unknown
	StateDone        = "done"        // running here
	StateFailed      = "failed"      // ended before the tree ran here; the source keeps it
	StateAborted     = "aborted"     // the source called it off
	StateInterrupted = "interrupted" // the service stopped during it (found on disk)
)

// recentKept is how many finished migrations the service remembers.
const recentKept = 64

// registry is the destination's list of migrations, for status, and of
// the migrations it is receiving, for resolve.
type registry struct {
	mu     sync.Mutex
	live   map[string]*pb.MigrationState
	recent []*pb.MigrationState // oldest first
	// working holds each migration from its Hello until its cleanup is
	// over (finished): a migration listed as ended in live/recent may
	// still be removing its files.
	working map[string]*working
}

// working is a migration the service is receiving or cleaning up.
type working struct {
	cancel context.CancelCauseFunc
	done   chan struct{} // closed by finished
	// handedOver: Restored was sent; from then on only the source's
	// word (or the doubt) ends the migration, never a resolve.
	handedOver bool
	// restoring: CRIU is restoring the tree. It is not interrupted then
	// (a restore cut short may leave tasks that nobody knows of): an
	// abort waits for it to end, and the hand-over is refused.
	restoring bool
	aborted   bool // a resolve ended it before the hand-over
}

// start lists a new migration; an ID already in flight is refused.
// cancel ends the migration (abort).
func (r *registry) start(st *pb.MigrationState, cancel context.CancelCauseFunc) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live == nil {
		r.live = map[string]*pb.MigrationState{}
		r.working = map[string]*working{}
	}
	if r.live[st.Id] != nil || r.working[st.Id] != nil {
		return fmt.Errorf("migration %s is already in flight here", st.Id)
	}
	r.live[st.Id] = st
	r.working[st.Id] = &working{cancel: cancel, done: make(chan struct{})}
	return nil
}

// finished says that migration id has cleaned up: what it leaves on disk
// is final.
func (r *registry) finished(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w := r.working[id]; w != nil {
		close(w.done)
		delete(r.working, id)
	}
}

// phase is the phase of migration id in flight, or "cleaning up" once
// it has ended and is removing its files.
func (r *registry) phase(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := r.live[id]; st != nil {
		return st.Phase
	}
	return "cleaning up"
}

// aborted says whether a resolve has aborted migration id.
func (r *registry) aborted(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.working[id] != nil && r.working[id].aborted
}

// restoring marks migration id as restoring, unless a resolve has aborted
// it first (false).
func (r *registry) restoring(id string) bool {
	return r.unlessAborted(id, func(w *working) { w.restoring = true })
}

// handOver marks migration id as handed over to the source's decision,
// unless a resolve has aborted it first (false).
func (r *registry) handOver(id string) bool {
	return r.unlessAborted(id, func(w *working) { w.handedOver, w.restoring = true, false })
}

// unlessAborted applies mark to migration id under the lock, unless it is
// not here or a resolve has aborted it (false).
func (r *registry) unlessAborted(id string, mark func(w *working)) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.working[id]
	if w == nil || w.aborted {
		return false
	}
	mark(w)
	return true
}

// abort ends migration id with cause if it is being received and was not
// handed over yet, and returns a channel closed once it has cleaned up;
// nil if it cannot be aborted so (not here, or handed over). A restore
// under way is left to end: the hand-over after it is refused.
func (r *registry) abort(id string, cause error) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.working[id]
	if w == nil || w.handedOver {
		return nil
	}
	w.aborted = true
	if !w.restoring {
		w.cancel(cause)
	}
	return w.done
}

// update changes a live migration under the registry's lock.
func (r *registry) update(id string, f func(st *pb.MigrationState)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := r.live[id]; st != nil {
		f(st)
	}
}

// end moves a migration to the recent ones (keep false: forget it, as for
// `phaul check`, which is not a migration).
func (r *registry) end(id, state string, err error, keep bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.live[id]
	if st == nil {
		return
	}
	delete(r.live, id)
	if !keep {
		return
	}
	st.State = state
	if state != StateInDoubt {
		st.EndedUnixNano = time.Now().UnixNano()
	}
	if err != nil {
		st.Error = err.Error()
	}
	r.recent = append(r.recent, st)
	if len(r.recent) > recentKept {
		r.recent = r.recent[len(r.recent)-recentKept:]
	}
}

// inFlight says whether migration id is being received now, or cleaning
// up after it.
func (r *registry) inFlight(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.working[id] != nil
}

// settled records that migration id, in doubt, was resolved to state.
func (r *registry) settled(id, state string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now().UnixNano()
	for _, st := range r.recent {
		if st.Id == id {
			st.State, st.EndedUnixNano = state, now
			return
		}
	}
	// In doubt since before a restart: known from disk only.
	r.recent = append(r.recent, &pb.MigrationState{Id: id, State: state, Phase: "commit", EndedUnixNano: now})
}

// snapshot copies the live and recent migrations.
func (r *registry) snapshot() []*pb.MigrationState {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*pb.MigrationState
	for _, st := range r.live {
		c := proto.Clone(st).(*pb.MigrationState)
		c.State = StateInFlight
		out = append(out, c)
	}
	for _, st := range r.recent {
		out = append(out, proto.Clone(st).(*pb.MigrationState))
	}
	return out
}

// stateFile is what WORK_DIR/ID/state.json holds: enough to list the
// migration after a restart of the service, and to find an in-doubt
// tree again.
type stateFile struct {
	ID         string    `json:"id"`
	State      string    `json:"state"` // receiving, restored, running, in-doubt
	Pid        int       `json:"pid"`
	Time       time.Time `json:"time"`
	SourceHost string    `json:"source_host,omitempty"`
	Peer       string    `json:"peer,omitempty"`
	Comm       string    `json:"comm,omitempty"`
	SourcePid  int       `json:"source_pid,omitempty"`
	Started    time.Time `json:"started"`
	// PidStart is the restored root's start time (proc.Stat.StartTime),
	// so that a reused PID is never taken for it.
	PidStart uint64 `json:"pid_start,omitempty"`
	// Freezer is the freezer cgroup directory the copy is held frozen
	// in; empty when it is held stopped.
	Freezer string `json:"freezer,omitempty"`
	// Stopped lists the tasks that were stopped at the dump (PIDs in the
	// tree's namespace): resuming the copy leaves them stopped.
	Stopped []int `json:"stopped,omitempty"`
	// Addresses came with the tree; Guarded says the guard for them
	// (netmove.GuardName(ID)) may be up.
	Addresses []placedAddress `json:"addresses,omitempty"`
	Guarded   bool            `json:"guarded,omitempty"`
}

// writeState writes dir/state.json atomically (and durably: a copy in
// doubt must be found again after a crash).
func writeState(dir string, f stateFile) error {
	f.Time = time.Now().UTC()
	data, _ := json.Marshal(f)
	if err := writeDurable(filepath.Join(dir, "state.json"), data); err != nil {
		return fmt.Errorf("record the migration's state: %w", err)
	}
	return nil
}

// writeDurable replaces path with data, synced to the disk first.
func writeDurable(path string, data []byte) error {
	return atomicfile.Write(path, true, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// readState reads dir/state.json, which must be that of the migration the
// directory is named after.
func readState(dir string) (stateFile, error) {
	var f stateFile
	data, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return f, err
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return f, fmt.Errorf("%s/state.json: %w", dir, err)
	}
	if validID(f.ID) != nil || filepath.Base(dir) != f.ID {
		return f, fmt.Errorf("%s/state.json: not the state of migration %s", dir, filepath.Base(dir))
	}
	return f, nil
}

// forEachState calls fn with each migration directory of workDir whose
// state.json reads.
func forEachState(workDir string, fn func(dir string, f stateFile)) {
	paths, _ := filepath.Glob(filepath.Join(workDir, "*", "state.json"))
	for _, p := range paths {
		if f, err := readState(filepath.Dir(p)); err == nil {
			fn(filepath.Dir(p), f)
		}
	}
}

// fromDisk lists the migrations recorded in the work directory, as the
// service reports them.
func fromDisk(workDir string) []*pb.MigrationState {
	var out []*pb.MigrationState
	forEachState(workDir, func(_ string, f stateFile) {
		st := &pb.MigrationState{Id: f.ID, Pid: int32(f.Pid), SourceHost: f.SourceHost, Peer: f.Peer,
			Comm: f.Comm, SourcePid: int32(f.SourcePid), StartedUnixNano: unixNano(f.Started)}
		switch f.State {
		case "running":
			st.State, st.Phase, st.EndedUnixNano = StateDone, "resume", unixNano(f.Time)
		case "in-doubt":
			st.State, st.Phase = StateInDoubt, "commit"
		default: // receiving, restored: the service went away in the middle
			st.State, st.Phase, st.EndedUnixNano = StateInterrupted, f.State, unixNano(f.Time)
		}
		out = append(out, st)
	})
	return out
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Status lists the destination's migrations: in flight, in doubt, and
// finished recently (in memory since the service started, and on disk in
// the work directory), newest first.
func (d *Destination) Status() []*pb.MigrationState {
	seen := map[string]bool{}
	var out []*pb.MigrationState
	for _, st := range d.reg.snapshot() {
		seen[st.Id] = true
		out = append(out, st)
	}
	for _, st := range fromDisk(d.o.WorkDir) {
		if !seen[st.Id] {
			out = append(out, st)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].StartedUnixNano > out[j].StartedUnixNano })
	return out
}

// serveStatus answers a StatusRequest.
func (in *incoming) serveStatus(ctx context.Context, req *pb.StatusRequest) error {
	if req.ProtocolVersion != transport.ProtocolVersion {
		return in.fail("status", fmt.Errorf("client speaks protocol %d, this phaul-service %d: install the same phaul version on both hosts", req.ProtocolVersion, transport.ProtocolVersion))
	}
	in.log.Info("status asked")
	if err := in.send(ctx, &pb.Envelope{Msg: &pb.Envelope_StatusReport{StatusReport: &pb.StatusReport{
		ProtocolVersion: transport.ProtocolVersion, Host: hostInfo(in.d.o.CRIUVersion),
		MaxMigrations: uint32(in.d.o.MaxMigrations), Migrations: in.d.Status(),
	}}}); err != nil {
		// As for `phaul check`: the client hangs up once it has read the
		// report, which yamux may report as a failed send.
		in.log.Debug("status sent; the client hung up", "err", err)
	}
	return nil
}

// ServiceStatus is what `phaul status` prints. The JSON field names are
// stable (docs/json.md).
type ServiceStatus struct {
	Address       string            `json:"address"`
	Host          string            `json:"host"`
	Kernel        string            `json:"kernel"`
	CRIU          string            `json:"criu"`
	Phaul         string            `json:"phaul"`
	MaxMigrations int               `json:"max_migrations"`
	Migrations    []MigrationStatus `json:"migrations"`
	Error         string            `json:"error,omitempty"` // the service could not be asked
}

// MigrationStatus is one migration in a ServiceStatus.
type MigrationStatus struct {
	ID         string     `json:"id"`
	State      string     `json:"state"` // in-flight, in-doubt, done, failed, aborted, interrupted
	Phase      string     `json:"phase"`
	SourceHost string     `json:"source_host"`
	Peer       string     `json:"peer"`
	Comm       string     `json:"comm"`
	SourcePid  int        `json:"source_pid"`
	Pid        int        `json:"pid"` // on the service's host; 0 before the restore
	Started    time.Time  `json:"started"`
	Ended      *time.Time `json:"ended"` // null while in flight or in doubt
	Error      string     `json:"error"`
}

// QueryStatus asks the phaul-service at addr for its migrations.
func QueryStatus(ctx context.Context, addr string, conf *tls.Config) (*ServiceStatus, error) {
	sess, err := transport.Dial(ctx, addr, conf)
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	if err := sess.Control().Send(ctx, &pb.Envelope{Msg: &pb.Envelope_StatusRequest{StatusRequest: &pb.StatusRequest{
		ProtocolVersion: transport.ProtocolVersion,
	}}}); err != nil {
		return nil, err
	}
	msg, err := sess.Control().Recv(ctx)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if f := msg.GetFailure(); f != nil {
		return nil, fmt.Errorf("status: the service refused: %s", f.Message)
	}
	rep := msg.GetStatusReport()
	if rep == nil {
		return nil, fmt.Errorf("status: %w", unexpected(msg, "StatusReport"))
	}
	if rep.ProtocolVersion != transport.ProtocolVersion {
		return nil, errors.New("status: the service speaks another protocol version: install the same phaul version on both hosts")
	}
	out := &ServiceStatus{Address: addr, Host: rep.GetHost().GetHostname(), Kernel: rep.GetHost().GetKernel(),
		CRIU: rep.GetHost().GetCriuVersion(), Phaul: rep.GetHost().GetPhaulVersion(),
		MaxMigrations: int(rep.MaxMigrations), Migrations: []MigrationStatus{}}
	for _, m := range rep.Migrations {
		ms := MigrationStatus{ID: m.Id, State: m.State, Phase: m.Phase, SourceHost: m.SourceHost, Peer: m.Peer,
			Comm: m.Comm, SourcePid: int(m.SourcePid), Pid: int(m.Pid), Started: time.Unix(0, m.StartedUnixNano).UTC(), Error: m.Error}
		if m.EndedUnixNano != 0 {
			t := time.Unix(0, m.EndedUnixNano).UTC()
			ms.Ended = &t
		}
		out.Migrations = append(out.Migrations, ms)
	}
	return out, nil
}

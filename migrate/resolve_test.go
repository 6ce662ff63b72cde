package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/criuimg"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

// stopped starts a process and stops it, as a restored tree in doubt is.
func stopped(t *testing.T) (int, uint64) {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	unix.Kill(cmd.Process.Pid, unix.SIGSTOP)
	waitState(cmd.Process.Pid, 'T')
	st, _ := proc.ReadStat(cmd.Process.Pid)
	return cmd.Process.Pid, st.StartTime
}

func TestDestinationResolve(t *testing.T) {
	d, err := NewDestination(DestOptions{WorkDir: t.TempDir(), CgroupRoot: "/phaul", ManageCgroups: rpc.CriuCgMode_IGNORE,
		CRIU: fakeRestorer{&fakeCRIU{}, t}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	write := func(id, state string, pid int, start uint64) string {
		dir := filepath.Join(d.o.WorkDir, id)
		os.MkdirAll(dir, 0o700)
		writeState(dir, stateFile{ID: id, State: state, Pid: pid, PidStart: start})
		return dir
	}
	read := func(dir string) string {
		f, _ := readState(dir)
		return f.State
	}

	// Commit: the stopped copy resumes and is recorded as running.
	pid, start := stopped(t)
	dir := write("00000000000000c1", "in-doubt", pid, start)
	r, err := d.resolve(context.Background(), "00000000000000c1", true)
	if err != nil || r.State != StateDone || int(r.Pid) != pid || r.Already {
		t.Fatalf("commit: %+v %v", r, err)
	}
	if !waitState(pid, 'S') || read(dir) != "running" {
		t.Errorf("not resumed (state.json %q)", read(dir))
	}
	// Again: already so. Abort now: refused, it runs.
	if r, err := d.resolve(context.Background(), "00000000000000c1", true); err != nil || !r.Already {
		t.Errorf("second commit: %+v %v", r, err)
	}
	if _, err := d.resolve(context.Background(), "00000000000000c1", false); err == nil || !strings.Contains(err.Error(), "cannot be aborted") {
		t.Errorf("abort of a running one: %v", err)
	}

	// Abort: the stopped copy is killed and its directory removed.
	pid, start = stopped(t)
	dir = write("00000000000000c2", "in-doubt", pid, start)
	if r, err := d.resolve(context.Background(), "00000000000000c2", false); err != nil || r.State != StateAborted {
		t.Fatalf("abort: %+v %v", r, err)
	}
	if proc.Same(pid, start) { // Same is false for a zombie
		st, _ := proc.ReadStat(pid)
		t.Errorf("the aborted copy %d still exists (%c)", pid, st.State)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the aborted migration's directory is still there")
	}

	// A reused PID is not the copy: nothing to resume, and nothing killed.
	pid, start = stopped(t)
	write("00000000000000c3", "in-doubt", pid, start+1)
	if _, err := d.resolve(context.Background(), "00000000000000c3", true); err == nil || !strings.Contains(err.Error(), "is gone") {
		t.Errorf("commit of a copy whose PID was reused: %v", err)
	}
	if st, _ := proc.ReadStat(pid); st.State != 'T' {
		t.Errorf("another process with the copy's PID was touched: %c", st.State)
	}
	// Unknown, and not in doubt.
	if _, err := d.resolve(context.Background(), "00000000000000c4", true); !errors.Is(err, errNotHere) {
		t.Errorf("unknown: %v", err)
	}
	write("00000000000000c5", "receiving", 0, 0)
	if _, err := d.resolve(context.Background(), "00000000000000c5", true); err == nil || !strings.Contains(err.Error(), "not in doubt") {
		t.Errorf("receiving: %v", err)
	}
	// Status says so.
	states := map[string]string{}
	for _, m := range d.Status() {
		states[m.Id] = m.State
	}
	if states["00000000000000c1"] != StateDone || states["00000000000000c2"] != StateAborted {
		t.Errorf("status: %v", states)
	}
}

func TestDecisionCommit(t *testing.T) {
	pid, start := stopped(t)
	for _, state := range []string{"commit", StateUndecided} {
		d := Decision{ID: "00000000000000d1", Pid: pid, PidStart: start, State: state}
		if ok, why, err := d.Commit(); ok || err != nil {
			t.Errorf("%s: the source tree runs, yet commit (%s) or no decision (%v)", state, why, err)
		}
	}
	d := Decision{ID: "00000000000000d1", Pid: pid, PidStart: start + 1, State: "commit"} // its PID, reused by another process: the tree is gone
	if ok, why, err := d.Commit(); !ok || err != nil {
		t.Errorf("the source tree is gone, yet abort: %s (%v)", why, err)
	}
	// Undecided, and the tree gone: phaul does not guess.
	if ok, _, err := (&Decision{ID: d.ID, Pid: pid, PidStart: start + 1, State: StateUndecided}).Commit(); ok || !errors.Is(err, ErrUndecided) {
		t.Errorf("undecided, tree gone: commit %v, %v; want ErrUndecided", ok, err)
	}
	dir := t.TempDir()
	if err := writeDecision(dir, d); err != nil {
		t.Fatal(err)
	}
	if got := PendingDecisions(dir); len(got) != 1 || got[0].ID != d.ID {
		t.Errorf("pending: %+v", got)
	}
	ForgetDecision(dir, d.ID)
	if got := PendingDecisions(dir); len(got) != 0 {
		t.Errorf("pending after forget: %+v", got)
	}
	if _, err := ReadDecision(dir, "../x"); err == nil {
		t.Error("a bad ID was read")
	}
}

// FuzzCheckCreds: core images arrive from the source; comparing their
// credentials must never panic, and garbage is refused.
func FuzzCheckCreds(f *testing.F) {
	dir := f.TempDir()
	writeCore(f, dir, os.Getpid(), nil)
	good, _ := os.ReadFile(filepath.Join(dir, "core-1.img"))
	f.Add(good)
	f.Add(good[:12])
	f.Add([]byte{})
	c, _ := proc.ReadStatus(os.Getpid())
	facts := &pb.SourceFacts{Tasks: []*pb.TaskFact{{CapInh: c.CapInh, CapPrm: c.CapPrm, CapEff: c.CapEff, CapBnd: c.CapBnd,
		Uids: c.Uids, Gids: c.Gids, Groups: c.Groups}}}
	f.Fuzz(func(t *testing.T, core []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "core-1.img"), core, 0o600)
		if err := checkCreds(dir, facts); err == nil && !bytes.Equal(core, good) && len(core) < 8 {
			t.Fatalf("accepted %x", core)
		}
	})
}

// TestResolveAbortsMigrationInFlight: an abort for a migration the
// destination is still receiving (here: restoring), not yet handed over,
// ends it there: the restore is let finish (CRIU cut short may leave
// tasks behind), then its tree is killed instead of handed over; the
// source hears it and keeps its tree, and nothing is left on the
// destination once resolve has answered. A commit is told to wait.
func TestResolveAbortsMigrationInFlight(t *testing.T) {
	f := &fakeCRIU{restoring: make(chan struct{}), release: make(chan struct{})}
	o, dest := setup(t, f)
	errc := make(chan error, 1)
	go func() {
		_, err := Migrate(context.Background(), o)
		errc <- err
	}()
	<-f.restoring
	var id string
	for _, st := range dest.Status() {
		id = st.Id
	}
	ctx := context.Background()
	if _, err := dest.resolve(ctx, id, true); err == nil || !strings.Contains(err.Error(), "in flight") {
		t.Errorf("commit of a migration in flight: %v", err)
	}
	type answer struct {
		r   *pb.Resolved
		err error
	}
	answered := make(chan answer, 1)
	go func() {
		r, err := dest.resolve(ctx, id, false)
		answered <- answer{r, err}
	}()
	select {
	case a := <-answered:
		t.Fatalf("resolve answered during the restore: %+v, %v", a.r, a.err)
	case <-time.After(200 * time.Millisecond):
	}
	close(f.release)
	a := <-answered
	if a.err != nil || a.r.State != StateAborted {
		t.Fatalf("abort of a migration in flight: %+v, %v", a.r, a.err)
	}
	if f.restoredPid == 0 || proc.ValidateTarget(f.restoredPid) == nil {
		t.Errorf("the tree restored after the abort (pid %d) was not killed", f.restoredPid)
	}
	// Ended: nothing of it is left once resolve has answered.
	if e, _ := os.ReadDir(dest.o.WorkDir); len(e) != 0 {
		t.Errorf("the destination kept %v", e)
	}
	if r, err := dest.resolve(ctx, id, false); !errors.Is(err, errNotHere) {
		t.Errorf("second abort: %+v, %v", r, err)
	}
	err := <-errc
	var me *Error
	if !errors.As(err, &me) || !me.SourceRunning || me.InDoubt || !strings.Contains(err.Error(), "phaul resolve") {
		t.Fatalf("the source: %v", err)
	}
	if proc.ValidateTarget(o.Pid) != nil {
		t.Error("the source tree is not running")
	}
	for _, st := range dest.Status() {
		if st.Id == id && st.State != StateAborted {
			t.Errorf("status: %s, want %s", st.State, StateAborted)
		}
	}
}

// TestRegistryHandOver: once handed over, a migration cannot be aborted
// by a resolve; once aborted, it cannot be handed over.
func TestRegistryHandOver(t *testing.T) {
	var r registry
	var cause error
	cancel := func(c error) { cause = c }
	r.start(&pb.MigrationState{Id: "a"}, cancel)
	r.start(&pb.MigrationState{Id: "b"}, cancel)
	if !r.handOver("a") {
		t.Fatal("a: hand-over refused")
	}
	if r.abort("a", errResolvedAbort) != nil || cause != nil {
		t.Error("a: aborted after its hand-over")
	}
	done := r.abort("b", errResolvedAbort)
	if done == nil || cause != errResolvedAbort {
		t.Fatal("b: not aborted")
	}
	if r.handOver("b") {
		t.Error("b: handed over after its abort")
	}
	if !r.inFlight("b") {
		t.Error("b: not in flight before it finished")
	}
	r.finished("b")
	select {
	case <-done:
	default:
		t.Error("b: done not closed when finished")
	}
	if r.inFlight("b") || r.abort("b", errResolvedAbort) != nil {
		t.Error("b: still there after it finished")
	}
}

// TestCheckCredsZombie: a zombie's core image (task state dead, no thread
// core: no credentials) needs none; anything else without credentials
// still fails closed.
func TestCheckCredsZombie(t *testing.T) {
	facts := &pb.SourceFacts{Tasks: []*pb.TaskFact{{}}}
	if c, err := proc.ReadStatus(os.Getpid()); err == nil {
		facts.Tasks[0] = &pb.TaskFact{Uids: c.Uids, Gids: c.Gids, Groups: c.Groups, CapInh: c.CapInh, CapPrm: c.CapPrm, CapEff: c.CapEff, CapBnd: c.CapBnd}
	}
	tc := func(state uint32) *criucore.TaskCoreEntry {
		return &criucore.TaskCoreEntry{TaskState: proto.Uint32(state), ExitCode: proto.Uint32(7), Comm: proto.String("z"), Personality: proto.Uint32(0), Flags: proto.Uint32(0), BlkSigset: proto.Uint64(0)}
	}
	tests := []struct {
		name string
		core *criucore.CoreEntry
		ok   bool
	}{
		{"zombie", &criucore.CoreEntry{Mtype: criucore.CoreEntry_X86_64.Enum(), Tc: tc(taskDead)}, true},
		{"alive without credentials", &criucore.CoreEntry{Mtype: criucore.CoreEntry_X86_64.Enum(), Tc: tc(1)}, false},
		{"no task core", &criucore.CoreEntry{Mtype: criucore.CoreEntry_X86_64.Enum()}, false},
		{"dead, with a thread core but no credentials", &criucore.CoreEntry{Mtype: criucore.CoreEntry_X86_64.Enum(), Tc: tc(taskDead),
			ThreadCore: &criucore.ThreadCoreEntry{FutexRla: proto.Uint64(0), FutexRlaLen: proto.Uint32(0)}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeCore(t, dir, os.Getpid(), nil) // core-1.img: a live task with our credentials
			img := &crit.CriuImage{Magic: "CORE", Entries: []*crit.CriuEntry{{Message: tt.core}}}
			if err := criuimg.Write(filepath.Join(dir, "core-2.img"), img); err != nil {
				t.Fatal(err)
			}
			err := checkCreds(dir, facts)
			if tt.ok && err != nil || !tt.ok && !errors.Is(err, ErrPrivilege) {
				t.Fatalf("checkCreds: %v", err)
			}
		})
	}
}

// TestStoppedTasks: the tasks whose core image says stopped are listed by
// their PIDs in the images.
func TestStoppedTasks(t *testing.T) {
	dir := t.TempDir()
	u := proto.Uint32
	var entries []*crit.CriuEntry
	for pid, state := range map[uint32]uint32{1: 1, 2: taskStopped, 3: taskDead, 4: taskStopped} {
		entries = append(entries, &crit.CriuEntry{Message: &pstree.PstreeEntry{Pid: u(pid), Ppid: u(1), Pgid: u(1), Sid: u(1)}})
		core := &criucore.CoreEntry{Mtype: criucore.CoreEntry_X86_64.Enum(), Tc: &criucore.TaskCoreEntry{TaskState: u(state),
			ExitCode: u(0), Personality: u(0), Flags: u(0), BlkSigset: proto.Uint64(0), Comm: proto.String("t")}}
		if err := criuimg.Write(filepath.Join(dir, fmt.Sprintf("core-%d.img", pid)), &crit.CriuImage{Magic: "CORE", Entries: []*crit.CriuEntry{{Message: core}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := criuimg.Write(filepath.Join(dir, "pstree.img"), &crit.CriuImage{Magic: "PSTREE", Entries: entries}); err != nil {
		t.Fatal(err)
	}
	got, err := stoppedTasks(dir)
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []int{2, 4}) {
		t.Fatalf("stoppedTasks: %v, %v; want [2 4]", got, err)
	}
	os.Remove(filepath.Join(dir, "core-3.img"))
	if _, err := stoppedTasks(dir); err == nil {
		t.Error("a task without its core image: no error")
	}
}

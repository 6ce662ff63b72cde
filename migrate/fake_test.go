package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/creds"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/criuimg"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/precheck"
	"github.com/phaul/phaul/transport"
)

// The state machines against a fake CRIU, over the real transport with
// TLS on loopback: what each side does at each step, without root.

// payload is what the fake dump "writes as pages": half random, half
// compressible.
var payload = func() []byte {
	b := make([]byte, 1<<20)
	rand.Read(b[:len(b)/2])
	copy(b[len(b)/2:], bytes.Repeat([]byte("page "), len(b)/10))
	return b
}()

type fakeCRIU struct {
	mu             sync.Mutex
	postDumpErr    error // what the source's post-dump callback returned
	restoreErr     error
	restoredPages  []byte
	restoredImages []string
	creds          func(*creds.CredsEntry) // changes the dumped credentials
	userns         bool                    // the dump has a user namespace image
	// restoring, if set, is closed when a restore begins, which then
	// waits for release to be closed.
	restoring, release chan struct{}
	restoredPid        int
}

func dupFile(t testing.TB, f *os.File) *os.File {
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "dup")
}

// Dump behaves like CRIU's: pre-dump, pages to the page server, images,
// post-dump; on a refused post-dump the tasks resume, else they die.
func (f *fakeCRIU) dumper(t testing.TB) Checkpointer {
	return dumpFunc(func(ctx context.Context, r criu.Request) (*criu.DumpResult, error) {
		ps := dupFile(t, r.PageServer) // CRIU holds its own copy
		defer ps.Close()
		if err := r.Notify(ctx, criu.Notification{Name: criu.NotifyPreDump}); err != nil {
			return nil, &criu.Error{Op: "dump", Err: err}
		}
		if _, err := ps.Write(payload); err != nil {
			return nil, &criu.Error{Op: "dump", Err: err}
		}
		unix.Shutdown(int(ps.Fd()), unix.SHUT_WR)
		for _, n := range []string{"inventory.img", "mm-1.img"} {
			os.WriteFile(filepath.Join(r.ImagesDir, n), []byte("image "+n), 0o600)
		}
		writeCore(t, r.ImagesDir, int(r.Opts.GetPid()), f.creds)
		writePstree(t, r.ImagesDir)
		if f.userns {
			os.WriteFile(filepath.Join(r.ImagesDir, "userns-11.img"), []byte("image"), 0o600)
		}
		os.WriteFile(filepath.Join(r.ImagesDir, "dump.log"), []byte("log"), 0o600)
		err := r.Notify(ctx, criu.Notification{Name: criu.NotifyPostDump})
		f.mu.Lock()
		f.postDumpErr = err
		f.mu.Unlock()
		if err != nil {
			return nil, &criu.Error{Op: "dump", Err: err} // tasks resumed
		}
		unix.Kill(int(r.Opts.GetPid()), unix.SIGKILL)
		return &criu.DumpResult{}, nil
	})
}

type dumpFunc func(ctx context.Context, r criu.Request) (*criu.DumpResult, error)

func (d dumpFunc) Dump(ctx context.Context, r criu.Request) (*criu.DumpResult, error) {
	return d(ctx, r)
}

type fakePS struct{ done chan error }

func (p *fakePS) Wait(ctx context.Context) error {
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (p *fakePS) Close() error { return nil }

type fakeRestorer struct {
	f *fakeCRIU
	t testing.TB
}

func (r fakeRestorer) StartPageServer(ctx context.Context, req criu.Request) (PageServer, error) {
	sock := dupFile(r.t, req.PageServer)
	ps := &fakePS{done: make(chan error, 1)}
	go func() {
		defer sock.Close()
		data, err := io.ReadAll(sock)
		if err == nil {
			err = os.WriteFile(filepath.Join(req.ImagesDir, "pages-1.img"), data, 0o600)
		}
		ps.done <- err
	}()
	return ps, nil
}

func (r fakeRestorer) Restore(ctx context.Context, req criu.Request) (*criu.RestoreResult, error) {
	if !req.Opts.GetLeaveStopped() {
		return nil, errors.New("fake: restore without leave_stopped")
	}
	pages, _ := os.ReadFile(filepath.Join(req.ImagesDir, "pages-1.img"))
	entries, _ := os.ReadDir(req.ImagesDir)
	r.f.mu.Lock()
	r.f.restoredPages = pages
	for _, e := range entries {
		r.f.restoredImages = append(r.f.restoredImages, e.Name())
	}
	err := r.f.restoreErr
	r.f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if r.f.restoring != nil {
		close(r.f.restoring)
		<-r.f.release
		if ctx.Err() != nil {
			return nil, fmt.Errorf("fake: the restore was cut short: %w", ctx.Err())
		}
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	unix.Kill(cmd.Process.Pid, unix.SIGSTOP)
	waitState(cmd.Process.Pid, 'T')
	go cmd.Wait()
	r.t.Cleanup(func() { cmd.Process.Kill() })
	r.f.mu.Lock()
	r.f.restoredPid = cmd.Process.Pid
	r.f.mu.Unlock()
	return &criu.RestoreResult{Pid: cmd.Process.Pid}, nil
}

func waitState(pid int, want byte) bool {
	for i := 0; i < 200; i++ {
		if st, err := proc.ReadStat(pid); err == nil && st.State == want {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// setup starts a Server with the fake on loopback and a workload (sleep)
// to migrate.
func setup(t *testing.T, f *fakeCRIU) (Options, *Destination) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if err := transport.GenerateCerts(dir, nil, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	stls, err := transport.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctls, _ := transport.ClientTLS(dir, "")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dest, err := NewDestination(DestOptions{WorkDir: filepath.Join(t.TempDir(), "dest"), CgroupRoot: "/phaul",
		ManageCgroups: rpc.CriuCgMode_IGNORE, Timeout: 10 * time.Second, CRIU: fakeRestorer{f, t}, Logger: log,
		ImagesOnDisk: os.Geteuid() != 0})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{TLS: stls, Dest: dest, Logger: log}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	w := exec.Command("sleep", "60")
	w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	go w.Wait()
	t.Cleanup(func() { w.Process.Kill() })
	// The workload shares this process's PID namespace, so the pids
	// check would find its PID taken by itself; the fake restores no
	// task, and the check has tests of its own.
	return Options{Pid: w.Process.Pid, Addr: ln.Addr().String(), TLS: ctls, Timeout: 10 * time.Second,
		WorkDir: filepath.Join(t.TempDir(), "src"), CRIU: f.dumper(t), Logger: log, Skip: []string{"pids"}}, dest
}

func TestFakeMigrationCommits(t *testing.T) {
	f := &fakeCRIU{}
	o, dest := setup(t, f)
	r, err := Migrate(context.Background(), o)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if !r.Committed || !r.Running || r.DestPid <= 0 {
		t.Fatalf("report: %+v", r)
	}
	if !bytes.Equal(f.restoredPages, payload) {
		t.Fatalf("page server got %d bytes, not the %d the dump wrote", len(f.restoredPages), len(payload))
	}
	if r.PageBytes != int64(len(payload)) || r.WireBytes <= 0 || r.WireBytes >= r.PageBytes {
		t.Errorf("page bytes %d, wire bytes %d", r.PageBytes, r.WireBytes)
	}
	got := strings.Join(f.restoredImages, " ")
	for _, n := range []string{"inventory.img", "core-1.img", "mm-1.img"} {
		if !strings.Contains(got, n) {
			t.Errorf("image %s did not arrive: %s", n, got)
		}
	}
	if strings.Contains(got, "dump.log") {
		t.Error("the source's log was sent as an image")
	}
	if !waitState(r.DestPid, 'S') {
		t.Error("restored tree was not resumed")
	}
	if proc.ValidateTarget(o.Pid) == nil {
		t.Error("source still running after commit")
	}
	state, _ := os.ReadFile(filepath.Join(dest.o.WorkDir, r.ID, "state.json"))
	if !strings.Contains(string(state), `"running"`) {
		t.Errorf("state.json: %s", state)
	}
	// The destination cleans up right after sending Done.
	var imgs []string
	for i := 0; i < 200; i++ {
		if imgs, _ = filepath.Glob(filepath.Join(dest.o.WorkDir, r.ID, "images", "*.img")); len(imgs) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(imgs) != 0 {
		t.Errorf("images kept after success: %v", imgs)
	}
}

func TestFakeRestoreFailureRollsBack(t *testing.T) {
	f := &fakeCRIU{restoreErr: &criu.Error{Op: "restore", Lines: []string{"Error (criu/cgroup.c:1): cannot create cgroup"}}}
	o, dest := setup(t, f)
	_, err := Migrate(context.Background(), o)
	var me *Error
	var re *RemoteError
	if !errors.As(err, &me) || !errors.As(err, &re) {
		t.Fatalf("want *Error wrapping *RemoteError, got %T %v", err, err)
	}
	if me.Phase != "restore" || !me.SourceRunning || me.InDoubt {
		t.Errorf("error: %+v", me)
	}
	if !strings.Contains(err.Error(), "cannot create cgroup") {
		t.Errorf("CRIU's line lost: %v", err)
	}
	if f.postDumpErr == nil {
		t.Error("post-dump was not refused: CRIU would have killed the source")
	}
	if proc.ValidateTarget(o.Pid) != nil {
		t.Error("source not running")
	}
	waitEmpty(t, dest.o.WorkDir)
}

func waitEmpty(t *testing.T, dir string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if e, _ := os.ReadDir(dir); len(e) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	e, _ := os.ReadDir(dir)
	t.Errorf("destination kept %v", e)
}

func TestFakeSecondMigrationOfSameTreeRefused(t *testing.T) {
	f := &fakeCRIU{}
	o, _ := setup(t, f)
	unlock, err := lockTree(o.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	_, err = Migrate(context.Background(), o)
	var me *Error
	var pe *precheck.Error
	if !errors.As(err, &me) || !me.SourceRunning || !strings.Contains(err.Error(), "already being migrated") {
		t.Fatalf("got %v", err)
	}
	if !errors.As(err, &pe) || pe.Outcome != precheck.Transient {
		t.Errorf("not a transient check failure: %v", err)
	}
}

func TestFakeCancelledMigrationRollsBack(t *testing.T) {
	f := &fakeCRIU{}
	o, dest := setup(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	inner := o.CRIU
	o.CRIU = dumpFunc(func(c context.Context, r criu.Request) (*criu.DumpResult, error) {
		notify := r.Notify
		r.Notify = func(c context.Context, n criu.Notification) error {
			if n.Name == criu.NotifyPostDump {
				cancel() // ^C while the tree is frozen
			}
			return notify(c, n)
		}
		return inner.Dump(c, r)
	})
	_, err := Migrate(ctx, o)
	var me *Error
	if !errors.As(err, &me) || !me.SourceRunning || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	if f.postDumpErr == nil {
		t.Error("post-dump not refused")
	}
	waitEmpty(t, dest.o.WorkDir)
}

// TestFakeBusyDestination: beyond --max-migrations the checks say
// "busy", a transient failure, and nothing is frozen.
func TestFakeBusyDestination(t *testing.T) {
	f := &fakeCRIU{}
	o, dest := setup(t, f)
	dest.o.MaxMigrations = 1
	if err := dest.admit(); err != nil { // one migration in flight
		t.Fatal(err)
	}
	_, err := Migrate(context.Background(), o)
	var pe *precheck.Error
	if !errors.As(err, &pe) || pe.Outcome != precheck.Transient || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("got %v", err)
	}
	if f.postDumpErr != nil || proc.ValidateTarget(o.Pid) != nil {
		t.Error("the workload was touched")
	}
	dest.release()
	if _, err := Migrate(context.Background(), o); err != nil {
		t.Fatalf("after the other migration ended: %v", err)
	}
}

// TestFakeStatus: the service lists its migrations, newest first, as
// `phaul status` asks for them (over the same mutual TLS): failed, done,
// in doubt from before a restart (on disk), not the checks of `phaul check`.
func TestFakeStatus(t *testing.T) {
	f := &fakeCRIU{restoreErr: &criu.Error{Op: "restore", Lines: []string{"Error (criu/cr-restore.c:1): no"}}}
	o, dest := setup(t, f)
	// One left in doubt by an earlier run of the service.
	old := filepath.Join(dest.o.WorkDir, "00000000000000aa")
	os.MkdirAll(old, 0o700)
	os.WriteFile(filepath.Join(old, "state.json"), []byte(`{"id":"00000000000000aa","state":"in-doubt","pid":4242,"comm":"old","started":"2026-01-02T03:04:05Z"}`), 0o600)

	if _, err := Check(context.Background(), o); err != nil {
		t.Fatalf("check: %v", err)
	}
	if _, err := Migrate(context.Background(), o); err == nil {
		t.Fatal("the restore was to fail")
	}
	f.mu.Lock()
	f.restoreErr = nil
	f.mu.Unlock()
	r, err := Migrate(context.Background(), o)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	st, err := QueryStatus(context.Background(), o.Addr, o.TLS)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range st.Migrations {
		got = append(got, m.State+":"+m.Phase)
	}
	if want := "done:resume failed:restore in-doubt:commit"; strings.Join(got, " ") != want {
		t.Fatalf("migrations %q, want %q", got, want)
	}
	done, failed, doubt := st.Migrations[0], st.Migrations[1], st.Migrations[2]
	if done.ID != r.ID || done.Pid != r.DestPid || done.SourcePid != o.Pid || done.Comm != "sleep" || done.Ended == nil || done.Error != "" {
		t.Errorf("done: %+v", done)
	}
	if !strings.Contains(failed.Error, "cr-restore.c:1") || failed.Ended == nil || failed.Pid != 0 {
		t.Errorf("failed: %+v", failed)
	}
	if doubt.ID != "00000000000000aa" || doubt.Pid != 4242 || doubt.Ended != nil || doubt.Comm != "old" {
		t.Errorf("in doubt: %+v", doubt)
	}
	if st.Host == "" || st.Phaul == "" {
		t.Errorf("service: %+v", st)
	}
}

// TestFakeReusedIDKeepsEarlierMigration: a second migration with the ID
// of one already received is refused, and the first one's directory (its
// logs, or a tree in doubt) stays.
func TestFakeReusedIDKeepsEarlierMigration(t *testing.T) {
	f := &fakeCRIU{}
	o, dest := setup(t, f)
	o.ID = "0123456789abcdef"
	keep := filepath.Join(dest.o.WorkDir, o.ID)
	os.MkdirAll(keep, 0o700)
	os.WriteFile(filepath.Join(keep, "state.json"), []byte(`{"id":"0123456789abcdef","state":"in-doubt","pid":1}`), 0o600)
	_, err := Migrate(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "already received") {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(filepath.Join(keep, "state.json")); err != nil {
		t.Errorf("the earlier migration's directory was touched: %v", err)
	}
	if proc.ValidateTarget(o.Pid) != nil {
		t.Error("source not running")
	}
}

// writeCore writes core-1.img with pid's credentials, as CRIU would, then
// changed by mutate (if set).
func writeCore(t testing.TB, dir string, pid int, mutate func(*creds.CredsEntry)) {
	t.Helper()
	c, err := proc.ReadStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	words := func(m uint64) []uint32 { return []uint32{uint32(m), uint32(m >> 32)} }
	u := proto.Uint32
	ce := &creds.CredsEntry{Uid: u(c.Uids[0]), Euid: u(c.Uids[1]), Suid: u(c.Uids[2]), Fsuid: u(c.Uids[3]),
		Gid: u(c.Gids[0]), Egid: u(c.Gids[1]), Sgid: u(c.Gids[2]), Fsgid: u(c.Gids[3]), Groups: c.Groups,
		CapInh: words(c.CapInh), CapPrm: words(c.CapPrm), CapEff: words(c.CapEff), CapBnd: words(c.CapBnd), Secbits: u(0)}
	if mutate != nil {
		mutate(ce)
	}
	core := &criucore.CoreEntry{Mtype: criucore.CoreEntry_X86_64.Enum(),
		ThreadCore: &criucore.ThreadCoreEntry{FutexRla: proto.Uint64(0), FutexRlaLen: u(0), Creds: ce}}
	img := &crit.CriuImage{Magic: "CORE", Entries: []*crit.CriuEntry{{Message: core}}}
	if err := criuimg.Write(filepath.Join(dir, "core-1.img"), img); err != nil {
		t.Fatal(err)
	}
}

// writePstree writes pstree.img: one task, 1 (core-1.img).
func writePstree(t testing.TB, dir string) {
	t.Helper()
	u := proto.Uint32
	img := &crit.CriuImage{Magic: "PSTREE", Entries: []*crit.CriuEntry{{Message: &pstree.PstreeEntry{
		Pid: u(1), Ppid: u(0), Pgid: u(1), Sid: u(1), Threads: []uint32{1}}}}}
	if err := criuimg.Write(filepath.Join(dir, "pstree.img"), img); err != nil {
		t.Fatal(err)
	}
}

// TestFakePrivilegeRefused: images that would give the restored tree a
// uid, a group, a capability or a user namespace the source tree did not
// have are refused before CRIU restores anything; the source keeps
// running.
func TestFakePrivilegeRefused(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*creds.CredsEntry)
		userns bool
		want   string
	}{
		{"another uid", func(c *creds.CredsEntry) { c.Euid = proto.Uint32(4242) }, false, "uid 4242"},
		{"another group", func(c *creds.CredsEntry) { c.Groups = append(c.Groups, 4343) }, false, "gid 4343"},
		{"a user namespace", nil, true, "user namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeCRIU{creds: tt.mutate, userns: tt.userns}
			o, dest := setup(t, f)
			_, err := Migrate(context.Background(), o)
			if !errors.Is(err, ErrPrivilege) && !strings.Contains(fmt.Sprint(err), "more privilege") || !strings.Contains(fmt.Sprint(err), tt.want) {
				t.Fatalf("got %v", err)
			}
			if f.restoredImages != nil {
				t.Error("CRIU restored images that ask for more privilege")
			}
			if proc.ValidateTarget(o.Pid) != nil {
				t.Error("the source does not run")
			}
			waitEmpty(t, dest.o.WorkDir)
		})
	}
}

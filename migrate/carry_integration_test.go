package migrate_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/twohosts"
)

// Files carried (#16): the destination service sees a tmpfs of its own
// over the directory the workloads live in, as a second machine would not
// have it: their program (a copy of bash), the data file they hold open
// for reading and writing and the log they append to cross after the dump.

// carryEnv is one destination with a directory of its own, root.
type carryEnv struct {
	h    *twohosts.Hosts
	svc  *twohosts.Service
	root string
}

func newCarryEnv(t *testing.T) *carryEnv {
	t.Helper()
	h := twohosts.New(t)
	root := t.TempDir()
	svc := h.StartServiceWith(t, []string{"mount -t tmpfs phaul-test-carry " + root})
	return &carryEnv{h: h, svc: svc, root: root}
}

// there is path as the destination sees it.
func (e *carryEnv) there(path string) string {
	return filepath.Join(fmt.Sprintf("/proc/%d/root", e.svc.Pid()), path)
}

// appender is a workload of the source only: DIR/bin/bash holding
// DIR/data open for reading and writing and appending numbered lines to
// DIR/app.log every 20 ms.
type appender struct {
	dir, bin, data, log string
	pid                 int
}

func (e *carryEnv) startAppender(t *testing.T, name string) *appender {
	t.Helper()
	a := &appender{dir: filepath.Join(e.root, name)}
	a.bin, a.data, a.log = filepath.Join(a.dir, "bin", "bash"), filepath.Join(a.dir, "data"), filepath.Join(a.dir, "app.log")
	os.MkdirAll(filepath.Dir(a.bin), 0o755)
	bash, err := os.ReadFile("/bin/bash")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(a.bin, bash, 0o755)
	os.WriteFile(a.data, []byte("data of the source\n"), 0o640)
	a.pid = e.h.StartProcess(t, a.bin, "-c", fmt.Sprintf(`exec 3<>%s; exec >>%s; i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.02; done`, a.data, a.log))
	if err := waitLines(a.log, 10, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return a
}

// lines checks that the log at path holds "line 1", "line 2", ... in
// order, every line whole, and returns how many.
func lines(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n := 0
	for l := range strings.SplitSeq(strings.TrimSuffix(string(data), "\n"), "\n") {
		n++
		if l != fmt.Sprintf("line %d", n) {
			return n, fmt.Errorf("%s: line %d is %q", path, n, l)
		}
	}
	return n, nil
}

// waitLines waits until the log at path has at least n lines, all right.
func waitLines(path string, n int, within time.Duration) error {
	for deadline := time.Now().Add(within); ; time.Sleep(20 * time.Millisecond) {
		got, err := lines(path)
		if err == nil && got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d lines (%v), want %d", path, got, err, n)
		}
	}
}

// migrated migrates a's tree, which must succeed; its copy is killed when
// the test ends.
func (e *carryEnv) migrated(t *testing.T, a *appender, flags ...string) *twohosts.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := e.h.Migrate(t, ctx, a.pid, e.svc.Addr, flags...)
	if r.ExitCode != 0 {
		t.Fatalf("phaul migrate %v: exit %d: %s\n%s", flags, r.ExitCode, r.Str("error"), r.Stderr)
	}
	t.Cleanup(func() { testutil.KillPid(int(r.Num("dest_pid"))) })
	return r
}

// carried is the report's "carried".
func carried(r *twohosts.Result) (files, bytes int64, paths, tails, replaced string) {
	c, _ := r.Report["carried"].(map[string]any)
	list := func(k string) string {
		l, _ := c[k].([]any)
		return fmt.Sprint(l...)
	}
	f, _ := c["files"].(float64)
	b, _ := c["bytes"].(float64)
	return int64(f), int64(b), list("paths"), list("tails"), list("replaced")
}

// sameFile checks that the destination's copy of path has the source's
// bytes and mode.
func (e *carryEnv) sameFile(t *testing.T, path string) {
	t.Helper()
	want, _ := os.ReadFile(path)
	got, err := os.ReadFile(e.there(path))
	st, _ := os.Stat(path)
	dst, _ := os.Stat(e.there(path))
	if err != nil || !bytes.Equal(got, want) || dst == nil || dst.Mode() != st.Mode() {
		t.Errorf("%s on the destination: %d bytes (%v), mode %v; the source's %d bytes, mode %v", path, len(got), err, dst, len(want), st.Mode())
	}
}

// TestMigrateCarriesFiles: a program from a directory only the source
// has, its data file and its log cross after the dump; it runs on from its
// copy on the destination and the log there holds every line, old and
// new, in order.
func TestMigrateCarriesFiles(t *testing.T) {
	e := newCarryEnv(t)
	a := e.startAppender(t, "app")
	r := e.migrated(t, a)
	files, n, paths, tails, _ := carried(r)
	if files != 3 || tails != "" || !strings.Contains(paths, a.bin) || !strings.Contains(paths, a.data) || !strings.Contains(paths, a.log) {
		t.Errorf("carried %d files (%s), tails %q", files, paths, tails)
	}
	bin, _ := os.ReadFile(a.bin)
	data, _ := os.ReadFile(a.data)
	logAtDump, _ := os.ReadFile(a.log) // the source's, as the dump left it
	if want := int64(len(bin) + len(data) + len(logAtDump)); n != want {
		t.Errorf("carried %d bytes, want %d", n, want)
	}
	e.sameFile(t, a.bin)
	e.sameFile(t, a.data)
	before, _ := lines(e.there(a.log))
	if err := waitLines(e.there(a.log), before+10, 10*time.Second); err != nil {
		t.Errorf("the restored workload does not append on: %v", err)
	}
}

// TestMigrateCarriesTail: the destination has an older copy of the log
// (its first lines): only the rest crosses.
func TestMigrateCarriesTail(t *testing.T) {
	e := newCarryEnv(t)
	a := e.startAppender(t, "app")
	old, _ := os.ReadFile(a.log)
	old = old[:bytes.LastIndexByte(old[:len(old)-1], '\n')+1] // whole lines
	os.MkdirAll(e.there(a.dir), 0o755)
	os.WriteFile(e.there(a.log), old, 0o644)
	r := e.migrated(t, a)
	files, n, _, tails, _ := carried(r)
	bin, _ := os.ReadFile(a.bin)
	data, _ := os.ReadFile(a.data)
	logAtDump, _ := os.ReadFile(a.log)
	tail := n - int64(len(bin)+len(data))
	if files != 3 || tails != a.log || tail != int64(len(logAtDump)-len(old)) {
		t.Errorf("carried %d files, tails %q, %d bytes of the log's %d (%d here before)", files, tails, tail, len(logAtDump), len(old))
	}
	before, err := lines(e.there(a.log))
	if err != nil {
		t.Fatal(err)
	}
	if err := waitLines(e.there(a.log), before+10, 10*time.Second); err != nil {
		t.Errorf("the restored workload does not append on: %v", err)
	}
}

// TestMigrateReplacesFiles: the destination has its own version of the
// data file. Without --replace-files the checks refuse before the freeze;
// with it, a failure at the restore (CRIU killed) leaves the destination's
// files as they were (its version back, nothing placed left, no directory
// made left); then a migration that succeeds replaces it and keeps no
// copy of the old version.
func TestMigrateReplacesFiles(t *testing.T) {
	e := newCarryEnv(t)
	a := e.startAppender(t, "app")
	os.MkdirAll(e.there(a.dir), 0o755)
	ours := []byte("the destination's own version\n")
	os.WriteFile(e.there(a.data), ours, 0o600)
	snapshot := func() string {
		var out []string
		filepath.Walk(e.there(e.root), func(p string, fi os.FileInfo, err error) error {
			if err == nil {
				b, _ := os.ReadFile(p)
				out = append(out, fmt.Sprintf("%s %v %q", strings.TrimPrefix(p, e.there(e.root)), fi.Mode(), b))
			}
			return nil
		})
		return strings.Join(out, "\n")
	}
	before := snapshot()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	r := e.h.Migrate(t, ctx, a.pid, e.svc.Addr)
	if r.ExitCode != 4 || r.Str("error_phase") != "checks" || !strings.Contains(r.Str("error"), a.data+" (open): 30 bytes here, 19 on the source") || !strings.Contains(r.Str("error"), "--replace-files would replace it") {
		t.Fatalf("without --replace-files: exit %d in %q: %s", r.ExitCode, r.Str("error_phase"), r.Str("error"))
	}
	if !testutil.Alive(a.pid) || snapshot() != before {
		t.Fatalf("refused, and yet the workload or the destination changed")
	}

	go func() {
		if waitLog(e.svc, "file carried") && waitLog(e.svc, "phase=restore") {
			killCRIU(t, e.svc.Pid())
		}
	}()
	r = e.h.Migrate(t, ctx, a.pid, e.svc.Addr, "--replace-files")
	if r.ExitCode == 0 || r.Str("error_phase") != "restore" || !r.Bool("source_running") {
		t.Fatalf("CRIU killed at the restore: exit %d in %q, source running %v: %s", r.ExitCode, r.Str("error_phase"), r.Bool("source_running"), r.Str("error"))
	}
	if after := snapshot(); after != before {
		t.Errorf("after the failed restore, the destination's files:\n%s\nbefore:\n%s", after, before)
	}
	if !waitLog(e.svc, "put back the files carried") {
		t.Errorf("the service did not say it put the files back")
	}
	n, _ := lines(a.log)
	if err := waitLines(a.log, n+5, 10*time.Second); err != nil {
		t.Fatalf("the workload does not run on at the source: %v", err)
	}

	r = e.migrated(t, a, "--replace-files")
	if _, _, _, _, replaced := carried(r); replaced != a.data {
		t.Errorf("replaced: %q", replaced)
	}
	e.sameFile(t, a.data)
	if left, _ := filepath.Glob(e.there(filepath.Join(a.dir, ".*"))); len(left) > 0 {
		t.Errorf("left on the destination after the commit: %v", left)
	}
}

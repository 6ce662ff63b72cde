package migrate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/twohosts"
	"github.com/phaul/phaul/migrate"
)

// Post-copy, for real: the copy on b runs before its memory has crossed,
// every page follows (from a's snapshot, or after pre-copy rounds mostly
// from b's own round images), and the memory is intact; nothing is left
// on either side.
func TestMigratePostcopy(t *testing.T) {
	for _, c := range []struct {
		name   string
		args   []string
		rounds bool
	}{
		{"alone", []string{"--postcopy", "--precopy=off"}, false},
		// As it comes: a 64 MiB tree has rounds first (auto).
		{"after rounds", []string{"--postcopy"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := twohosts.New(t)
			svc := h.StartService(t)
			w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--child", "--listen", "0.0.0.0:9000", "--mem", "64", "--dirty", "1000"}})
			st, _ := testutil.ReadState(w.State)
			r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, c.args...)
			assertRunsOnB(t, h, w, r, st)
			if sum, err := h.Request("b", twohosts.AddrB+":9000", "SUM"); err != nil || !strings.HasPrefix(sum, "sum=ok") {
				t.Errorf("memory check on b: %q %v", sum, err)
			}
			t.Logf("precopy %q, downtime %.3fs, eager %v, lazy %v, held %v, fetched %v, all pages %.3fs after the restore",
				r.Str("precopy"), r.Num("downtime"), r.Report["eager_pages"], r.Report["lazy_pages"], r.Report["lazy_held"], r.Report["lazy_fetched"], r.Num("all_pages_after"))
			if r.Report["postcopy"] != true {
				t.Errorf("report: postcopy %v", r.Report["postcopy"])
			}
			// 64 MiB are 16384 pages: nearly all followed the restore.
			if r.Num("lazy_pages") < 16384 || r.Num("eager_pages") > r.Num("lazy_pages")/10 {
				t.Errorf("eager %v, lazy %v: want nearly every page lazy", r.Report["eager_pages"], r.Report["lazy_pages"])
			}
			// Each lazy page came once: from the source, or (after
			// rounds) most of them from b's own images (those the
			// copy asked for before the source said which b holds
			// came from the source: normally none, the source says
			// it as b restores).
			fetched, held, lazy := r.Num("lazy_fetched"), r.Num("lazy_held"), r.Num("lazy_pages")
			switch {
			case fetched+held != lazy:
				t.Errorf("lazy %v, held %v, fetched %v: want each lazy page once", lazy, held, fetched)
			case !c.rounds && held != 0:
				t.Errorf("held %v without rounds", held)
			case c.rounds && (r.Str("precopy") != "rounds" || held < lazy/2):
				t.Errorf("precopy %q, lazy %v, held %v: want most lazy pages held from the rounds", r.Str("precopy"), lazy, held)
			}
			// Without rounds most pages came ahead of the daemon's
			// background requests, a whole answer at a time.
			if m := regexp.MustCompile(`every page has arrived.* ahead=(\d+)`).FindStringSubmatch(svc.Log()); !c.rounds && (m == nil || mustAtoi(t, m[1]) < int(lazy)/2) {
				t.Errorf("pages fetched ahead: %v, want most of the %v", m, lazy)
			}
			assertPostcopyCleaned(t, h, svc, r)
		})
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// assertPostcopyCleaned checks that the snapshot and the decision are
// gone from a, and that b's keeper recorded the commit.
func assertPostcopyCleaned(t *testing.T, h *twohosts.Hosts, svc *twohosts.Service, r *twohosts.Result) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(h.Dir, "source", r.Str("id")+"-*"))
	if rec, err := os.ReadDir(filepath.Join(h.Dir, "source", "decisions")); err == nil && len(rec) > 0 {
		left = append(left, "decisions")
	}
	if len(left) > 0 {
		t.Errorf("left on the source: %v", left)
	}
	if rec, err := os.ReadFile(filepath.Join(svc.WorkDir, r.Str("id"), "lease.json")); err != nil || !strings.Contains(string(rec), `"committed"`) {
		t.Errorf("the keeper's record: %s %v", rec, err)
	}
}

// awaitLog waits (up to a minute) until the service has logged what.
func awaitLog(t *testing.T, svc *twohosts.Service, what string) {
	t.Helper()
	if !waitLogFor(svc, what, time.Minute) {
		t.Fatalf("the service never logged %s:\n%s", what, svc.Log())
	}
}

// running are the workload's tasks on host that run: not stopped, not
// dying. They are found by their name, not their command line: a copy
// restored with lazy pages may not have the page of its arguments yet,
// and reading them would wait for it.
func running(h *twohosts.Hosts, host string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := proc.ReadStat(pid)
		if err != nil || st.Comm != "phaul-workload" || strings.ContainsRune("TtZX", rune(st.State)) {
			continue
		}
		if twohosts.InNetns(pid, h.NetnsPath(host)) {
			out = append(out, pid)
		}
	}
	return out
}

// watchCopies polls both hosts until stop is closed and reports any
// instant at which a copy ran on each. Host a is read first: a copy seen
// running there began before b was read, so that a copy on b killed
// before a's resumed is never taken for two at once.
func watchCopies(h *twohosts.Hosts, stop <-chan struct{}) <-chan string {
	seen := make(chan string, 1)
	go func() {
		defer close(seen)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			a := running(h, "a")
			if b := running(h, "b"); len(a) > 0 && len(b) > 0 {
				seen <- fmt.Sprintf("two copies ran at once: %v on a, %v on b", a, b)
				return
			}
		}
	}()
	return seen
}

// Post-copy under faults while the pages follow the restore (a slow
// link keeps that phase open): the copy on b dies when its lease ends,
// and the tree on a resumes from the freeze only after that. Exactly one
// copy runs in the end, and never two at any instant.
func TestPostcopyFaults(t *testing.T) {
	cells := []struct {
		name  string
		fault func(t *testing.T, h *twohosts.Hosts, svc *twohosts.Service, migrate *exec.Cmd)
		after func(t *testing.T, h *twohosts.Hosts, svc *twohosts.Service)
		// rounds: pre-copy rounds first, on the link unshaped; the
		// link is slowed as b restores, while the changed pages still
		// have to cross (the workload dirties 5000 pages a second: the
		// rounds converge, and keep; at 20000 they sometimes did not, and
		// were dropped).
		rounds bool
	}{
		{"link cut", func(t *testing.T, h *twohosts.Hosts, _ *twohosts.Service, _ *exec.Cmd) { h.LinkDown(t) },
			func(t *testing.T, h *twohosts.Hosts, _ *twohosts.Service) { h.LinkUp(t) }, false},
		{"service killed", func(t *testing.T, _ *twohosts.Hosts, svc *twohosts.Service, _ *exec.Cmd) { svc.Kill() },
			func(t *testing.T, h *twohosts.Hosts, _ *twohosts.Service) {
				// Restarted, it cleans up what its keeper killed.
				svc := h.StartService(t)
				for deadline := time.Now().Add(10 * time.Second); !strings.Contains(svc.Log(), "cleaned up a migration"); time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("the restarted service did not clean up:\n%s", svc.Log())
					}
				}
			}, false},
		{"agent killed", func(t *testing.T, _ *twohosts.Hosts, _ *twohosts.Service, m *exec.Cmd) { m.Process.Kill() }, nil, false},
		{"the destination's lazy-pages daemon killed", func(t *testing.T, _ *twohosts.Hosts, _ *twohosts.Service, _ *exec.Cmd) {
			if out, err := exec.Command("pkill", "-KILL", "-f", "lazy-pages --page-server").CombinedOutput(); err != nil {
				t.Fatalf("pkill: %v %s", err, out)
			}
		}, nil, false},
		{"destination stalled", func(t *testing.T, _ *twohosts.Hosts, svc *twohosts.Service, _ *exec.Cmd) {
			syscall.Kill(svc.Cmd.Process.Pid, syscall.SIGSTOP)
		}, func(t *testing.T, _ *twohosts.Hosts, svc *twohosts.Service) {
			syscall.Kill(svc.Cmd.Process.Pid, syscall.SIGCONT)
		}, false},
		{"after rounds: link cut", func(t *testing.T, h *twohosts.Hosts, _ *twohosts.Service, _ *exec.Cmd) { h.LinkDown(t) },
			func(t *testing.T, h *twohosts.Hosts, _ *twohosts.Service) { h.LinkUp(t) }, true},
	}
	for _, c := range cells {
		t.Run(c.name, func(t *testing.T) {
			h := twohosts.New(t)
			svc := h.StartService(t)
			dirty, flags := "500", []string{"--postcopy", "--precopy=off", "--lease", "2s"}
			if c.rounds {
				dirty, flags = "5000", []string{"--postcopy", "--precopy=on", "--lease", "2s"}
			}
			w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--child", "--listen", "0.0.0.0:9000", "--mem", "32", "--dirty", dirty}})
			// 32 MiB at 16 Mbit/s: the pages follow for some 15 s
			// (after the rounds: what changed since the last, a few MB,
			// a few s).
			shape := func() {
				if out, err := h.Command("a", "tc", "qdisc", "add", "dev", h.Link("a"), "root", "tbf", "rate", "16mbit", "burst", "32kb", "latency", "50ms").CombinedOutput(); err != nil {
					t.Fatalf("tc: %v %s", err, out)
				}
			}
			if !c.rounds {
				shape()
			}
			before, _ := testutil.ReadState(w.State)
			source := filepath.Join(h.Dir, "source")
			cmd := h.Command("a", append(append([]string{filepath.Join(h.Bin, "phaul"), "migrate", "--json", "--tls-dir", h.TLS,
				"--work-dir", source, "--timeout", "30s"}, flags...), strconv.Itoa(w.Pid), svc.Addr)...)
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			seen := watchCopies(h, stop)
			if c.rounds {
				awaitLog(t, svc, "phase=restore")
				shape()
			}
			awaitLog(t, svc, "phase=pages")
			if len(running(h, "b")) == 0 || len(h.Copies(w, "a")) != 1 || len(running(h, "a")) != 0 {
				t.Fatalf("before the fault: %v running on b, %v on a (%v running)", running(h, "b"), h.Copies(w, "a"), running(h, "a"))
			}
			c.fault(t, h, svc, cmd)
			time.Sleep(7 * time.Second)
			if c.after != nil {
				c.after(t, h, svc)
			}
			err := cmd.Wait()
			t.Logf("phaul migrate: %v\n%s", err, errb.String())
			var rep struct{ Precopy string }
			if c.rounds && (json.Unmarshal(out.Bytes(), &rep) != nil || rep.Precopy != "rounds") {
				t.Errorf("pre-copy %q, want the rounds kept: %s", rep.Precopy, out.String())
			}
			if c.rounds {
				t.Logf("report: %s", out.String())
			}
			if d := migrate.PendingDecisions(source); len(d) > 0 {
				out, err := h.Command("a", filepath.Join(h.Bin, "phaul"), "resolve", "--tls-dir", h.TLS, "--work-dir", source, d[0].ID).CombinedOutput()
				t.Logf("phaul resolve: %v %s", err, out)
			}
			var a []int
			for deadline := time.Now().Add(15 * time.Second); len(a) == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				a = running(h, "a")
			}
			close(stop)
			if msg, ok := <-seen; ok {
				t.Fatal(msg)
			}
			if b := running(h, "b"); len(a) != 2 || len(h.Copies(w, "a")) != 1 || len(b) != 0 {
				t.Fatalf("copies: %v running on a (%v), %v on b; want the tree (two tasks) on a", a, h.Copies(w, "a"), b)
			}
			now, _ := testutil.ReadState(w.State)
			if now.Count < before.Count {
				t.Fatalf("counter went back from %d to %d", before.Count, now.Count)
			}
			if _, err := testutil.WaitCount(w.State, now.Count+10, 10*time.Second); err != nil {
				t.Fatalf("the tree on a does not count on: %v", err)
			}
			if sum, err := h.Request("a", twohosts.AddrA+":9000", "SUM"); err != nil || !strings.HasPrefix(sum, "sum=ok") {
				t.Errorf("memory check on a: %q %v", sum, err)
			}
			if d := migrate.PendingDecisions(source); len(d) != 0 {
				t.Errorf("records left on the source: %+v", d)
			}
		})
	}
}

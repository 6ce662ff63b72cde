package migrate_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/twohosts"
)

// roundLogs prints the destination's page-server logs of the rounds when
// the test failed.
func roundLogs(t *testing.T, svc *twohosts.Service, id string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		logs, _ := filepath.Glob(filepath.Join(svc.WorkDir, id, "page-server*.log"))
		for _, l := range logs {
			data, _ := os.ReadFile(l)
			t.Logf("%s:\n%s", l, data)
		}
	})
}

// A tree rewriting its memory while the rounds copy it arrives with its
// memory intact, the dump sending only what changed since the last round.
func TestMigratePrecopy(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--child", "--listen", "0.0.0.0:9000", "--mem", "64", "--dirty", "1000"}})
	st, _ := testutil.ReadState(w.State)
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--precopy", "on")
	roundLogs(t, svc, r.Str("id"))
	assertRunsOnB(t, h, w, r, st)
	if sum, err := h.Request("b", twohosts.AddrB+":9000", "SUM"); err != nil || !strings.HasPrefix(sum, "sum=ok") {
		t.Errorf("memory check on b: %q %v", sum, err)
	}
	rounds, _ := r.Report["rounds"].([]any)
	t.Logf("precopy %q, stop rule %q, %d rounds %v; referenced %v, frozen page bytes %v", r.Str("precopy"), r.Str("stop_rule"), len(rounds), rounds, r.Report["referenced_pages"], r.Report["page_bytes"])
	if r.Str("precopy") != "rounds" || len(rounds) < 2 || r.Str("stop_rule") == "" {
		t.Fatalf("want pre-copy rounds the dump built on: precopy %q, %d rounds, rule %q", r.Str("precopy"), len(rounds), r.Str("stop_rule"))
	}
	// 64 MiB are 16384 pages: most were not sent while frozen.
	if r.Num("referenced_pages") < 16384*8/10 {
		t.Errorf("the dump referred to %v pages, want most of the 16384", r.Report["referenced_pages"])
	}
	checkHeld(t, rounds)
}

// checkHeld checks that after each round the destination held one copy
// of each page the round covered: no older copy of a page sent again, no
// page the tree no longer has.
func checkHeld(t *testing.T, rounds []any) {
	t.Helper()
	for _, x := range rounds {
		rd := x.(map[string]any)
		covered := int64(rd["sent"].(float64) + rd["referenced"].(float64))
		if held := int64(rd["held_bytes"].(float64)); held != covered*4096 {
			t.Errorf("round %v: the destination holds %d pages, the round covered %d", rd["round"], held/4096, covered)
		}
	}
}

// A tree rewriting its memory faster than the rounds carry it: the rounds
// stop by the rule, and the tree arrives intact.
func TestMigratePrecopyHotTree(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--listen", "0.0.0.0:9000", "--mem", "128", "--dirty", "60000"}})
	st, _ := testutil.ReadState(w.State)
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--precopy", "on")
	roundLogs(t, svc, r.Str("id"))
	t.Logf("precopy %q, stop rule %q, rounds %v; referenced %v", r.Str("precopy"), r.Str("stop_rule"), r.Report["rounds"], r.Report["referenced_pages"])
	assertRunsOnB(t, h, w, r, st)
	if sum, err := h.Request("b", twohosts.AddrB+":9000", "SUM"); err != nil || !strings.HasPrefix(sum, "sum=ok") {
		t.Errorf("memory check on b: %q %v", sum, err)
	}
	if r.Str("stop_rule") == "" {
		t.Error("no stop rule reported")
	}
	rounds, _ := r.Report["rounds"].([]any)
	checkHeld(t, rounds)
}

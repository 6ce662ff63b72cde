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

// Post-copy, for real: the copy on b runs before its memory has crossed,
// every page follows from a's snapshot, and the memory is intact; nothing
// is left on either side.
func TestMigratePostcopy(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--child", "--listen", "0.0.0.0:9000", "--mem", "64", "--dirty", "1000"}})
	st, _ := testutil.ReadState(w.State)
	r := h.Migrate(t, context.Background(), w.Pid, svc.Addr, "--postcopy")
	assertRunsOnB(t, h, w, r, st)
	if sum, err := h.Request("b", twohosts.AddrB+":9000", "SUM"); err != nil || !strings.HasPrefix(sum, "sum=ok") {
		t.Errorf("memory check on b: %q %v", sum, err)
	}
	t.Logf("downtime %.3fs, eager %v, lazy %v, fetched %v, all pages %.3fs after the restore",
		r.Num("downtime"), r.Report["eager_pages"], r.Report["lazy_pages"], r.Report["lazy_fetched"], r.Num("all_pages_after"))
	if r.Report["postcopy"] != true {
		t.Errorf("report: postcopy %v", r.Report["postcopy"])
	}
	// 64 MiB are 16384 pages: nearly all followed the restore.
	if r.Num("lazy_pages") < 16384 || r.Num("lazy_fetched") < r.Num("lazy_pages") || r.Num("eager_pages") > r.Num("lazy_pages")/10 {
		t.Errorf("eager %v, lazy %v, fetched %v: want nearly every page lazy, and each fetched", r.Report["eager_pages"], r.Report["lazy_pages"], r.Report["lazy_fetched"])
	}
	// The snapshot and the decision are gone from a; b keeps only logs.
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

package postcopy

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/testutil"
)

func TestMain(m *testing.M) {
	RunProbeIfAsked()
	RunKeeperIfAsked()
	os.Exit(m.Run())
}

// The whole chain, for real: a probe process dumped, restored with lazy
// pages, every page fetched through Serve, its memory as it was.
func TestSelfTest(t *testing.T) {
	c, _ := testutil.CRIU(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := SelfTest(ctx, c, t.TempDir(), exe)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Worked {
		t.Fatalf("self-test: %s", res)
	}
	if res.Lazy < probePages || res.Served < probePages {
		t.Errorf("lazy %d, served %d: want both >= %d", res.Lazy, res.Served, probePages)
	}
	// What the restore read came first: far less than the probe's memory.
	if res.Eager <= 0 || res.Eager >= probePages/4 {
		t.Errorf("%d pages sent before the restore: want some, and far fewer than the %d lazy", res.Eager, res.Lazy)
	}
	t.Log(res)
}

// The check can fail: a page of the probe's memory changed in the
// snapshot reaches the probe through the lazy chain, and it says so.
func TestSelfTestCatchesAChangedPage(t *testing.T) {
	c, _ := testutil.CRIU(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := newTestDirs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := dumpProbe(ctx, c, exe, d.snap, d.work, d.result); err != nil {
		t.Fatal(err)
	}
	changeProbePage(t, d.snap, 7)
	res, err := lazyRestoreProbe(ctx, c, d)
	if err != nil {
		t.Fatal(err)
	}
	if res.Worked || !strings.Contains(res.Why, "1 of 4096 pages differ, the first page 7") {
		t.Fatalf("self-test with a changed page: %s", res)
	}
}

// changeProbePage flips a byte of page n of the probe's pattern where the
// dump's pages image holds it.
func changeProbePage(t *testing.T, imgs string, n int) {
	t.Helper()
	want := make([]byte, probePages*criu.PageSize)
	probeFill(want)
	page := want[n*criu.PageSize : (n+1)*criu.PageSize]
	files, _ := filepath.Glob(filepath.Join(imgs, "pages-*.img"))
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+criu.PageSize <= len(data); off += criu.PageSize {
			if bytes.Equal(data[off:off+criu.PageSize], page) {
				data[off+100] ^= 0xff
				if err := os.WriteFile(path, data, 0o600); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
	}
	t.Fatalf("page %d of the probe's pattern is in no pages image of %s", n, imgs)
}

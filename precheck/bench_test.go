package precheck_test

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/twohosts"
)

// BenchmarkCheck200Files measures `phaul check` between the two hosts for
// a tree holding 200 library files open (the target: well under a second).
// The first check is cold (both sides hash every file); later ones find
// the service's hashes cached.
func BenchmarkCheck200Files(b *testing.B) {
	h := twohosts.New(b)
	svc := h.StartService(b)
	libs, _ := filepath.Glob("/usr/lib/x86_64-linux-gnu/*.so*")
	if len(libs) > 200 {
		libs = libs[:200]
	}
	script := "i=10; for f in " + strings.Join(libs, " ") + "; do eval \"exec $i<$f\"; i=$((i+1)); done; exec sleep 300"
	pid := h.StartProcess(b, "bash", "-c", script)
	time.Sleep(500 * time.Millisecond)
	run := func() time.Duration {
		t0 := time.Now()
		out, err := h.Command("a", filepath.Join(h.Bin, "phaul"), "check", "--tls-dir", h.TLS, strconv.Itoa(pid), svc.Addr).CombinedOutput()
		if err != nil {
			b.Fatalf("phaul check: %v\n%s", err, out)
		}
		return time.Since(t0)
	}
	cold := run()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		run()
	}
	b.ReportMetric(cold.Seconds(), "cold-s")
}

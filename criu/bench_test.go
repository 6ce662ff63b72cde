package criu_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/testutil"
)

// BenchmarkLocalDumpRestore measures CRIU alone through phaul's client: a
// dump of a workload holding N MiB to tmpfs, then its restore. This is the
// floor any migration's downtime is compared with.
func BenchmarkLocalDumpRestore(b *testing.B) {
	c, _ := testutil.CRIU(b)
	for _, mib := range []int{64, 256} {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			var dump, restore time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				w := testutil.StartWorkload(b, testutil.WorkloadOptions{ExtraArgs: []string{"--mem", fmt.Sprint(mib)}})
				dir, err := os.MkdirTemp("/dev/shm", "phaul-bench-")
				if err != nil {
					b.Fatal(err)
				}
				pid := w.Cmd.Process.Pid
				b.StartTimer()
				t0 := time.Now()
				if _, err := c.Dump(context.Background(), criu.Request{ImagesDir: dir, Opts: dumpOpts(pid)}); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				b.StopTimer()
				if err := testutil.WaitReaped(pid, 10*time.Second); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				t2 := time.Now()
				if _, err := c.Restore(context.Background(), criu.Request{ImagesDir: dir}); err != nil {
					b.Fatal(err)
				}
				t3 := time.Now()
				b.StopTimer()
				dump += t1.Sub(t0)
				restore += t3.Sub(t2)
				w.Kill()
				os.RemoveAll(dir)
				b.StartTimer()
			}
			b.ReportMetric(float64(dump.Milliseconds())/float64(b.N), "dump-ms/op")
			b.ReportMetric(float64(restore.Milliseconds())/float64(b.N), "restore-ms/op")
			b.ReportMetric(float64(mib)*float64(b.N)/(dump+restore).Seconds(), "MiB/s")
		})
	}
}

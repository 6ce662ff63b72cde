package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/phaul/phaul/internal/tty"
	"github.com/phaul/phaul/internal/twohosts"
	"github.com/phaul/phaul/migrate"
)

func TestProgressLine(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		s    migrate.ProgressSnapshot
		now  time.Time
		want []string
	}{
		{"before the pages", migrate.ProgressSnapshot{Phase: "checks", PhaseStart: t0}, t0.Add(1200 * time.Millisecond),
			[]string{"checks", "1.2s"}},
		{"half sent", migrate.ProgressSnapshot{Phase: "dump", PagesStart: t0, PageBytes: 50 << 20, WireBytes: 5 << 20, ExpectedBytes: 100 << 20},
			t0.Add(time.Second), []string{"dump", "[" + strings.Repeat("#", 12) + strings.Repeat(".", 12) + "]", " 50%", "50.0 MiB / 100.0 MiB", "50.0 MiB/s", "ETA 1s", "wire 5.0 MiB"}},
		{"all sent, less than the RSS", migrate.ProgressSnapshot{Phase: "restore", PagesStart: t0, PagesEnd: t0.Add(2 * time.Second), PageBytes: 80 << 20, ExpectedBytes: 100 << 20},
			t0.Add(9 * time.Second), []string{"restore", "[" + strings.Repeat("#", 24) + "]", "100%", "80.0 MiB / 80.0 MiB", "40.0 MiB/s", "ETA 0s"}},
		{"first round", migrate.ProgressSnapshot{Phase: "precopy", Round: 1, PagesStart: t0, PageBytes: 25 << 20, WireBytes: 5 << 20, ExpectedBytes: 100 << 20},
			t0.Add(time.Second), []string{"round 1", "[" + strings.Repeat("#", 6) + strings.Repeat(".", 18) + "]", " 25%", "25.0 MiB / 100.0 MiB", "ETA 3s"}},
		{"later round", migrate.ProgressSnapshot{Phase: "precopy", Round: 3, PagesStart: t0, PageBytes: 2 << 20, WireBytes: 1 << 20, ExpectedBytes: 100 << 20},
			t0.Add(1500 * time.Millisecond), []string{"round 3", "2.0 MiB sent", "wire 1.0 MiB", "1.5s"}},
		{"files carried", migrate.ProgressSnapshot{Phase: "transfer", PhaseStart: t0, PagesStart: t0, PagesEnd: t0, CarryFiles: 3, CarrySent: 1, CarryBytes: 4 << 20, CarryCopied: 1 << 20},
			t0.Add(300 * time.Millisecond), []string{"transfer", "files 1/3", "1.0 MiB / 4.0 MiB", "300ms"}},
		{"nothing yet", migrate.ProgressSnapshot{Phase: "dump", PagesStart: t0, ExpectedBytes: 1 << 20}, t0,
			[]string{"[" + strings.Repeat(".", 24) + "]", "  0%", "0 B/s", "ETA -"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := progressLine(tt.s, tt.now)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
		})
	}
}

// TestProgressBarOnlyOnTerminal migrates for real (the restored trees
// die with the two hosts): with stderr on a pty the bar is drawn (and its
// last state stays); on a pipe, with --json or --quiet there is none.
func TestProgressBarOnlyOnTerminal(t *testing.T) {
	h := twohosts.New(t)
	svc := h.StartService(t)
	run := func(t *testing.T, onPty bool, flags ...string) (stdout, stderr string) {
		t.Helper()
		w := h.StartWorkload(t, twohosts.WorkloadOptions{Args: []string{"--mem", "64"}})
		args := append([]string{filepath.Join(h.Bin, "phaul"), "migrate", "--tls-dir", h.TLS, "--work-dir", filepath.Join(h.Dir, "source")}, flags...)
		cmd := h.Command("a", append(args, strconv.Itoa(w.Pid), svc.Addr)...)
		var out, errb bytes.Buffer
		cmd.Stdout = &out
		var master *os.File
		if onPty {
			m, slave, err := tty.Open()
			if err != nil {
				t.Fatal(err)
			}
			master = m
			defer master.Close()
			cmd.Stderr = slave
			defer slave.Close()
		} else {
			cmd.Stderr = &errb
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		copied := make(chan struct{})
		if onPty {
			cmd.Stderr.(*os.File).Close() // ours; the child has its own
			go func() { io.Copy(&errb, master); close(copied) }()
		} else {
			close(copied)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("phaul migrate: %v\n%s\n%s", err, out.String(), errb.String())
		}
		<-copied // EIO once the last slave is closed
		return out.String(), errb.String()
	}
	t.Run("pty", func(t *testing.T) {
		out, errs := run(t, true)
		if !strings.Contains(errs, "\r\x1b[K") || !strings.Contains(errs, "[########################] 100%") || !strings.Contains(errs, "MiB/s") {
			t.Errorf("no progress bar on the terminal: %q", errs)
		}
		if !strings.Contains(out, "migrated") && !strings.Contains(out, "pid") {
			t.Errorf("no report on stdout: %q", out)
		}
	})
	t.Run("pipe", func(t *testing.T) {
		_, errs := run(t, false)
		if strings.Contains(errs, "\r") || strings.Contains(errs, "MiB/s") {
			t.Errorf("progress drawn on a pipe: %q", errs)
		}
	})
	t.Run("json on pty", func(t *testing.T) {
		out, errs := run(t, true, "--json")
		if strings.Contains(errs, "\x1b[K") || strings.Contains(errs, "MiB/s") {
			t.Errorf("progress drawn with --json: %q", errs)
		}
		if !strings.HasPrefix(strings.TrimSpace(out), "{") {
			t.Errorf("not JSON: %q", out)
		}
	})
	t.Run("quiet on pty", func(t *testing.T) {
		out, errs := run(t, true, "--quiet")
		if out != "" || strings.Contains(errs, "MiB/s") {
			t.Errorf("--quiet printed: stdout %q stderr %q", out, errs)
		}
	})
}

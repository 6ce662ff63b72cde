package postcopy

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/phaul/phaul/criu"
)

// The probe is the process SelfTest migrates: a program (phaul's own
// binaries) that calls RunProbeIfAsked first thing becomes it when
// started with probeEnv set. It fills probePages pages of private memory
// with a known pattern, says so on fd 3 and closes it, then waits: on
// SIGUSR1 (after its lazy restore) it checks every page, writes what it
// found to the file probeEnv names, and exits.
const (
	probeEnv   = "PHAUL_LAZY_PROBE"
	probePages = 4096 // 16 MiB
	probeSeed  = 0x70686175
	// probeLife ends a probe nobody signals (its self-test killed).
	probeLife = 2 * time.Minute
)

// RunProbeIfAsked runs the probe and exits if this process was started
// as one; otherwise it returns at once.
func RunProbeIfAsked() {
	out := os.Getenv(probeEnv)
	if out == "" {
		return
	}
	os.Exit(runProbe(out))
}

func runProbe(out string) int {
	mem := make([]byte, probePages*criu.PageSize)
	probeFill(mem)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	ready := os.NewFile(3, "ready")
	if _, err := ready.Write([]byte{1}); err != nil {
		return 1
	}
	ready.Close()
	select {
	case <-sig:
	case <-time.After(probeLife):
		return 1
	}
	if err := os.WriteFile(out, []byte(probeCheck(mem)), 0o600); err != nil {
		return 1
	}
	return 0
}

func probeFill(mem []byte) {
	r := rand.NewChaCha8([32]byte{0: probeSeed & 0xff, 1: probeSeed >> 8 & 0xff})
	_, _ = r.Read(mem)
}

// probeCheck is "ok", or which pages differ from the pattern.
func probeCheck(mem []byte) string {
	want := make([]byte, len(mem))
	probeFill(want)
	bad, first := 0, -1
	for i := 0; i < len(mem); i += criu.PageSize {
		if !bytes.Equal(mem[i:i+criu.PageSize], want[i:i+criu.PageSize]) {
			if first < 0 {
				first = i / criu.PageSize
			}
			bad++
		}
	}
	if bad == 0 {
		return "ok"
	}
	return fmt.Sprintf("%d of %d pages differ, the first page %d", bad, len(mem)/criu.PageSize, first)
}

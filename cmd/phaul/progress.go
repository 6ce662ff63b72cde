package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/phaul/phaul/migrate"
)

// progressInterval is how often the bar is redrawn.
const progressInterval = 150 * time.Millisecond

// startProgress draws p on w, a terminal, until the returned stop is
// called; stop draws the last state and ends the line.
func startProgress(w io.Writer, p *migrate.Progress) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				fmt.Fprint(w, "\r\x1b[K"+progressLine(p.Snapshot(), now))
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		s := p.Snapshot()
		if s.Phase == "" {
			return
		}
		fmt.Fprint(w, "\r\x1b[K"+progressLine(s, time.Now())+"\n")
	}
}

// barWidth is the number of cells of the bar.
const barWidth = 24

// progressLine renders one state of a migration:
//
//	dump      [#########...............]  38%  97.0 MiB / 256.0 MiB  412.3 MiB/s  ETA 0s  wire 11.2 MiB
//
// Before the page stream it shows the phase and how long it has taken;
// while files are carried after the dump, how many and how many bytes.
// During pre-copy the phase is the round ("round 1"); the rounds after the
// first send what changed, of no known total, and show bytes and time.
func progressLine(s migrate.ProgressSnapshot, now time.Time) string {
	if s.Phase == "transfer" && s.CarryFiles > 0 {
		return fmt.Sprintf("%-9s files %d/%d  %s / %s  %s", s.Phase, s.CarrySent, s.CarryFiles,
			migrate.FormatBytes(s.CarryCopied), migrate.FormatBytes(s.CarryBytes), now.Sub(s.PhaseStart).Round(100*time.Millisecond))
	}
	if s.PagesStart.IsZero() {
		return fmt.Sprintf("%-9s %s", s.Phase, now.Sub(s.PhaseStart).Round(100*time.Millisecond))
	}
	if s.Round > 0 {
		s.Phase = fmt.Sprintf("round %d", s.Round)
	}
	if s.Round > 1 {
		// What a later round sends is what changed: no total to show.
		return fmt.Sprintf("%-9s %s sent  wire %s  %s", s.Phase, migrate.FormatBytes(s.PageBytes),
			migrate.FormatBytes(s.WireBytes), now.Sub(s.PagesStart).Round(100*time.Millisecond))
	}
	expected, end, eta := s.ExpectedBytes, now, "-"
	if !s.PagesEnd.IsZero() { // all sent: the total is known
		expected, end, eta = s.PageBytes, s.PagesEnd, "0s"
	}
	frac := 0.0
	if expected > 0 {
		frac = min(float64(s.PageBytes)/float64(expected), 1)
	}
	filled := int(frac * barWidth)
	bar := strings.Repeat("#", filled) + strings.Repeat(".", barWidth-filled)
	rate := 0.0
	if elapsed := end.Sub(s.PagesStart).Seconds(); elapsed > 0 {
		rate = float64(s.PageBytes) / elapsed
	}
	if s.PagesEnd.IsZero() && rate > 0 && s.PageBytes < expected {
		eta = time.Duration(float64(expected-s.PageBytes) / rate * float64(time.Second)).Round(time.Second).String()
	}
	return fmt.Sprintf("%-9s [%s] %3.0f%%  %s / %s  %s/s  ETA %s  wire %s", s.Phase, bar, frac*100,
		migrate.FormatBytes(s.PageBytes), migrate.FormatBytes(expected), migrate.FormatBytes(int64(rate)), eta,
		migrate.FormatBytes(s.WireBytes))
}

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTBFRate(t *testing.T) {
	for _, tc := range []struct {
		link, rate string
		ok         bool
	}{
		{"bare", "", true},
		{"1gbit", "1gbit", true},
		{"500mbit", "500mbit", true},
		{"2.5Gbit", "2.5gbit", true},
		{"10g", "10gbit", true},
		{"fast", "", false},
		{"gbit", "", false},
		{"1ggbit", "", false},
		{"", "", false},
	} {
		rate, err := tbfRate(tc.link)
		if (err == nil) != tc.ok || rate != tc.rate {
			t.Errorf("tbfRate(%q) = %q, %v; want %q, ok=%v", tc.link, rate, err, tc.rate, tc.ok)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestTargets judges made-up medians: each target is computed from the
// right methods and links, and met or not by its limit.
func TestTargets(t *testing.T) {
	size := func(mib int, phaul, off, criu, manual sample) *sizeResult {
		return &sizeResult{MiB: mib, Methods: []*methodResult{
			{Method: methodPhaul, Runs: []sample{phaul}},
			{Method: methodPhaulOff, Runs: []sample{off}},
			{Method: methodCRIU, Runs: []sample{criu}},
			{Method: methodManual, Runs: []sample{manual}},
		}}
	}
	hot := &sizeResult{MiB: 256, Methods: []*methodResult{
		{Method: methodPhaul, Runs: []sample{{Downtime: 2.3, Rounds: 2, StopRule: "not converging: round 2 sent"}}},
		{Method: methodPhaulOff, Runs: []sample{{Downtime: 2}}},
	}}
	r := &results{Links: []*linkResult{
		{Link: "bare", Sizes: []*sizeResult{size(256,
			sample{Downtime: 1.05, Total: 2, PageBytes: 100, WireBytes: 5, FrozenPart: 0.03, Rounds: 2, StopRule: "converged: 3 pages"},
			sample{Downtime: 2, Total: 2, PageBytes: 100, WireBytes: 50},
			sample{Downtime: 1, Total: 1},
			sample{Downtime: 3, Total: 3})}},
		{Link: "1gbit", Sizes: []*sizeResult{size(256,
			sample{Downtime: 2, Total: 2.5, PageBytes: 100, WireBytes: 10, FrozenPart: 0.08, Rounds: 3},
			sample{Downtime: 3, Total: 3, PageBytes: 100, WireBytes: 60},
			sample{Downtime: 1, Total: 1},
			sample{Downtime: 4, Total: 4})}, Hot: hot},
	}}
	r.finish()
	want := map[string]bool{
		"downtime phaul/criu bare":            true,  // 1.05 <= 1.10
		"frozen part of the pages bare":       true,  // 0.03
		"wire/raw bytes (no pre-copy) bare":   true,  // 0.5
		"downtime phaul/criu 1gbit":           false, // 2
		"frozen part of the pages 1gbit":      false, // 0.08
		"total phaul/manual 1gbit":            true,  // 0.625 <= 0.85
		"wire/raw bytes (no pre-copy) 1gbit":  false, // 0.6
		"hot: downtime phaul/phaul-off 1gbit": false, // 1.15
	}
	if len(r.Targets) != len(want) {
		t.Fatalf("%d targets, want %d: %+v", len(r.Targets), len(want), r.Targets)
	}
	for _, tg := range r.Targets {
		met, ok := want[tg.Name+" "+tg.Link]
		if !ok {
			t.Errorf("unexpected target %+v", tg)
		} else if tg.Met != met {
			t.Errorf("%s on %s: value %.3f, met=%v, want %v", tg.Name, tg.Link, tg.Value, tg.Met, met)
		}
	}

	var table bytes.Buffer
	r.writeTable(&table)
	if !strings.Contains(table.String(), "NOT MET") || !strings.Contains(table.String(), "link 1gbit") {
		t.Errorf("table lacks the verdicts or a link:\n%s", table.String())
	}
	r.Date = "2026-11-22T10:00:00Z"
	dir := t.TempDir()
	files, err := r.save(dir)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "20261122T1000.json"))
	if err != nil {
		t.Fatalf("%v (wrote %v)", err, files)
	}
	var back results
	if err := json.Unmarshal(data, &back); err != nil || len(back.Targets) != len(want) {
		t.Errorf("JSON does not read back: %v, %d targets", err, len(back.Targets))
	}
	md, _ := os.ReadFile(filepath.Join(dir, "20261122T1000.md"))
	if !strings.Contains(string(md), "| total phaul/manual | 1gbit | 256 | 0.625 | <= 0.85 | met |") ||
		!strings.Contains(string(md), "| 256 | phaul hot | 2.300 |") || !strings.Contains(string(md), "| not converging |") {
		t.Errorf("markdown lacks the target row:\n%s", md)
	}
}

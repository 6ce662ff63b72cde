package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// results is one run of the bench; its JSON form is what --out gets.
type results struct {
	Date    string        `json:"date"`
	Machine machine       `json:"machine"`
	Sizes   []int         `json:"sizes_mib"`
	Runs    int           `json:"runs"`
	Dirty   int           `json:"dirty_pages_per_second"`
	Hot     int           `json:"hot_dirty_pages_per_second,omitempty"`
	Links   []*linkResult `json:"links"`
	Targets []target      `json:"targets"`
	Elapsed string        `json:"elapsed"`
}

type machine struct {
	Kernel string `json:"kernel"`
	CPUs   int    `json:"cpus"`
	MemMiB int64  `json:"mem_mib"`
	CRIU   string `json:"criu"`
	Phaul  string `json:"phaul"`
}

type linkResult struct {
	Link       string        `json:"link"`
	Throughput float64       `json:"throughput_bps"` // one TCP stream, measured
	Sizes      []*sizeResult `json:"sizes"`
	// Hot is the hot workload moved by phaul and phaul-off (not on the
	// bare link, which carries more than it can dirty).
	Hot *sizeResult `json:"hot,omitempty"`
}

type sizeResult struct {
	MiB     int             `json:"mib"`
	Methods []*methodResult `json:"methods"`
}

type methodResult struct {
	Method string   `json:"method"`
	Median sample   `json:"median"`
	Runs   []sample `json:"runs"`
}

type target struct {
	Name  string  `json:"name"`
	Link  string  `json:"link"`
	MiB   int     `json:"mib"`
	Value float64 `json:"value"`
	Limit float64 `json:"limit"`
	Met   bool    `json:"met"`
}

func (s *sizeResult) method(m string) *methodResult {
	for _, r := range s.Methods {
		if r.Method == m {
			return r
		}
	}
	return nil
}

// measure runs every method on every link and size, o.Runs times. The
// order of the methods rotates from run to run, so that none always runs
// on a machine the previous one left busy.
func (b *bench) measure(ctx context.Context) (*results, error) {
	res := &results{Date: time.Now().UTC().Format(time.RFC3339), Sizes: b.o.Sizes, Runs: b.o.Runs, Dirty: b.o.Dirty, Hot: b.o.Hot, Machine: b.machine(ctx)}
	for _, link := range b.o.Links {
		if err := b.shape(ctx, link); err != nil {
			return nil, err
		}
		lr := &linkResult{Link: link}
		res.Links = append(res.Links, lr)
		bps, err := b.throughput(ctx, 1024)
		if err != nil {
			return nil, fmt.Errorf("measure the %s link: %w", link, err)
		}
		lr.Throughput = bps
		fmt.Fprintf(os.Stderr, "link %s: %.2f Gbit/s for one TCP stream\n", link, bps/1e9)
		for _, mib := range b.o.Sizes {
			sr, err := b.measureSize(ctx, link, mib, b.o.Dirty, b.o.Method)
			if err != nil {
				return nil, err
			}
			lr.Sizes = append(lr.Sizes, sr)
		}
		if b.o.Hot > 0 && link != "bare" {
			if lr.Hot, err = b.measureSize(ctx, link+" hot", b.o.HotMiB, b.o.Hot, []string{methodPhaul, methodPhaulOff}); err != nil {
				return nil, err
			}
		}
	}
	return res, nil
}

// measureSize runs every method on a workload of mib MiB dirtying dirty
// pages a second, o.Runs times.
func (b *bench) measureSize(ctx context.Context, link string, mib, dirty int, methods []string) (*sizeResult, error) {
	sr := &sizeResult{MiB: mib}
	for _, m := range methods {
		sr.Methods = append(sr.Methods, &methodResult{Method: m})
	}
	for run := 0; run < b.o.Runs; run++ {
		for k := range sr.Methods {
			mr := sr.Methods[(k+run)%len(sr.Methods)]
			s, err := b.migrate(ctx, mr.Method, mib, dirty)
			if err != nil {
				return nil, fmt.Errorf("%s, %d MiB, %s, run %d: %w", link, mib, mr.Method, run+1, err)
			}
			mr.Runs = append(mr.Runs, s)
			fmt.Fprintf(os.Stderr, "  %-10s %5d MiB  %-9s run %d: downtime %.3fs total %.3fs rounds %.0f %s\n",
				link, mib, mr.Method, run+1, s.Downtime, s.Total, s.Rounds, s.StopRule)
		}
	}
	return sr, nil
}

func (b *bench) machine(ctx context.Context) machine {
	m := machine{CPUs: runtime.NumCPU()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		m.MemMiB = int64(si.Totalram) * int64(si.Unit) >> 20
	}
	if out, err := exec.CommandContext(ctx, b.criu, "--version").Output(); err == nil {
		m.CRIU = strings.TrimPrefix(strings.SplitN(string(out), "\n", 2)[0], "Version: ")
	}
	if out, err := exec.CommandContext(ctx, filepath.Join(b.bin, "phaul"), "version").Output(); err == nil {
		m.Phaul = strings.TrimPrefix(strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0]), "phaul ")
	}
	return m
}

// finish computes the medians and judges the targets.
func (r *results) finish() {
	for _, lr := range r.Links {
		for _, sr := range lr.Sizes {
			sr.medians()
			add := func(name string, value, limit float64) {
				r.Targets = append(r.Targets, target{Name: name, Link: lr.Link, MiB: sr.MiB, Value: value, Limit: limit, Met: value <= limit})
			}
			p, off, a, m := sr.method(methodPhaul), sr.method(methodPhaulOff), sr.method(methodCRIU), sr.method(methodManual)
			if p != nil && a != nil && a.Median.Downtime > 0 {
				add("downtime phaul/criu", p.Median.Downtime/a.Median.Downtime, 1.10)
			}
			if p != nil {
				add("frozen part of the pages", p.Median.FrozenPart, 0.05)
			}
			if p != nil && m != nil && lr.Link != "bare" && m.Median.Total > 0 {
				add("total phaul/manual", p.Median.Total/m.Median.Total, 0.85)
			}
			for _, name := range []string{methodPostcopy, methodPrePost} {
				if pc := sr.method(name); pc != nil && a != nil && a.Median.Downtime > 0 {
					add("downtime "+name+"/criu", pc.Median.Downtime/a.Median.Downtime, 0.5)
				}
			}
			if off != nil && off.Median.PageBytes > 0 {
				add("wire/raw bytes (no pre-copy)", float64(off.Median.WireBytes)/float64(off.Median.PageBytes), 0.55)
			}
		}
		if lr.Hot != nil {
			lr.Hot.medians()
			p, off := lr.Hot.method(methodPhaul), lr.Hot.method(methodPhaulOff)
			if p != nil && off != nil && off.Median.Downtime > 0 {
				v := p.Median.Downtime / off.Median.Downtime
				r.Targets = append(r.Targets, target{Name: "hot: downtime phaul/phaul-off", Link: lr.Link, MiB: lr.Hot.MiB, Value: v, Limit: 1.10, Met: v <= 1.10})
			}
		}
	}
}

func (s *sizeResult) medians() {
	for _, mr := range s.Methods {
		mr.Median = medianOf(mr.Runs)
	}
}

// medianOf takes the median of each field on its own.
func medianOf(runs []sample) sample {
	f := func(get func(sample) float64) float64 {
		v := make([]float64, len(runs))
		for i, s := range runs {
			v[i] = get(s)
		}
		return median(v)
	}
	return sample{
		Downtime:    f(func(s sample) float64 { return s.Downtime }),
		Total:       f(func(s sample) float64 { return s.Total }),
		Dump:        f(func(s sample) float64 { return s.Dump }),
		Transfer:    f(func(s sample) float64 { return s.Transfer }),
		Restore:     f(func(s sample) float64 { return s.Restore }),
		PageBytes:   int64(f(func(s sample) float64 { return float64(s.PageBytes) })),
		WireBytes:   int64(f(func(s sample) float64 { return float64(s.WireBytes) })),
		CPUSource:   f(func(s sample) float64 { return s.CPUSource }),
		CPUDest:     f(func(s sample) float64 { return s.CPUDest }),
		Overhead:    f(func(s sample) float64 { return s.Overhead }),
		Rounds:      f(func(s sample) float64 { return s.Rounds }),
		RoundWire:   int64(f(func(s sample) float64 { return float64(s.RoundWire) })),
		FrozenPart:  f(func(s sample) float64 { return s.FrozenPart }),
		StopRule:    stopRule(runs),
		ClientPause: f(func(s sample) float64 { return s.ClientPause }),
		AllPages:    f(func(s sample) float64 { return s.AllPages }),
		LazyFetched: int64(f(func(s sample) float64 { return float64(s.LazyFetched) })),
		LazyHeld:    int64(f(func(s sample) float64 { return float64(s.LazyHeld) })),
	}
}

// stopRule is the rule most runs stopped by ("" without pre-copy).
func stopRule(runs []sample) string {
	n := map[string]int{}
	best := ""
	for _, s := range runs {
		rule, _, _ := strings.Cut(s.StopRule, ":")
		n[rule]++
		if n[rule] > n[best] {
			best = rule
		}
	}
	return best
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func mib(n int64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<20)) }

// writeTable prints the medians, then the targets.
func (r *results) writeTable(w io.Writer) {
	fmt.Fprintf(w, "phaul-bench %s: %d CPUs, Linux %s, CRIU %s, phaul %s; medians of %d runs; workload dirties %d pages/s\n",
		r.Date, r.Machine.CPUs, r.Machine.Kernel, r.Machine.CRIU, r.Machine.Phaul, r.Runs, r.Dirty)
	for _, lr := range r.Links {
		fmt.Fprintf(w, "\nlink %s (one TCP stream: %.2f Gbit/s)\n", lr.Link, lr.Throughput/1e9)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "MiB\tmethod\tdowntime s\tclient pause s\ttotal s\tdump s\tcopy s\trestore s\tall pages s\tpages MiB\twire MiB\tcpu src s\tcpu dst s\toverhead s\trounds\tround wire MiB\tfrozen part\tstopped by\t")
		for _, sr := range lr.sizesAndHot() {
			for _, mr := range sr.Methods {
				fmt.Fprintln(tw, strings.Join(row(sr.MiB, mr), "\t")+"\t")
			}
		}
		tw.Flush()
	}
	fmt.Fprintln(w, "\ntargets")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "  %s\t%s\t%d MiB\t%.3f\t<= %.2f\t%s\n", t.Name, t.Link, t.MiB, t.Value, t.Limit, metStr(t.Met))
	}
	tw.Flush()
}

// row is one line of a link's table: the medians of one method at one
// size, as the text and the markdown tables show them.
func row(size int, mr *methodResult) []string {
	s := mr.Median
	f := func(v float64) string { return fmt.Sprintf("%.3f", v) }
	pre := []string{"-", "-", "-", "-"}
	if mr.Method == methodPhaul || mr.Method == methodPhaul+" hot" {
		pre = []string{fmt.Sprintf("%.0f", s.Rounds), mib(s.RoundWire), f(s.FrozenPart), s.StopRule}
	}
	pause, all := "-", "-"
	if s.ClientPause > 0 {
		pause = f(s.ClientPause)
	}
	if s.AllPages > 0 {
		all = f(s.AllPages)
	}
	return append([]string{fmt.Sprint(size), mr.Method, f(s.Downtime), pause, f(s.Total), f(s.Dump), f(s.Transfer), f(s.Restore), all,
		mib(s.PageBytes), mib(s.WireBytes),
		phaulOnly(mr.Method, s.CPUSource), phaulOnly(mr.Method, s.CPUDest), phaulOnly(mr.Method, s.Overhead)}, pre...)
}

// sizesAndHot are the link's sizes, then its hot workload (its method
// names marked "hot").
func (lr *linkResult) sizesAndHot() []*sizeResult {
	if lr.Hot == nil {
		return lr.Sizes
	}
	hot := &sizeResult{MiB: lr.Hot.MiB}
	for _, mr := range lr.Hot.Methods {
		c := *mr
		c.Method = mr.Method + " hot"
		hot.Methods = append(hot.Methods, &c)
	}
	return append(append([]*sizeResult{}, lr.Sizes...), hot)
}

func phaulOnly(method string, v float64) string {
	if !strings.HasPrefix(method, "phaul") {
		return "-"
	}
	return fmt.Sprintf("%.3f", v)
}

func metStr(met bool) string {
	if met {
		return "met"
	}
	return "NOT MET"
}

// save writes DATE.json and DATE.md into dir.
func (r *results) save(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	stamp := strings.NewReplacer(":", "", "-", "").Replace(r.Date[:16])
	base := filepath.Join(dir, stamp)
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(base+".json", append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	var md strings.Builder
	r.writeMarkdown(&md)
	if err := os.WriteFile(base+".md", []byte(md.String()), 0o644); err != nil {
		return nil, err
	}
	return []string{base + ".json", base + ".md"}, nil
}

func (r *results) writeMarkdown(w io.Writer) {
	fmt.Fprintf(w, "# phaul-bench, %s\n\n", r.Date)
	fmt.Fprintf(w, "Machine: %d CPUs, %d MiB, Linux %s, CRIU %s, phaul %s. Both hosts are network namespaces of this one machine: they share its CPUs.\n\n",
		r.Machine.CPUs, r.Machine.MemMiB, r.Machine.Kernel, r.Machine.CRIU, r.Machine.Phaul)
	fmt.Fprintf(w, "Medians of %d runs; the workload is half random, half compressible, and dirties %d pages/s (the hot one %d pages/s). Elapsed: %s. Methods: **phaul** (`phaul migrate`, pre-copy as it comes), **phaul-off** (`--precopy=off`), **phaul-post** (`--postcopy --precopy=off`: restored before the memory crossed; all pages is the restore until the last page arrived, after which the memory is verified), **phaul-prepost** (`--postcopy --precopy=on`: pre-copy rounds first, then only the pages changed since the last round follow the restore from the source), **criu** (CRIU alone: dump to tmpfs and restore on one host, the limit of this machine), **manual** (`criu dump` to a directory, tar over TCP, `criu restore`).\n\n",
		r.Runs, r.Dirty, r.Hot, r.Elapsed)
	for _, lr := range r.Links {
		fmt.Fprintf(w, "## Link: %s (one TCP stream: %.2f Gbit/s)\n\n", lr.Link, lr.Throughput/1e9)
		fmt.Fprintln(w, "| MiB | method | downtime s | client pause s | total s | dump s | copy s | restore s | all pages s | pages MiB | wire MiB | phaul cpu src s | phaul cpu dst s | overhead s | rounds | round wire MiB | frozen part | stopped by |")
		fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
		for _, sr := range lr.sizesAndHot() {
			for _, mr := range sr.Methods {
				fmt.Fprintln(w, "| "+strings.Join(row(sr.MiB, mr), " | ")+" |")
			}
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "## Targets\n\n| target | link | MiB | value | limit | |\n|---|---|---:|---:|---:|---|")
	for _, t := range r.Targets {
		fmt.Fprintf(w, "| %s | %s | %d | %.3f | <= %.2f | %s |\n", t.Name, t.Link, t.MiB, t.Value, t.Limit, metStr(t.Met))
	}
	fmt.Fprintln(w, "\nphaul's downtime runs from CRIU's pre-dump notification to the destination's confirmation that the tree runs; its overhead is that downtime less CRIU's dump (pages streamed included) and CRIU's restore. The frozen part is the share of the tree's pages that crossed while it was frozen (the others the dump referred to in the rounds' images); pages and wire MiB are the dump's, round wire MiB the rounds'. The baselines' downtime is the wall time of their commands. See bench/results/README.md for what bounds each number.")
}

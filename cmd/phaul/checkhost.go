package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/cgroups"
	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/postcopy"
)

var checkHostCmd = &cli.Command{
	Name:    "check-host",
	Summary: "show what this host offers for migration: CRIU, kernel, breakpoints, features, cgroups",
	Exit: `0  CRIU is usable here
1  it is not (missing, or too old for the kernel: the message says what to install)
2  bad command line`,
	Flags: func(fs *pflag.FlagSet) {
		fs.Bool("json", false, "print one JSON object")
		fs.Bool("no-lazy-test", false, "skip the lazy-pages self-test (a small process of phaul's own dumped and restored with lazy pages, about half a second)")
	},
	Run: runCheckHost,
}

// lazyLimits is what decides whether CRIU's own lazy page server could
// work here (phaul's does not need it).
type lazyLimits struct {
	CapSysResource  bool `json:"cap_sys_resource"`
	PipeMaxSize     int  `json:"pipe_max_size"`
	CRIUTeePipe     int  `json:"criu_tee_pipe"`
	CRIUServerWorks bool `json:"criu_server_works"`
}

// hostReport is the JSON form of check-host (stable field names).
type hostReport struct {
	CRIUPath       string          `json:"criu_path"`
	CRIUVersion    string          `json:"criu_version"`
	Kernel         string          `json:"kernel"`
	MinCRIU        string          `json:"min_criu_for_kernel"`
	Breakpoints    bool            `json:"hw_breakpoints"`
	FaultInjection string          `json:"criu_fault_injection,omitempty"`
	MemTrack       bool            `json:"mem_track"`
	UFFD           bool            `json:"uffd"`
	LazyPages      bool            `json:"lazy_pages"`
	LazyDetail     string          `json:"lazy_pages_detail"`
	LazyLimits     lazyLimits      `json:"lazy_limits"`
	PidfdStore     bool            `json:"pidfd_store"`
	Cgroups        *cgroups.Layout `json:"cgroups"`
}

func runCheckHost(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
	if len(args) != 0 {
		return cli.Usagef("check-host takes no arguments")
	}
	asJSON, _ := fs.GetBool("json")
	c, h, err := criu.New(ctx, criu.Options{Logger: env.Logger, ProbeBreakpoints: true})
	if err != nil {
		return fmt.Errorf("check-host: %w", err)
	}
	feat, err := c.Features(ctx)
	if err != nil {
		return fmt.Errorf("check-host: %w", err)
	}
	layout, err := cgroups.Detect()
	if err != nil {
		return fmt.Errorf("check-host: %w", err)
	}
	need, _ := criu.MinVersion(h.Kernel)
	r := hostReport{
		CRIUPath: h.Path, CRIUVersion: h.Version.String(), Kernel: h.Kernel.String(),
		MinCRIU: fmt.Sprintf("%d.%d", need.Major, need.Minor), Breakpoints: h.Breakpoints,
		FaultInjection: h.FaultInjection, MemTrack: feat.MemTrack, UFFD: feat.LazyPages,
		PidfdStore: feat.PidfdStore, Cgroups: layout,
	}
	noTest, _ := fs.GetBool("no-lazy-test")
	if err := r.lazy(ctx, c, !noTest); err != nil {
		return fmt.Errorf("check-host: %w", err)
	}
	if asJSON {
		return cli.WriteJSON(env.Stdout, r)
	}
	w := env.Stdout
	fmt.Fprintf(w, "criu          %s at %s\n", r.CRIUVersion, r.CRIUPath)
	fmt.Fprintf(w, "kernel        %s (needs criu >= %s: ok)\n", r.Kernel, r.MinCRIU)
	bp := "delivered"
	if !r.Breakpoints {
		bp = "NOT delivered"
		if r.FaultInjection != "" {
			bp += " (CRIU runs with CRIU_FAULT=" + r.FaultInjection + ")"
		} else {
			bp += " (CRIU >= 4.2 falls back by itself)"
		}
	}
	fmt.Fprintf(w, "breakpoints   %s\n", bp)
	fmt.Fprintf(w, "mem_track     %s\n", yesNo(r.MemTrack, "soft-dirty tracking", "no soft-dirty tracking: phaul's pre-copy compares pages itself"))
	fmt.Fprintf(w, "lazy_pages    %s\n", yesNo(r.LazyPages, r.LazyDetail, r.LazyDetail))
	fmt.Fprintf(w, "              %s\n", postcopy.Limits{CapSysResource: r.LazyLimits.CapSysResource, PipeMaxSize: r.LazyLimits.PipeMaxSize, CRIUTeePipe: r.LazyLimits.CRIUTeePipe})
	fmt.Fprintf(w, "cgroups       %s\n", describeLayout(layout))
	return nil
}

// lazy fills in what post-copy needs: userfaultfd (CRIU's feature
// check), the limits of CRIU's own lazy page server, and, when test is
// set, whether a real lazy restore works: lazy_pages says yes only then.
func (r *hostReport) lazy(ctx context.Context, c *criu.Client, test bool) error {
	l, err := postcopy.ReadLimits()
	if err != nil {
		return err
	}
	r.LazyLimits = lazyLimits{CapSysResource: l.CapSysResource, PipeMaxSize: l.PipeMaxSize, CRIUTeePipe: l.CRIUTeePipe, CRIUServerWorks: l.CRIUServerWorks()}
	switch {
	case !r.UFFD:
		r.LazyDetail = "CRIU finds no non-cooperative userfaultfd on this kernel: post-copy impossible"
		return nil
	case !test:
		r.LazyDetail = "userfaultfd available; not tested (--no-lazy-test)"
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "phaul-lazy-test-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	res, err := postcopy.SelfTest(ctx, c, dir, exe)
	if err != nil {
		return err
	}
	r.LazyPages, r.LazyDetail = res.Worked, res.String()
	return nil
}

func yesNo(b bool, yes, no string) string {
	if b {
		return "yes (" + yes + ")"
	}
	return "no (" + no + ")"
}

func describeLayout(l *cgroups.Layout) string {
	var parts []string
	if len(l.V1) > 0 {
		var ctrls []string
		for k := range l.V1 {
			ctrls = append(ctrls, k)
		}
		sort.Strings(ctrls)
		parts = append(parts, "v1: "+strings.Join(ctrls, " "))
	}
	if l.V2 != "" {
		v2 := "v2 at " + l.V2
		if len(l.V2Controllers) > 0 {
			v2 += ": " + strings.Join(l.V2Controllers, " ")
		} else {
			v2 += " (no controllers)"
		}
		parts = append(parts, v2)
	}
	return l.Kind + " (" + strings.Join(parts, "; ") + ")"
}

package migrate

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/phaul/phaul/precheck"
)

// Report is what one migration did, as `phaul migrate` prints it. The
// JSON field names are stable.
type Report struct {
	ID          string `json:"id"`
	Pid         int    `json:"pid"`         // the tree's root on the source
	Destination string `json:"destination"` // HOST:PORT
	DestPid     int    `json:"dest_pid"`    // the tree's root on the destination
	Committed   bool   `json:"committed"`   // the source copy is gone
	Running     bool   `json:"running"`     // the destination confirmed the tree runs
	ShellJob    bool   `json:"shell_job"`   // dumped and restored as a shell job
	// ShellJobReason says why phaul chose shell-job mode itself ("" when
	// it was asked for, or not used).
	ShellJobReason string `json:"shell_job_reason,omitempty"`
	// CRIUOptions are the CRIU options phaul chose itself for the tree's
	// state, each as "option: why".
	CRIUOptions []string `json:"criu_options,omitempty"`
	CgroupRoots []string `json:"cgroup_roots"` // as passed to CRIU on restore
	// Freeze is how the source tree was frozen: "cgroup" (it was alone in
	// its freezer cgroup) or "ptrace" (seized task by task).
	Freeze string `json:"freeze,omitempty"`
	// Hold is how the destination kept the restored tree from running
	// until the commit: "frozen" (in a freezer cgroup; the tree sees
	// nothing) or "stopped" (SIGSTOP and SIGCONT, which a parent sees).
	Hold string `json:"hold,omitempty"`
	// Cgroups are the restored root's cgroups on the destination
	// ("memory:/phaul/phaul-ID"; "" controllers for v2).
	Cgroups []string `json:"cgroups,omitempty"`
	// LimitsApplied are the cgroup v2 limits phaul copied itself (CRIU
	// does not carry them): "memory.max=104857600".
	LimitsApplied []string `json:"limits_applied,omitempty"`
	// TTYLogs are where the output of the tree's terminals goes on the
	// destination (--tty): a log in the migration's directory, a file,
	// or /dev/null; one per terminal from outside the tree.
	TTYLogs []string `json:"tty_logs,omitempty"`

	Verdicts []precheck.Verdict `json:"verdicts"` // of the checks, one per check

	Connect  Duration `json:"connect"`  // TCP, TLS, Hello
	Checks   Duration `json:"checks"`   // the checks, then Prepare until Ready
	Dump     Duration `json:"dump"`     // freeze until CRIU's post-dump (pages sent)
	Transfer Duration `json:"transfer"` // post-dump until the images were sent
	Restore  Duration `json:"restore"`  // CRIU restore on the destination
	Downtime Duration `json:"downtime"` // frozen on the source until running on the destination
	Total    Duration `json:"total"`
	// CPU is the time this process spent on the CPU during the migration
	// (user and system; CRIU, a child, is not included).
	CPU Duration `json:"cpu"`

	// Precopy says whether memory was copied before the freeze: "rounds"
	// (the dump referred to them), "dropped" (rounds ran, but the tree
	// rewrote its memory faster than they carried it: the dump sent
	// everything), or "off: why".
	Precopy string `json:"precopy"`
	// Rounds are the pre-copy rounds, in order; StopRule is the rule that
	// ended them.
	Rounds   []RoundReport `json:"rounds,omitempty"`
	StopRule string        `json:"stop_rule,omitempty"`
	// Referenced are the pages the dump did not send because the
	// destination held them already from the rounds.
	Referenced int64 `json:"referenced_pages"`

	PageBytes  int64 `json:"page_bytes"`  // page-server traffic as CRIU wrote it (the dump, while frozen)
	WireBytes  int64 `json:"wire_bytes"`  // what of it crossed the network, compressed
	ImageBytes int64 `json:"image_bytes"` // the other image files
	ImageFiles int   `json:"image_files"`
	// Carried are the files of the tree sent after the dump, which the
	// destination lacked or had in another version (--files=carry).
	Carried CarriedReport `json:"carried"`
	// Addresses are the addresses that moved with the tree
	// (--move-address): "10.0.0.5/24: eth0 -> eth1".
	Addresses []string `json:"addresses,omitempty"`
	// Connections are the established TCP connections the tree had when
	// its addresses moved: CRIU carried them (tcp_established).
	Connections int `json:"connections,omitempty"`

	// Post-copy (--postcopy): the destination's copy ran before its
	// memory had crossed. EagerPages crossed before its restore;
	// LazyPages were left to follow: LazyFetched came from the source,
	// LazyHeld (after pre-copy rounds) the destination held unchanged
	// and served itself, once the source had said which (what the copy
	// asked for before came from the source); AllPagesAfter is the restore
	// until the last page, the window in which the copy depended on the
	// source.
	Postcopy      bool     `json:"postcopy,omitempty"`
	EagerPages    int64    `json:"eager_pages,omitempty"`
	LazyPages     int64    `json:"lazy_pages,omitempty"`
	LazyHeld      int64    `json:"lazy_held,omitempty"`
	LazyFetched   int64    `json:"lazy_fetched,omitempty"`
	AllPagesAfter Duration `json:"all_pages_after,omitempty"`
}

// CarriedReport counts the files carried.
type CarriedReport struct {
	Files    int      `json:"files"`
	Bytes    int64    `json:"bytes"`              // their content that crossed (for a tail, only the tail)
	Paths    []string `json:"paths,omitempty"`    // every file carried
	Tails    []string `json:"tails,omitempty"`    // those of them of which only the tail crossed
	Replaced []string `json:"replaced,omitempty"` // those that replaced another version on the destination
}

// RoundReport is one pre-copy round.
type RoundReport struct {
	Round      int      `json:"round"`
	Pages      int64    `json:"pages"`              // the tree's pages read
	Sent       int64    `json:"sent"`               // of them, sent: new or changed since the round before
	Referenced int64    `json:"referenced"`         // unchanged: sent as a reference
	LeftOut    int64    `json:"left_out,omitempty"` // changed, but no room left on the destination: for the dump
	WireBytes  int64    `json:"wire_bytes"`         // on the network, compressed
	Duration   Duration `json:"duration"`
	HeldBytes  int64    `json:"held_bytes"` // what the rounds' pages occupy on the destination afterwards
}

// Duration marshals as seconds (a JSON number).
type Duration time.Duration

// MarshalJSON writes seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("%.6f", time.Duration(d).Seconds())), nil
}

func (d Duration) String() string { return time.Duration(d).Round(time.Millisecond).String() }

// WriteText prints the report for people.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "migrated pid %d to %s as pid %d (migration %s)\n", r.Pid, r.Destination, r.DestPid, r.ID)
	for _, c := range r.CRIUOptions {
		fmt.Fprintf(w, "  with CRIU's %s\n", c)
	}
	if r.ShellJob {
		if r.ShellJobReason != "" {
			fmt.Fprintf(w, "  as a shell job: %s\n", r.ShellJobReason)
		} else {
			fmt.Fprintln(w, "  as a shell job")
		}
	}
	if r.Freeze != "" {
		fmt.Fprintf(w, "  frozen by  %s\n", r.Freeze)
	}
	if r.Hold != "" {
		fmt.Fprintf(w, "  held       %s until the commit\n", r.Hold)
	}
	if len(r.Cgroups) > 0 {
		fmt.Fprintf(w, "  cgroups    %s\n", strings.Join(r.Cgroups, " "))
	} else if len(r.CgroupRoots) > 0 {
		fmt.Fprintf(w, "  cgroups    %s\n", strings.Join(r.CgroupRoots, " "))
	}
	if len(r.LimitsApplied) > 0 {
		fmt.Fprintf(w, "  limits     %s (cgroup v2, set by phaul)\n", strings.Join(r.LimitsApplied, " "))
	}
	for _, l := range r.TTYLogs {
		fmt.Fprintf(w, "  terminal   output to %s on the destination\n", l)
	}
	for _, v := range r.Verdicts {
		if v.Result != "pass" {
			fmt.Fprintf(w, "  check      %s: %s: %s\n", v.Check, v.Result, v.Detail)
		}
	}
	r.writePrecopy(w)
	if r.Postcopy {
		held := ""
		if r.LazyHeld > 0 {
			held = fmt.Sprintf("%d served on the destination from the rounds, ", r.LazyHeld)
		}
		fmt.Fprintf(w, "  post-copy  %d pages before the restore, %d after it (%s%d fetched), the last %v after the restore\n",
			r.EagerPages, r.LazyPages, held, r.LazyFetched, r.AllPagesAfter)
	}
	fmt.Fprintf(w, "  connect    %v\n  checks     %v\n  dump       %v\n  transfer   %v\n  restore    %v\n  downtime   %v\n  total      %v\n",
		r.Connect, r.Checks, r.Dump, r.Transfer, r.Restore, r.Downtime, r.Total)
	ratio := 0.0
	if r.PageBytes > 0 {
		ratio = float64(r.WireBytes) / float64(r.PageBytes)
	}
	fmt.Fprintf(w, "  pages      %s raw, %s on the wire (%.2f)\n  images     %d files, %s\n",
		FormatBytes(r.PageBytes), FormatBytes(r.WireBytes), ratio, r.ImageFiles, FormatBytes(r.ImageBytes))
	for _, a := range r.Addresses {
		fmt.Fprintf(w, "  address    %s\n", a)
	}
	if r.Connections > 0 {
		fmt.Fprintf(w, "  connections %d carried\n", r.Connections)
	}
	if c := r.Carried; c.Files > 0 {
		fmt.Fprintf(w, "  carried    %d files, %s (%d tails, %d replaced): %s\n", c.Files, FormatBytes(c.Bytes), len(c.Tails), len(c.Replaced), strings.Join(c.Paths, " "))
	}
}

func (r *Report) writePrecopy(w io.Writer) {
	if len(r.Rounds) == 0 {
		if r.Precopy != "" {
			fmt.Fprintf(w, "  pre-copy   %s\n", r.Precopy)
		}
		return
	}
	for _, rd := range r.Rounds {
		fmt.Fprintf(w, "  round %-4d %d pages: %d sent, %d unchanged; %s on the wire in %v\n",
			rd.Round, rd.Pages, rd.Sent, rd.Referenced, FormatBytes(rd.WireBytes), rd.Duration)
	}
	fmt.Fprintf(w, "  pre-copy   %s: stopped by %s; %d pages not sent while frozen\n", r.Precopy, r.StopRule, r.Referenced)
}

// FormatBytes writes n in B, KiB, MiB or GiB.
func FormatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

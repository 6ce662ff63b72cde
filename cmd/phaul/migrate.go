package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/internal/tty"
	"github.com/phaul/phaul/migrate"
	"github.com/phaul/phaul/netmove"
	"github.com/phaul/phaul/precheck"
	"github.com/phaul/phaul/precopy"
	"github.com/phaul/phaul/transport"
)

// Exit statuses of phaul migrate beyond cli's.
const (
	// exitInDoubt: the source copy is gone and the destination did not
	// confirm that its copy runs.
	exitInDoubt = 3
	// exitPermanent: the checks say the migration cannot work.
	exitPermanent = 4
	// exitTransient: the checks say it cannot work now; retry later.
	exitTransient = 5
)

const migrateExit = `0  the workload runs on the destination and not on the source
1  the migration failed; the workload still runs on the source
2  bad command line
3  in doubt: the source copy is gone but the destination did not confirm that its copy runs (it keeps it stopped: phaul status lists it)
4  the checks failed for good (nothing was frozen): see the failed checks
5  the checks failed for now (nothing was frozen): retry later, or use --retry-transient N`

// tlsFlags are the flags of the commands that talk to a phaul-service.
func tlsFlags(fs *pflag.FlagSet) {
	fs.String("tls-dir", defaultTLSDir, "directory made by `phaul certs` (uses ca.pem, client.pem, client-key.pem)")
	fs.String("server-name", "", "name to verify in the service's certificate (default "+transport.TLSServerName+")")
}

// clientTLS is the TLS configuration tlsFlags ask for.
func clientTLS(fs *pflag.FlagSet) (*tls.Config, error) {
	dir, _ := fs.GetString("tls-dir")
	name, _ := fs.GetString("server-name")
	return transport.ClientTLS(dir, name)
}

// checkFlags are the flags migrate and check share.
func checkFlags(fs *pflag.FlagSet) {
	tlsFlags(fs)
	fs.Bool("json", false, "print the report as one JSON object")
	fs.Bool("shell-job", false, "force CRIU's shell-job mode (phaul turns it on by itself when a task's session or process group leader is outside the tree)")
	fs.Bool("tcp-established", false, "checkpoint established TCP connections (the peer must reach the same IP afterwards)")
	fs.StringSlice("move-address", nil, "an address that leaves with the tree (IP[/PREFIX], repeatable; auto: every address its sockets are bound to but the one phaul connects from): taken off this host after the dump, put on the destination's interface on its subnet and announced there before the restore; its TCP connections are carried (tcp_established)")
	fs.Bool("postcopy", false, "post-copy: restore the tree on the destination before its memory has crossed and let it run at once; its pages follow on demand, while the source keeps its tree stopped and a snapshot until the last has arrived. If the link is cut before that, the destination's copy dies when its lease ends and the source's resumes from the freeze: what the copy did meanwhile is lost. Not yet with --move-address or established TCP connections")
	fs.String("cgroup-root", "", "restore in exactly this cgroup on the destination (default: a cgroup of its own below the service's --cgroup-root)")
	fs.String("manage-cgroups", "", "CRIU's cgroup mode on the destination: ignore, none, props, soft, full, strict (default: the service's --manage-cgroups)")
	fs.String("tty", "pty", "where the tree's terminals from outside it (an ssh session's pty, a console) lead on the destination: pty (a new pty whose output the service logs in the migration's directory), null, or file:PATH (a file on the destination)")
	fs.StringSlice("skip-check", nil, "skip a check (repeatable): "+strings.Join(precheck.Names, ", "))
	fs.String("cpu-cap", "fpu,cpu,ins", "what CRIU's CPU check compares: fpu, cpu, ins (comma separated), or none")
	fs.Int("retry-transient", 0, "when only transient checks fail, retry this many times (5 s apart)")
	fs.Duration("timeout", migrate.DefaultTimeout, "longest wait for the destination at each step")
	fs.String("files", "carry", "the tree's files the destination lacks or has in another version: carry (sent after the dump, while the tree is frozen, and put back as they were if the migration fails) or check (the files check fails on them)")
	fs.String("carry-limit", "1GiB", "carry at most this many bytes of files (B, KiB, MiB, GiB; 0 for no bound)")
	fs.StringSlice("replace-files", nil, "replace a file the destination has in another version with the source's (bare: any but a file of the destination's system, under /usr, /lib, /etc, /bin, /sbin, /boot; =PATH,...: these files only, system files included)")
	fs.Lookup("replace-files").NoOptDefVal = replaceAny
}

// replaceAny is the value of a bare --replace-files.
const replaceAny = "*"

// parseBytes reads a size such as 1GiB, 512MiB, 64K or 1000 (bytes).
func parseBytes(s string) (uint64, error) {
	units := []struct {
		suffix string
		mult   uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	mult := uint64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil || n > ^uint64(0)/mult {
		return 0, fmt.Errorf("%q: want a size such as 1GiB, 512MiB or 1000000", s)
	}
	return n * mult, nil
}

// parseCPUCap turns --cpu-cap into CRIU's bits.
func parseCPUCap(s string) (uint32, error) {
	var caps uint32
	for _, p := range strings.Split(s, ",") {
		switch strings.TrimSpace(p) {
		case "fpu":
			caps |= criu.CPUCapFPU
		case "cpu":
			caps |= criu.CPUCapCPU
		case "ins":
			caps |= criu.CPUCapINS
		case "none":
			caps |= criu.CPUCapNone
		case "all":
			caps |= criu.CPUCapAll
		default:
			return 0, fmt.Errorf("--cpu-cap: unknown %q (want fpu, cpu, ins, all or none)", p)
		}
	}
	return caps, nil
}

// fileOptions reads --files, --carry-limit and --replace-files into o.
func fileOptions(fs *pflag.FlagSet, o *migrate.Options) error {
	o.Files, _ = fs.GetString("files")
	if o.Files != "carry" && o.Files != "check" {
		return cli.Usagef("--files: %q: want carry or check", o.Files)
	}
	limit, _ := fs.GetString("carry-limit")
	var err error
	if o.CarryLimit, err = parseBytes(limit); err != nil {
		return cli.Usagef("--carry-limit: %v", err)
	}
	paths, _ := fs.GetStringSlice("replace-files")
	for _, p := range paths {
		switch {
		case p == replaceAny:
			o.ReplaceFiles = true
		case !filepath.IsAbs(p) || filepath.Clean(p) != p:
			return cli.Usagef("--replace-files: %q: want absolute paths (or no value: any file but the destination's system files)", p)
		default:
			o.ReplacePaths = append(o.ReplacePaths, p)
		}
	}
	return nil
}

// options builds migrate.Options from the shared flags.
func options(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) (migrate.Options, error) {
	if len(args) != 2 {
		return migrate.Options{}, cli.Usagef("%s needs PID and HOST:PORT", fs.Name())
	}
	pid, err := strconv.Atoi(args[0])
	if err != nil || pid <= 0 {
		return migrate.Options{}, cli.Usagef("bad PID %q", args[0])
	}
	// Refuse what can never be migrated before anything else.
	if err := proc.ValidateTarget(pid); err != nil {
		return migrate.Options{}, err
	}
	o := migrate.Options{Pid: pid, Addr: args[1], Logger: env.Logger}
	o.ShellJob, _ = fs.GetBool("shell-job")
	o.TCPEstablished, _ = fs.GetBool("tcp-established")
	o.MoveAddresses, _ = fs.GetStringSlice("move-address")
	o.Postcopy, _ = fs.GetBool("postcopy")
	for _, a := range o.MoveAddresses {
		if _, err := netmove.ParsePrefix(a); err != nil && a != "auto" {
			return o, cli.Usagef("--move-address: %v (or auto)", err)
		}
	}
	o.CgroupRoot, _ = fs.GetString("cgroup-root")
	o.ManageCgroups, _ = fs.GetString("manage-cgroups")
	if o.ManageCgroups != "" {
		if _, err := criu.ParseCgroupMode(o.ManageCgroups); err != nil {
			return o, cli.Usagef("--manage-cgroups: %v", err)
		}
	}
	o.TTY, _ = fs.GetString("tty")
	if _, err := tty.ParseMode(o.TTY); err != nil {
		return o, cli.Usagef("%v", err)
	}
	o.Timeout, _ = fs.GetDuration("timeout")
	o.Skip, _ = fs.GetStringSlice("skip-check")
	o.RetryTransient, _ = fs.GetInt("retry-transient")
	for _, n := range o.Skip {
		if !precheck.ValidName(n) {
			return o, cli.Usagef("--skip-check: unknown check %q (the checks are %s)", n, strings.Join(precheck.Names, ", "))
		}
	}
	capStr, _ := fs.GetString("cpu-cap")
	if o.CPUCap, err = parseCPUCap(capStr); err != nil {
		return o, cli.Usagef("%v", err)
	}
	if err := fileOptions(fs, &o); err != nil {
		return o, err
	}
	if o.TLS, err = clientTLS(fs); err != nil {
		return o, err
	}
	c, host, err := criu.New(ctx, criu.Options{Logger: env.Logger})
	if err != nil {
		return o, err
	}
	o.CRIU, o.CRIUVersion = c, host.Version.String()
	return o, nil
}

// exitFor maps a migration's error to phaul's exit status.
func exitFor(err error) int {
	var pe *precheck.Error
	switch {
	case errors.As(err, &pe) && pe.Outcome == precheck.Transient:
		return exitTransient
	case errors.As(err, &pe):
		return exitPermanent
	case errors.Is(err, migrate.ErrInDoubt):
		return exitInDoubt
	}
	return cli.ExitFailure
}

const defaultTLSDir = "/etc/phaul/tls"

var migrateCmd = &cli.Command{
	Name:    "migrate",
	Args:    "PID HOST:PORT",
	Summary: "move the process tree rooted at PID to the phaul-service at HOST:PORT",
	Help: `The two sides first check that the move can work (the checks of
` + "`phaul check`" + `). Then, while the tree runs, its memory is copied to the
destination in rounds (pre-copy: the first sends every page, the next ones
what changed since, found by comparing keyed hashes), until what changes
would cross the link within --max-downtime, or the rounds stop converging.
Then the tree is frozen and dumped with CRIU, which sends only the pages
that changed since the last round (compressed); the destination restores
it. The source copy
is destroyed only once the destination has restored the tree; any failure
before that leaves the workload running on the source, unchanged.

On a terminal, a progress bar on stderr shows the phase and, while the
memory streams, the bytes sent against the tree's resident memory, the
rate, the time left and the bytes on the wire; not with --json, --quiet
or -v, nor when stderr is not a terminal. Then the report goes to stdout
(--json: one object, described in docs/json.md).`,
	Exit: migrateExit,
	Flags: func(fs *pflag.FlagSet) {
		checkFlags(fs)
		fs.String("work-dir", "/var/tmp/phaul", "where the source writes its (small) image files and CRIU's log")
		fs.BoolP("quiet", "q", false, "print nothing on success (no report, no progress bar); errors still go to stderr")
		fs.String("precopy", "auto", "copy the memory while the tree runs, in rounds, so that the freeze sends only what changed: auto (unless the tree is smaller than 64 MiB), on, or off (every page while frozen). With --postcopy the rounds run before the freeze just the same, and then only the pages changed since the last round follow the restore from the source")
		fs.Duration("max-downtime", precopy.DefaultMaxDowntime, "pre-copy's stop rule: end the rounds once what changed in the last one would cross the link in this time")
		fs.Duration("lease", migrate.DefaultLease, "with --postcopy: how long the destination's copy may run without hearing from the source (the source waits this and 1s more before resuming its own tree after a failure)")
	},
	Run: runMigrate,
}

func runMigrate(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
	o, err := options(ctx, env, fs, args)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	o.WorkDir, _ = fs.GetString("work-dir")
	o.Precopy, _ = fs.GetString("precopy")
	switch o.Precopy {
	case "auto", "on", "off":
	default:
		return cli.Usagef("--precopy: %q: want auto, on or off", o.Precopy)
	}
	o.MaxDowntime, _ = fs.GetDuration("max-downtime")
	if o.MaxDowntime <= 0 {
		return cli.Usagef("--max-downtime: %v: want a positive duration", o.MaxDowntime)
	}
	o.Lease, _ = fs.GetDuration("lease")
	if o.Lease < 500*time.Millisecond {
		return cli.Usagef("--lease: %v: want at least 500ms", o.Lease)
	}
	asJSON, _ := fs.GetBool("json")
	quiet, _ := fs.GetBool("quiet")
	start := time.Now()
	stopBar := func() {}
	if !asJSON && !quiet && env.Verbose == 0 && cli.IsTerminal(env.Stderr) {
		o.Progress = &migrate.Progress{}
		stopBar = startProgress(env.Stderr, o.Progress)
	}
	report, err := migrate.Migrate(ctx, o)
	stopBar()
	if quiet && err == nil {
		return nil
	}
	if asJSON {
		if werr := writeJSONReport(env, report, err); werr != nil {
			return werr
		}
	} else if err == nil {
		report.WriteText(env.Stdout)
	} else if report != nil {
		printFailedChecks(env, report)
	}
	if err != nil {
		return &cli.ExitError{Code: exitFor(err), Err: fmt.Errorf("migrate: %w (after %v)", err, time.Since(start).Round(time.Millisecond))}
	}
	return nil
}

// migrateJSON is what `phaul migrate --json` prints
// (docs/json/migrate.schema.json).
type migrateJSON struct {
	*migrate.Report
	Outcome       string `json:"outcome"`
	SourceRunning bool   `json:"source_running"`
	Error         string `json:"error,omitempty"`
	ErrorPhase    string `json:"error_phase,omitempty"`
}

func writeJSONReport(env *cli.Env, report *migrate.Report, err error) error {
	out := migrateJSON{Report: report, Outcome: outcomeFor(err)}
	if out.Report == nil {
		out.Report = &migrate.Report{}
	}
	if out.CgroupRoots == nil {
		out.CgroupRoots = []string{}
	}
	if out.Verdicts == nil {
		out.Verdicts = []precheck.Verdict{}
	}
	var me *migrate.Error
	if err != nil {
		out.Error = err.Error()
		out.SourceRunning = errors.As(err, &me) && me.SourceRunning
		if me != nil {
			out.ErrorPhase = me.Phase
		}
	}
	return cli.WriteJSON(env.Stdout, out)
}

// outcomeFor names the outcome of a migration or a check in --json.
func outcomeFor(err error) string {
	if err == nil {
		return "ok"
	}
	switch exitFor(err) {
	case exitPermanent:
		return "permanent"
	case exitTransient:
		return "transient"
	case exitInDoubt:
		return "in-doubt"
	}
	return "failed"
}

func printFailedChecks(env *cli.Env, r *migrate.Report) {
	for _, v := range r.Verdicts {
		if v.Result == "fail" {
			fmt.Fprintln(env.Stdout, verdictLine(v))
		}
	}
}

// Package cli holds what phaul's commands share: subcommand dispatch,
// common flags, logging setup, JSON output and exit statuses.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

// Version is phaul's version, set at build time with
// -ldflags "-X github.com/phaul/phaul/internal/cli.Version=...".
var Version = ""

// PhaulVersion returns Version, or the VCS revision the binary was built
// from, or "devel".
func PhaulVersion() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			return "devel-" + rev + dirty
		}
	}
	return "devel"
}

// Exit statuses shared by phaul's commands.
const (
	ExitOK      = 0
	ExitFailure = 1 // the operation failed
	ExitUsage   = 2 // bad command line
)

// UsageError is a bad command line; it exits with ExitUsage.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef returns a *UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// ExitError carries a specific exit status.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode maps an error to the process exit status.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ue *UsageError
	if errors.As(err, &ue) || errors.Is(err, pflag.ErrHelp) {
		return ExitUsage
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return ExitFailure
}

// Env is what a command runs with.
type Env struct {
	Stdout, Stderr io.Writer
	Logger         *slog.Logger
	Verbose        int // how many -v
}

// Command is one subcommand.
type Command struct {
	Name    string
	Args    string // synopsis of the arguments, for help
	Summary string
	Help    string // more text after the flags in `--help`
	// Exit lists the command's exit statuses for `--help`, one per line
	// ("0  the tree runs on the destination"); every command has it.
	Exit string
	// Flags adds the command's flags; Run receives the positional args.
	Flags func(fs *pflag.FlagSet)
	Run   func(ctx context.Context, env *Env, fs *pflag.FlagSet, args []string) error
}

// Main dispatches args (without the program name) to one of cmds.
func Main(ctx context.Context, prog, about string, cmds []*Command, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			return Main(ctx, prog, about, cmds, []string{args[1], "--help"}, stdout, stderr)
		}
		printUsage(stdout, prog, about, cmds)
		if len(args) == 0 {
			return Usagef("%s: no command given", prog)
		}
		return nil
	}
	var cmd *Command
	for _, c := range cmds {
		if c.Name == args[0] {
			cmd = c
		}
	}
	if cmd == nil {
		return Usagef("%s: unknown command %q (see `%s help`)", prog, args[0], prog)
	}
	fs := CommandFlags(prog, cmd)
	fs.SetOutput(stderr)
	common := commonFlags()
	fs.AddFlagSet(common)
	fs.Usage = func() { WriteHelp(stdout, prog, cmd) }
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return Usagef("%s %s: %v", prog, cmd.Name, err)
	}
	v, _ := fs.GetCount("verbose")
	logFormat, _ := fs.GetString("log-format")
	level := slog.LevelWarn
	switch {
	case v >= 2:
		level = slog.LevelDebug
	case v == 1:
		level = slog.LevelInfo
	}
	log, err := NewLogger(stderr, level, logFormat)
	if err != nil {
		return Usagef("%s %s: --log-format: %v", prog, cmd.Name, err)
	}
	env := &Env{Stdout: stdout, Stderr: stderr, Logger: log, Verbose: v}
	return cmd.Run(ctx, env, fs, fs.Args())
}

// CommandFlags returns a FlagSet with cmd's own flags (not the common
// ones).
func CommandFlags(prog string, cmd *Command) *pflag.FlagSet {
	fs := pflag.NewFlagSet(prog+" "+cmd.Name, pflag.ContinueOnError)
	fs.SortFlags = false
	if cmd.Flags != nil {
		cmd.Flags(fs)
	}
	return fs
}

// commonFlags are the flags of every command.
func commonFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("common", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.CountP("verbose", "v", "log progress to stderr (-v: phases, -vv: debug)")
	fs.String("log-format", "auto", "log format on stderr: text, json, or auto (json when stderr is the journal, text otherwise)")
	return fs
}

// CommonFlagNames are the long names of the flags every command has.
func CommonFlagNames() []string { return []string{"verbose", "log-format"} }

// WriteHelp writes cmd's `--help`: synopsis, summary, its flags, the
// common flags, more text, and its exit statuses.
func WriteHelp(w io.Writer, prog string, cmd *Command) {
	args := ""
	if cmd.Args != "" {
		args = " " + cmd.Args
	}
	fmt.Fprintf(w, "Usage: %s %s [flags]%s\n\n%s\n", prog, cmd.Name, args, cmd.Summary)
	if own := CommandFlags(prog, cmd).FlagUsages(); own != "" {
		fmt.Fprintf(w, "\nFlags:\n%s", own)
	}
	fmt.Fprintf(w, "\nCommon flags:\n%s", commonFlags().FlagUsages())
	if cmd.Help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.Help))
	}
	if cmd.Exit != "" {
		fmt.Fprintf(w, "\nExit status:\n")
		for _, line := range strings.Split(strings.TrimSpace(cmd.Exit), "\n") {
			fmt.Fprintf(w, "  %s\n", strings.TrimSpace(line))
		}
	}
}

func printUsage(w io.Writer, prog, about string, cmds []*Command) {
	fmt.Fprintf(w, "%s\n\nUsage: %s COMMAND [flags] [args]\n\nCommands:\n", about, prog)
	sorted := append([]*Command(nil), cmds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, c := range sorted {
		fmt.Fprintf(w, "  %-12s %s\n", c.Name, c.Summary)
	}
	fmt.Fprintf(w, "\nRun `%s COMMAND --help` for a command's flags.\n\nExit status: 0 success, 1 failure, 2 bad command line (see each command's help for more).\n", prog)
}

// NewLogger returns a slog logger writing to w as format says: "text"
// (key=value), "json" (one object per line), or "auto": JSON when w is the
// journal's stream (JOURNAL_STREAM names its device and inode, as systemd
// sets it for a service), text otherwise.
func NewLogger(w io.Writer, level slog.Level, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "auto", "":
		if isJournal(w, os.Getenv("JOURNAL_STREAM")) {
			return slog.New(slog.NewJSONHandler(w, opts)), nil
		}
	default:
		return nil, fmt.Errorf("unknown log format %q (want text, json or auto)", format)
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// isJournal says whether w is the stream JOURNAL_STREAM ("DEV:INODE")
// names. A child of a service inherits the variable but not always the
// stream, hence the comparison (systemd.exec(5)).
func isJournal(w io.Writer, env string) bool {
	f, ok := w.(*os.File)
	if !ok || env == "" {
		return false
	}
	var dev, ino uint64
	if _, err := fmt.Sscanf(env, "%d:%d", &dev, &ino); err != nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return st.Dev == dev && st.Ino == ino
}

// WriteJSON writes v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// TuneGC sets the garbage collector for streaming pages: phaul's live heap
// is a few MiB, while a migration passes hundreds of MiB through short-lived
// buffers (yamux allocates one per received frame). At the default GOGC=100
// that is a collection every few MiB, which cost the destination a third
// of its CPU time in the benchmark (bench/results). A GOGC set in the
// environment wins.
func TuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

const gcPercent = 800

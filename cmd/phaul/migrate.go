package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/migrate"
	"github.com/phaul/phaul/transport"
)

// Exit statuses of phaul migrate beyond cli's.
const (
	// exitInDoubt: the source copy is gone and the destination did not
	// confirm that its copy runs.
	exitInDoubt = 3
)

const defaultTLSDir = "/etc/phaul/tls"

var migrateCmd = &cli.Command{
	Name:    "migrate",
	Args:    "PID HOST:PORT",
	Summary: "move the process tree rooted at PID to the phaul-service at HOST:PORT",
	Help: `The tree is checked, frozen and dumped with CRIU while its memory streams
(compressed) to the destination, which restores it. The source copy is
destroyed only once the destination has restored the tree; any failure
before that leaves the workload running on the source, unchanged.

Exit status:
  0  the workload runs on the destination and not on the source
  1  the migration failed; the workload still runs on the source
  2  bad command line
  3  in doubt: the source copy is gone but the destination did not confirm
     that its copy runs (it keeps it stopped; see its logs and state.json)`,
	Flags: func(fs *pflag.FlagSet) {
		fs.String("tls-dir", defaultTLSDir, "directory made by `phaul certs` (uses ca.pem, client.pem, client-key.pem)")
		fs.String("server-name", "", "name to verify in the service's certificate (default "+transport.TLSServerName+")")
		fs.Bool("json", false, "print the report as one JSON object")
		fs.Bool("shell-job", false, "the tree's root is not a session leader (started from a shell)")
		fs.Bool("tcp-established", false, "checkpoint established TCP connections (the peer must reach the same IP afterwards)")
		fs.String("cgroup-root", "", "restore under this cgroup root on the destination (default: the service's --cgroup-root)")
		fs.Duration("timeout", migrate.DefaultTimeout, "longest wait for the destination at each step")
		fs.String("work-dir", "/var/tmp/phaul", "where the source writes its (small) image files and CRIU's log")
	},
	Run: runMigrate,
}

func runMigrate(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
	if len(args) != 2 {
		return cli.Usagef("migrate needs PID and HOST:PORT")
	}
	pid, err := strconv.Atoi(args[0])
	if err != nil || pid <= 0 {
		return cli.Usagef("migrate: bad PID %q", args[0])
	}
	// Refuse what can never be migrated before anything else.
	if err := proc.ValidateTarget(pid); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	o := migrate.Options{Pid: pid, Addr: args[1], Logger: env.Logger}
	tlsDir, _ := fs.GetString("tls-dir")
	serverName, _ := fs.GetString("server-name")
	o.ShellJob, _ = fs.GetBool("shell-job")
	o.TCPEstablished, _ = fs.GetBool("tcp-established")
	o.CgroupRoot, _ = fs.GetString("cgroup-root")
	o.Timeout, _ = fs.GetDuration("timeout")
	o.WorkDir, _ = fs.GetString("work-dir")
	asJSON, _ := fs.GetBool("json")

	if o.TLS, err = transport.ClientTLS(tlsDir, serverName); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	c, _, err := criu.New(ctx, criu.Options{Logger: env.Logger})
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	o.CRIU = c
	start := time.Now()
	report, err := migrate.Migrate(ctx, o)
	if asJSON {
		out := struct {
			*migrate.Report
			Error string `json:"error,omitempty"`
		}{Report: report}
		if err != nil {
			out.Error = err.Error()
		}
		if werr := cli.WriteJSON(env.Stdout, out); werr != nil {
			return werr
		}
	} else if err == nil {
		report.WriteText(env.Stdout)
	}
	if err != nil {
		code := cli.ExitFailure
		if errors.Is(err, migrate.ErrInDoubt) {
			code = exitInDoubt
		}
		return &cli.ExitError{Code: code, Err: fmt.Errorf("migrate: %w (after %v)", err, time.Since(start).Round(time.Millisecond))}
	}
	return nil
}

package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/migrate"
)

var statusCmd = &cli.Command{
	Name:    "status",
	Args:    "HOST:PORT",
	Summary: "list the migrations of the phaul-service at HOST:PORT: in flight, in doubt, recent",
	Help: `Asks the service (over mutual TLS, with the certificates of --tls-dir) for
its migrations and prints one line each, newest first: its ID (the one both
hosts' logs carry), state, the last phase it reached, the source host, the
tree's root command and PID on the source, its PID on the service's host,
when it started and ended, and the error of a failed one.

States:
  in-flight    being checked, transferred or restored now
  in-doubt     restored and kept stopped: the source's commit never arrived
  done         running on the service's host
  failed       ended before it ran there: the workload stayed on the source
  aborted      the source called it off
  interrupted  the service stopped in the middle (found in its work dir)

The service remembers the last 64 migrations since it started, and lists
the finished and in-doubt ones recorded in its work directory too.`,
	Exit: `0  listed, none in doubt
1  the service could not be asked (connection, certificates)
2  bad command line
3  listed, and at least one migration is in doubt`,
	Flags: func(fs *pflag.FlagSet) {
		tlsFlags(fs)
		fs.Bool("json", false, "print one JSON object (docs/json.md)")
		fs.Duration("timeout", 30*time.Second, "longest wait for the service")
	},
	Run: runStatus,
}

func runStatus(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
	if len(args) != 1 {
		return cli.Usagef("status needs HOST:PORT")
	}
	asJSON, _ := fs.GetBool("json")
	timeout, _ := fs.GetDuration("timeout")
	conf, err := clientTLS(fs)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := migrate.QueryStatus(ctx, args[0], conf)
	if err != nil {
		if asJSON {
			cli.WriteJSON(env.Stdout, &migrate.ServiceStatus{Address: args[0], Migrations: []migrate.MigrationStatus{}, Error: err.Error()})
		}
		return fmt.Errorf("status: %w", err)
	}
	if asJSON {
		if err := cli.WriteJSON(env.Stdout, st); err != nil {
			return err
		}
	} else {
		writeStatus(env, st)
	}
	for _, m := range st.Migrations {
		if m.State == migrate.StateInDoubt {
			return &cli.ExitError{Code: exitInDoubt, Err: fmt.Errorf("status: migration %s is in doubt on %s (its tree is kept stopped there)", m.ID, st.Address)}
		}
	}
	return nil
}

func writeStatus(env *cli.Env, st *migrate.ServiceStatus) {
	limit := "no limit on migrations at once"
	if st.MaxMigrations > 0 {
		limit = fmt.Sprintf("at most %d migrations at once", st.MaxMigrations)
	}
	fmt.Fprintf(env.Stdout, "phaul-service at %s: host %s, phaul %s, CRIU %s, %s\n", st.Address, st.Host, st.Phaul, st.CRIU, limit)
	if len(st.Migrations) == 0 {
		fmt.Fprintln(env.Stdout, "no migrations")
		return
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tPHASE\tSOURCE\tCOMMAND\tSOURCE PID\tPID\tSTARTED\tENDED\tERROR")
	for _, m := range st.Migrations {
		ended, pid := "-", "-"
		if m.Ended != nil {
			ended = m.Ended.Local().Format(time.DateTime)
		}
		if m.Pid > 0 {
			pid = fmt.Sprint(m.Pid)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", m.ID, m.State, m.Phase, dash(m.SourceHost), dash(m.Comm),
			m.SourcePid, pid, m.Started.Local().Format(time.DateTime), ended, m.Error)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

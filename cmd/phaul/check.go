package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/migrate"
	"github.com/phaul/phaul/precheck"
)

var checkCmd = &cli.Command{
	Name:    "check",
	Args:    "PID HOST:PORT",
	Summary: "check, without freezing anything, whether PID's tree can move to HOST:PORT",
	Help: `Runs every check of a migration against the destination and prints one line
per check: its name, pass / warn / FAIL, permanent or transient, and the
detail, with one line per problem below it. The checks: ` + strings.Join(precheck.Names, ", ") + `.`,
	Exit: `0  the migration can go ahead (warnings may be printed)
1  the checks could not run (connection, CRIU, ...)
2  bad command line
4  a permanent failure: the migration cannot work until something changes
5  only transient failures: retry later`,
	Flags: checkFlags,
	Run:   runCheck,
}

func runCheck(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
	o, err := options(ctx, env, fs, args)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	asJSON, _ := fs.GetBool("json")
	report, err := migrate.Check(ctx, o)
	if asJSON {
		out := struct {
			ID       string             `json:"id"`
			Pid      int                `json:"pid"`
			Dest     string             `json:"destination"`
			OK       bool               `json:"ok"`
			Outcome  string             `json:"outcome"` // ok, failed, permanent, transient
			Verdicts []precheck.Verdict `json:"verdicts"`
			Seconds  float64            `json:"seconds"`
			Error    string             `json:"error,omitempty"`
		}{Pid: o.Pid, Dest: o.Addr, OK: err == nil, Outcome: outcomeFor(err), Verdicts: []precheck.Verdict{}}
		if report != nil {
			out.ID, out.Seconds = report.ID, float64(report.Total)/1e9
			if report.Verdicts != nil {
				out.Verdicts = report.Verdicts
			}
		}
		if err != nil {
			out.Error = err.Error()
		}
		if werr := cli.WriteJSON(env.Stdout, out); werr != nil {
			return werr
		}
	} else if report != nil {
		for _, v := range report.Verdicts {
			fmt.Fprintln(env.Stdout, verdictLine(v))
		}
	}
	if err != nil {
		return &cli.ExitError{Code: exitFor(err), Err: fmt.Errorf("check: %w", err)}
	}
	return nil
}

// verdictLine prints a verdict for people.
func verdictLine(v precheck.Verdict) string {
	res := map[string]string{"pass": "pass", "warn": "warn", "fail": "FAIL", "skipped": "skip"}[v.Result]
	class := ""
	if v.Result == "fail" {
		class = " (permanent)"
		if v.Transient {
			class = " (transient: retry later)"
		}
	}
	s := fmt.Sprintf("%-10s %s%s: %s", v.Check, res, class, v.Detail)
	for _, it := range v.Items {
		s += "\n           - " + it
	}
	return s
}

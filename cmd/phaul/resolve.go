package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/migrate"
)

var resolveCmd = &cli.Command{
	Name:    "resolve",
	Args:    "ID [commit|abort]",
	Summary: "settle a migration the destination holds in doubt: resume its stopped copy, or kill it",
	Help: `A migration is in doubt when the destination restored a copy and lost the
source before hearing its decision (the source committed, its tree gone or
about to be, or phaul migrate was killed before deciding): the destination
keeps its copy stopped until it is told (phaul status lists it; phaul
migrate exits 3 when it had committed). phaul migrate settles it by itself when it can
reach the destination again within --timeout, and any later phaul migrate to
the same destination from this host does too.

Run on the source host with the same --work-dir as the migration, phaul
resolve ID reads the source's own record of its decision and says it to the
destination: commit (resume the copy) when the source tree is gone, abort
(kill the copy) when the source tree still runs. A record left undecided
(phaul migrate was killed before it decided) means abort while the source
tree runs; with the tree gone too, resolve refuses to guess. Run at once,
before the destination has noticed that phaul migrate is gone, resolve gives
the same answer: an abort ends a migration the destination is still
receiving, and for one past its restore it waits, within --timeout, until
the destination holds it in doubt. Saying commit or abort
overrides the record; commit is refused while the source tree still runs
here (two copies would run). Without a record (another host, or the source
host lost) say commit or abort yourself, and --dest.`,
	Exit: `0  settled: the one copy runs (commit), or the destination's copy is gone (abort)
1  not settled: the destination could not be reached or refused (the copy stays stopped there)
2  bad command line, or no record and no decision given`,
	Flags: func(fs *pflag.FlagSet) {
		fs.String("dest", "", "the destination HOST:PORT (default: from the source's record)")
		tlsFlags(fs)
		fs.String("work-dir", "/var/tmp/phaul", "the work dir of the migration on the source (its records are in WORK_DIR/decisions)")
		fs.Bool("json", false, "print one JSON object: id, state (done or aborted), pid, already, decided_by")
		fs.Duration("timeout", 30*time.Second, "longest wait for the destination")
	},
	Run: runResolve,
}

func runResolve(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
	if len(args) < 1 || len(args) > 2 {
		return cli.Usagef("resolve needs ID and, optionally, commit or abort")
	}
	id := args[0]
	dest, _ := fs.GetString("dest")
	workDir, _ := fs.GetString("work-dir")
	asJSON, _ := fs.GetBool("json")
	timeout, _ := fs.GetDuration("timeout")
	rec, err := migrate.ReadDecision(workDir, id)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return cli.Usagef("resolve: %v", err)
	}
	var commit bool
	var why string
	switch {
	case len(args) == 2 && args[1] == "commit":
		commit, why = true, "the operator"
		if rec != nil {
			if ok, reason, err := rec.Commit(); !ok && err == nil {
				return fmt.Errorf("resolve: refusing to commit: %s; two copies would run (say abort)", reason)
			}
		}
	case len(args) == 2 && args[1] == "abort":
		commit, why = false, "the operator"
	case len(args) == 2:
		return cli.Usagef("resolve: %q: say commit or abort", args[1])
	case rec == nil:
		return cli.Usagef("resolve: no record of migration %s in %s: run this on the source host with the migration's --work-dir, or say commit or abort (and --dest)", id, workDir)
	default:
		if commit, why, err = rec.Commit(); err != nil {
			return fmt.Errorf("resolve: %w", err)
		}
	}
	if dest == "" && rec != nil {
		dest = rec.Addr
	}
	if dest == "" {
		return cli.Usagef("resolve: which destination? (--dest HOST:PORT)")
	}
	conf, err := clientTLS(fs)
	if err != nil {
		return fmt.Errorf("resolve: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	env.Logger.Info("resolving", "migration", id, "dest", dest, "commit", commit, "why", why)
	r, err := migrate.ResolveAt(ctx, dest, conf, id, commit)
	if rec != nil && len(rec.Held) > 0 {
		// Post-copy: the source tree waits stopped here.
		if commit && migrate.IsNotHere(err) {
			commit, err, r, why = false, nil, &migrate.Resolution{ID: id, State: migrate.StateAborted, Already: true}, "the destination's copy is gone (its lease keeper killed it)"
		}
		if err == nil || !commit {
			if herr := rec.SettleHeld(commit, env.Logger); herr != nil {
				return fmt.Errorf("resolve %s: the source tree kept stopped here: %w", id, herr)
			}
		}
	}
	if !commit && rec != nil {
		// The source tree runs here: the addresses it gave up come back
		// (after the destination's answer, whatever it was).
		if aerr := rec.ReclaimAddresses(env.Logger); aerr != nil {
			env.Logger.Error("the addresses moved for the migration could not all be put back", "migration", id, "err", aerr)
		}
	}
	if errors.Is(err, migrate.ErrInFlight) {
		return fmt.Errorf("resolve %s on %s: %w; still so after --timeout %v: run phaul resolve again later, or with a longer --timeout", id, dest, err, timeout)
	}
	if err != nil {
		return fmt.Errorf("resolve %s on %s: %w", id, dest, err)
	}
	if rec != nil {
		migrate.ForgetDecision(workDir, id)
	}
	if asJSON {
		return cli.WriteJSON(env.Stdout, struct {
			*migrate.Resolution
			DecidedBy string `json:"decided_by"`
		}{r, why})
	}
	switch {
	case r.State == migrate.StateDone:
		fmt.Fprintf(env.Stdout, "migration %s: committed; it runs on %s as pid %d (%s)\n", id, dest, r.Pid, why)
	case r.Already:
		fmt.Fprintf(env.Stdout, "migration %s: aborted; nothing of it was left on %s (%s)\n", id, dest, why)
	default:
		fmt.Fprintf(env.Stdout, "migration %s: aborted; the stopped copy on %s is gone (%s)\n", id, dest, why)
	}
	return nil
}

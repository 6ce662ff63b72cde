// Command phaul live-migrates a running Linux process tree to another host
// running phaul-service, on top of CRIU. It also checks hosts and dumps or
// restores locally.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/postcopy"
)

const about = "phaul: live migration of Linux process trees with CRIU"

var commands = []*cli.Command{migrateCmd, checkCmd, statusCmd, resolveCmd, certsCmd, versionCmd, checkHostCmd, dumpCmd, restoreCmd}

func main() {
	postcopy.RunProbeIfAsked() // check-host's lazy-pages self-test runs phaul itself as its probe
	cli.TuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "phaul:", err)
	}
	os.Exit(cli.ExitCode(err))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return cli.Main(ctx, "phaul", about, commands, args, stdout, stderr)
}

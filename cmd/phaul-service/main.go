// Command phaul-service is the destination side of phaul: it accepts
// migrations from `phaul migrate` and restores them on this host.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/phaul/phaul/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "phaul-service:", err)
	}
	os.Exit(cli.ExitCode(err))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("phaul-service", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: phaul-service [flags]\n\nThe destination of phaul migrations.\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			return nil
		}
		return cli.Usagef("%v", err)
	}
	if *version {
		fmt.Fprintf(stdout, "phaul-service %s (%s)\n", cli.PhaulVersion(), runtime.Version())
		return nil
	}
	return cli.Usagef("phaul-service: serving migrations is not implemented yet")
}

// Command phaul-service is the destination side of phaul: it accepts
// migrations from `phaul migrate` over mutual TLS and restores them on
// this host under its cgroup root, until SIGTERM.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/internal/sdnotify"
	"github.com/phaul/phaul/migrate"
	"github.com/phaul/phaul/postcopy"
	"github.com/phaul/phaul/transport"
)

func main() {
	// The same binary runs as the lazy-pages self-test's probe and as a
	// post-copy migration's lease keeper.
	postcopy.RunProbeIfAsked()
	postcopy.RunKeeperIfAsked()
	cli.TuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "phaul-service:", err)
	}
	os.Exit(cli.ExitCode(err))
}

// defaultConfig is read when it exists; --config or PHAUL_SERVICE_CONFIG
// name a file that must exist.
const defaultConfig = "/etc/phaul/phaul-service.conf"

// options are phaul-service's flags.
type options struct {
	config                                             string
	listen, tlsDir, workDir, cgroupRoot, manageCgroups string
	logDir, logFormat, addressInterface                string
	timeout, shutdownTimeout                           time.Duration
	maxMigrations                                      int
	verbose, version                                   bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := pflag.NewFlagSet("phaul-service", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.StringVar(&o.config, "config", defaultConfig, "config file: one \"name = value\" per line, names of these flags (a missing default file is ignored)")
	fs.StringVar(&o.listen, "listen", ":7070", "ADDR:PORT to accept migrations on")
	fs.StringVar(&o.tlsDir, "tls-dir", "/etc/phaul/tls", "directory made by `phaul certs` (uses ca.pem, server.pem, server-key.pem)")
	fs.StringVar(&o.workDir, "work-dir", "/var/lib/phaul", "one directory per migration (images, CRIU logs, state) below it")
	fs.StringVar(&o.logDir, "log-dir", "", "logs of each migration (CRIU's, the terminals') in LOG_DIR/ID, kept after a failure (default: in the work dir, removed with it)")
	fs.StringVar(&o.logFormat, "log-format", "auto", "the service's own log: text, json, or auto (json when stderr is the journal, as under systemd; text otherwise)")
	fs.StringVar(&o.cgroupRoot, "cgroup-root", "/phaul", "cgroup root for restored trees: each goes to ROOT/phaul-ID in every controller it uses")
	fs.StringVar(&o.manageCgroups, "manage-cgroups", "soft", "CRIU's cgroup mode on restore: ignore, none, props, soft, full, strict")
	fs.DurationVar(&o.timeout, "timeout", migrate.DefaultTimeout, "longest wait for the source at each step")
	fs.StringVar(&o.addressInterface, "address-interface", "", "interface that addresses moved here (phaul migrate --move-address) go to (default: the one on each address's subnet)")
	fs.IntVar(&o.maxMigrations, "max-migrations", 4, "migrations restoring at once; beyond, the checks answer a transient \"busy\" (0: no limit)")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 60*time.Second, "on SIGTERM, how long migrations in flight may take to finish before they are aborted")
	fs.BoolVarP(&o.verbose, "verbose", "v", false, "log debug messages")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stdout, `Usage: phaul-service [flags]

Accepts migrations from `+"`phaul migrate`"+` and restores them on this host. Runs
until SIGTERM or SIGINT, then lets migrations in flight finish (or aborts
them after --shutdown-timeout: one not yet restored is rolled back, one
restored and waiting for the source's commit is kept stopped, in doubt).

Every flag can also be set in the config file (--config) as "name = value"
and in the environment as PHAUL_SERVICE_NAME (dashes as underscores:
PHAUL_SERVICE_WORK_DIR); the command line wins over the environment, which
wins over the file. Under systemd (Type=notify) it reports READY=1 once it
listens, STATUS= with the migrations in flight, and STOPPING=1; SIGHUP
re-reads the certificates of --tls-dir.

Flags:
%s
Exit status: 0 after a clean shutdown, 1 on failure, 2 on a bad command line
or config file.
`, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return cli.Usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected arguments %q", fs.Args())
	}
	if o.version {
		fmt.Fprintf(stdout, "phaul-service %s (%s)\n", cli.PhaulVersion(), runtime.Version())
		return nil
	}
	_, envConfig := os.LookupEnv("PHAUL_SERVICE_CONFIG")
	if envConfig && !fs.Changed("config") {
		o.config = os.Getenv("PHAUL_SERVICE_CONFIG")
	}
	if err := cli.ApplyConfig(fs, o.config, fs.Changed("config") || envConfig, "PHAUL_SERVICE_", "config", "version"); err != nil {
		return cli.Usagef("%v", err)
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log, err := cli.NewLogger(stderr, level, o.logFormat)
	if err != nil {
		return cli.Usagef("--log-format: %v", err)
	}
	return serve(ctx, o, log)
}

func serve(ctx context.Context, o options, log *slog.Logger) error {
	mode, err := criu.ParseCgroupMode(o.manageCgroups)
	if err != nil {
		return cli.Usagef("--manage-cgroups: %v", err)
	}
	tlsConf, err := transport.NewReloadableTLS(o.tlsDir)
	if err != nil {
		return err
	}
	c, host, err := criu.New(ctx, criu.Options{Logger: log})
	if err != nil {
		return err
	}
	// Restored trees are re-parented to us when CRIU exits, so that the
	// service can reap them (some inits do not).
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		log.Warn("cannot become a child subreaper", "err", err)
	}
	bp := "handled by CRIU itself (>= 4.2)"
	if host.FaultInjection != "" {
		bp = "not delivered here: CRIU runs with CRIU_FAULT=" + host.FaultInjection
	} else if host.Version.Less(criu.Version{Major: 4, Minor: 2}) {
		bp = "delivered"
	}
	dest, err := migrate.NewDestination(migrate.DestOptions{
		Breakpoints: bp,
		WorkDir:     o.workDir, LogDir: o.logDir, CgroupRoot: o.cgroupRoot, ManageCgroups: mode, Timeout: o.timeout, MaxMigrations: o.maxMigrations,
		AddressInterface: o.addressInterface,
		CRIU:             migrate.CRIU{Client: c}, CRIUVersion: host.Version.String(), Logger: log,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &migrate.Server{TLS: tlsConf.Config(), Dest: dest, Logger: log}
	log.Info("listening", "addr", ln.Addr().String(), "criu", host.Version.String(), "cgroup_root", o.cgroupRoot, "manage_cgroups", o.manageCgroups, "work_dir", o.workDir, "log_dir", o.logDir)
	// SIGHUP is caught before READY=1: a reload right after start must
	// not kill the service (SIGHUP's default action).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	notify := sdnotify.FromEnv()
	status := func() string {
		return sdnotify.Status("listening on %s; %d migration(s) in flight", ln.Addr(), srv.Active())
	}
	if err := notify.Send(sdnotify.Ready, status()); err != nil {
		log.Warn("cannot notify systemd", "err", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	last := ""
loop:
	for {
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			break loop
		case <-hup:
			if err := tlsConf.Reload(); err != nil {
				log.Error("SIGHUP: certificates not reloaded; the previous ones stay in use", "dir", o.tlsDir, "err", err)
			} else {
				log.Info("SIGHUP: certificates reloaded", "dir", o.tlsDir)
			}
		case <-tick.C:
			if st := status(); st != last {
				notify.Send(st)
				last = st
			}
		}
	}
	log.Info("shutting down", "in_flight", srv.Active())
	notify.Send(sdnotify.Stopping, sdnotify.Status("shutting down; %d migration(s) in flight", srv.Active()))
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("migrations in flight were aborted", "err", err)
	}
	<-errc
	return nil
}

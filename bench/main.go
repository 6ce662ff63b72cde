// Command phaul-bench measures `phaul migrate` side by side with CRIU alone
// and with the manual workflow, in one run on one machine, between the two
// network-namespace hosts of scripts/two-hosts.sh. `make bench` runs it.
//
// For every link (the bare veth pair, the pair shaped to 1 Gbit/s with tc
// tbf), workload size and run, it starts a fresh workload (N MiB, half
// random, half compressible, dirtying pages as it runs) on host a and
// moves it with each method:
//
//   - phaul: `phaul migrate --json` to phaul-service on host b, with
//     pre-copy as it comes (auto);
//   - phaul-off: the same with --precopy=off, every page while frozen;
//   - phaul-post: --postcopy --precopy=off: restored before its memory
//     crossed, the pages following (the run ends once the last has
//     arrived, and the memory is verified after it);
//   - phaul-prepost: --postcopy --precopy=on: pre-copy rounds first, so
//     that only the pages changed since the last round follow the
//     restore from the source;
//   - criu: CRIU alone, `criu dump` to a tmpfs then `criu restore` on
//     host a, the limit of this machine;
//   - manual: `criu dump` to a directory, the directory sent to host b
//     with tar over TCP, `criu restore` there.
//
// On links other than bare, a hot workload (--hot pages a second, faster
// than the link carries them) is moved by phaul and phaul-off too. After
// every restore the workload re-verifies its whole memory. The
// medians, the ratios and the targets go to stdout, and as JSON and
// markdown to --out. Everything it creates is removed when it ends, also
// on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

type options struct {
	Sizes []int    // MiB
	Runs  int      // per size, link and method
	Links []string // bare, 1gbit (any tbf rate: 500mbit, 10gbit ...)
	Dirty int      // pages rewritten per second by the workload
	// The hot workload, on links other than bare: HotMiB MiB rewriting
	// Hot pages a second (faster than a 1 Gbit/s link carries them),
	// moved by phaul with and without pre-copy. Hot 0: none.
	Hot, HotMiB int
	Bin         string   // phaul, phaul-service, phaul-workload
	Out         string   // results directory; empty: do not write
	Method      []string // phaul, criu, manual
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == recvCommand {
		// The receiving end of the manual workflow's TCP copy (what nc
		// would be), run inside host b.
		if err := recvMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "phaul-bench recv:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == clientCommand {
		// A client of the migrated workload, run inside the client's
		// namespace.
		if err := clientMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "phaul-bench client:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "phaul-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("phaul-bench", pflag.ContinueOnError)
	sizes := fs.String("sizes", "256,1024,2048", "workload sizes in MiB, comma-separated")
	o := options{}
	fs.IntVar(&o.Runs, "runs", 3, "runs of each method per size and link (the table shows medians)")
	links := fs.String("links", "bare,1gbit", "links to measure: bare (the veth pair as it is) or a tbf rate such as 1gbit")
	fs.IntVar(&o.Dirty, "dirty", 1000, "pages the workload rewrites per second")
	fs.IntVar(&o.Hot, "hot", 60000, "pages per second the hot workload rewrites (on links other than bare; 0: no hot workload)")
	fs.IntVar(&o.HotMiB, "hot-size", 256, "size of the hot workload in MiB")
	fs.StringVar(&o.Bin, "bin", "bin", "directory with phaul, phaul-service and phaul-workload (make build)")
	fs.StringVar(&o.Out, "out", "bench/results", "directory for the JSON and markdown results; empty: print only")
	methods := fs.String("methods", "phaul,phaul-off,phaul-post,phaul-prepost,criu,manual", "methods to run")
	verbose := fs.BoolP("verbose", "v", false, "log each step")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("--sizes: %q is not a size in MiB", s)
		}
		o.Sizes = append(o.Sizes, n)
	}
	for _, l := range strings.Split(*links, ",") {
		if _, err := tbfRate(l); err != nil {
			return fmt.Errorf("--links: %w", err)
		}
		o.Links = append(o.Links, l)
	}
	for _, m := range strings.Split(*methods, ",") {
		switch m {
		case methodPhaul, methodPhaulOff, methodPostcopy, methodPrePost, methodCRIU, methodManual:
			o.Method = append(o.Method, m)
		default:
			return fmt.Errorf("--methods: unknown method %q (phaul, phaul-off, phaul-post, phaul-prepost, criu, manual)", m)
		}
	}
	if o.Runs < 1 {
		return errors.New("--runs must be at least 1")
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root (CRIU, network namespaces, tc)")
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	b, err := newBench(ctx, o, log)
	if err != nil {
		return err
	}
	defer b.cleanup()
	start := time.Now()
	res, err := b.measure(ctx)
	if err != nil {
		return err
	}
	res.Elapsed = time.Since(start).Round(time.Second).String()
	res.finish()
	res.writeTable(os.Stdout)
	if o.Out != "" {
		files, err := res.save(o.Out)
		if err != nil {
			return err
		}
		fmt.Printf("\nwritten: %s\n", strings.Join(files, ", "))
	}
	return nil
}

package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/cli"
	"github.com/phaul/phaul/internal/proc"
)

// Local dump and restore: CRIU through phaul's client (CRIU found and
// checked against the kernel, errors with CRIU's own lines), without a
// second host. Useful alone and as the "CRIU alone" baseline.

func localFlags(fs *pflag.FlagSet) {
	fs.Bool("shell-job", false, "the tree is a shell job (its root is not a session leader)")
	fs.Bool("tcp-established", false, "checkpoint (dump) or restore established TCP connections")
	fs.Bool("json", false, "print one JSON object")
}

func localOpts(fs *pflag.FlagSet) *rpc.CriuOpts {
	shell, _ := fs.GetBool("shell-job")
	tcp, _ := fs.GetBool("tcp-established")
	return &rpc.CriuOpts{ShellJob: proto.Bool(shell), TcpEstablished: proto.Bool(tcp)}
}

var dumpCmd = &cli.Command{
	Name:    "dump",
	Args:    "PID DIR",
	Summary: "checkpoint the process tree rooted at PID into DIR on this host",
	Help: `Without --leave-running the tree is gone once the dump succeeds; on
failure it keeps running. CRIU's log is DIR/dump.log. For a live migration
to another host use phaul migrate, which checks, streams and rolls back.`,
	Exit: `0  dumped
1  the dump failed (with CRIU's error lines); the tree keeps running
2  bad command line`,
	Flags: func(fs *pflag.FlagSet) {
		localFlags(fs)
		fs.Bool("leave-running", false, "keep the tree running after the dump")
	},
	Run: func(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
		if len(args) != 2 {
			return cli.Usagef("dump needs PID and DIR")
		}
		pid, err := strconv.Atoi(args[0])
		if err != nil {
			return cli.Usagef("dump: bad PID %q", args[0])
		}
		if err := proc.ValidateTarget(pid); err != nil {
			return fmt.Errorf("dump: %w", err)
		}
		if err := os.MkdirAll(args[1], 0o700); err != nil {
			return fmt.Errorf("dump: %w", err)
		}
		c, _, err := criu.New(ctx, criu.Options{Logger: env.Logger})
		if err != nil {
			return fmt.Errorf("dump: %w", err)
		}
		opts := localOpts(fs)
		opts.Pid = proto.Int32(int32(pid))
		leave, _ := fs.GetBool("leave-running")
		opts.LeaveRunning = proto.Bool(leave)
		start := time.Now()
		res, err := c.Dump(ctx, criu.Request{Opts: opts, ImagesDir: args[1]})
		if err != nil {
			return fmt.Errorf("dump: %w", err)
		}
		return report(env, fs, map[string]any{"pid": pid, "dir": args[1], "seconds": time.Since(start).Seconds(), "log": res.Log},
			fmt.Sprintf("dumped %d into %s in %v (log %s)", pid, args[1], time.Since(start).Round(time.Millisecond), res.Log))
	},
}

var restoreCmd = &cli.Command{
	Name:    "restore",
	Args:    "DIR",
	Summary: "restore a process tree dumped into DIR on this host",
	Help: `Restores the tree as phaul dump left it (the same PIDs: they must be free).
CRIU's log is DIR/restore.log.`,
	Exit: `0  restored and running
1  the restore failed (with CRIU's error lines); nothing is left running
2  bad command line`,
	Flags: localFlags,
	Run: func(ctx context.Context, env *cli.Env, fs *pflag.FlagSet, args []string) error {
		if len(args) != 1 {
			return cli.Usagef("restore needs DIR")
		}
		c, _, err := criu.New(ctx, criu.Options{Logger: env.Logger})
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		start := time.Now()
		res, err := c.Restore(ctx, criu.Request{Opts: localOpts(fs), ImagesDir: args[0]})
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		return report(env, fs, map[string]any{"pid": res.Pid, "dir": args[0], "seconds": time.Since(start).Seconds(), "log": res.Log},
			fmt.Sprintf("restored %s as pid %d in %v", args[0], res.Pid, time.Since(start).Round(time.Millisecond)))
	},
}

func report(env *cli.Env, fs *pflag.FlagSet, v any, human string) error {
	if asJSON, _ := fs.GetBool("json"); asJSON {
		return cli.WriteJSON(env.Stdout, v)
	}
	_, err := fmt.Fprintln(env.Stdout, human)
	return err
}

package criu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DefaultPath is where `make deps` installs CRIU when the system's own is
// missing or too old for the kernel: a wrapper that runs the unpacked
// Debian package through its own dynamic loader.
const DefaultPath = "/opt/phaul/criu/bin/criu"

// EnvPath names the environment variable that overrides where CRIU is.
const EnvPath = "PHAUL_CRIU"

// Locate returns the CRIU binary to use: $PHAUL_CRIU if set, else
// DefaultPath if it exists, else `criu` from $PATH.
func Locate() (string, error) {
	if p := os.Getenv(EnvPath); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvPath, p, err)
		}
		return p, nil
	}
	if _, err := os.Stat(DefaultPath); err == nil {
		return DefaultPath, nil
	}
	p, err := exec.LookPath("criu")
	if err != nil {
		return "", ErrNotFound
	}
	return p, nil
}

// Host describes the CRIU a Client runs and the machine it runs on.
type Host struct {
	Path    string
	Version Version
	Kernel  Kernel
	// Breakpoints says whether hardware breakpoints reach a traced
	// process here. Where they do not, CRIU before 4.2 hangs after
	// "Waiting for PID to trap"; New then runs it with CRIU_FAULT=130.
	Breakpoints bool
	// FaultInjection is the CRIU_FAULT value the Client sets, if any.
	FaultInjection string
}

// Options configure New.
type Options struct {
	Path     string       // the criu binary; empty means Locate()
	LogLevel int32        // see Client.LogLevel
	Logger   *slog.Logger // nil means slog.Default()
	// ProbeBreakpoints probes hardware breakpoints (Host.Breakpoints)
	// even for CRIU >= 4.2, which does not need phaul to.
	ProbeBreakpoints bool
}

// New finds CRIU, asks its version, checks that this version works on
// the running kernel (a *CompatError if not), and probes hardware
// breakpoints for CRIU older than 4.2 (or when asked to).
func New(ctx context.Context, o Options) (*Client, *Host, error) {
	path := o.Path
	if path == "" {
		var err error
		if path, err = Locate(); err != nil {
			return nil, nil, err
		}
	}
	c := ClientFor(path, o.Logger)
	c.LogLevel = o.LogLevel
	h := &Host{Path: path}
	vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := c.Version(vctx)
	if err != nil {
		var ce *Error
		if errors.As(err, &ce) && strings.Contains(ce.Stderr, "vDSO") {
			// CRIU older than 4.1 on Linux >= 6.13 dies before it can
			// answer; say why.
			k, _ := RunningKernel()
			need, why := MinVersion(k)
			return nil, nil, fmt.Errorf("criu at %s cannot start on Linux %s (needs >= %d.%d: %s): %w", path, k, need.Major, need.Minor, why, err)
		}
		return nil, nil, fmt.Errorf("criu at %s: %w", path, err)
	}
	h.Version = v
	if h.Kernel, err = RunningKernel(); err != nil {
		return nil, nil, err
	}
	if err := CheckCompat(v, h.Kernel); err != nil {
		return nil, nil, err
	}
	if !v.Less(Version{Major: 4, Minor: 2}) && !o.ProbeBreakpoints {
		// CRIU 4.2 probes breakpoints itself and falls back.
		return c, h, nil
	}
	h.Breakpoints, err = ProbeBreakpoints(ctx)
	if err != nil {
		c.logger().Warn("breakpoint probe failed; assuming breakpoints do not work", "err", err)
	}
	if !h.Breakpoints && v.Less(Version{Major: 4, Minor: 2}) {
		// FI_NO_BREAKPOINTS: step with PTRACE_SYSCALL instead of a
		// hardware breakpoint on sigreturn. CRIU 4.2 probes this itself.
		h.FaultInjection = "130"
		c.Env = append(c.Env, "CRIU_FAULT=130")
	}
	return c, h, nil
}

// ClientFor returns a client of the CRIU at path, without the checks of
// New.
func ClientFor(path string, logger *slog.Logger) *Client {
	c := &Client{Logger: logger}
	c.Path, c.Args = direct(path)
	return c
}

// direct turns the wrapper that `make deps` installs (PREFIX/bin/criu, a
// shell script) into the command it runs: CRIU through the prefix's own
// loader and libraries. phaul then needs neither /bin/sh nor any library
// of the host to run CRIU.
func direct(path string) (string, []string) {
	prefix := filepath.Dir(filepath.Dir(path))
	loader := filepath.Join(prefix, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
	bin := filepath.Join(prefix, "usr/sbin/criu")
	if filepath.Base(filepath.Dir(path)) != "bin" {
		return path, nil
	}
	for _, p := range []string{loader, bin} {
		if _, err := os.Stat(p); err != nil {
			return path, nil
		}
	}
	libs := filepath.Join(prefix, "usr/lib/x86_64-linux-gnu") + ":" + filepath.Join(prefix, "lib/x86_64-linux-gnu")
	return loader, []string{"--library-path", libs, bin}
}

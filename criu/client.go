package criu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// DefaultKillGrace is how long a cancelled CRIU gets to abort cleanly
// before it is killed.
const DefaultKillGrace = 10 * time.Second

// Client runs CRIU operations, one `criu swrk` child per operation. Build
// it with New, which finds CRIU and checks it against the kernel; a Client
// is safe for concurrent use.
type Client struct {
	Path      string        // the criu binary (or a wrapper that execs it)
	Args      []string      // arguments before CRIU's own (see Command)
	Env       []string      // added to CRIU's environment (e.g. CRIU_FAULT=130)
	LogLevel  int32         // CRIU's log level, 0..4; 0 means 4 (debug)
	KillGrace time.Duration // see DefaultKillGrace; 0 means the default
	Logger    *slog.Logger  // nil means slog.Default()
}

func (c *Client) killGrace() time.Duration {
	if c.KillGrace > 0 {
		return c.KillGrace
	}
	return DefaultKillGrace
}

func (c *Client) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// Command returns the command that runs CRIU with args.
func (c *Client) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.Path, append(append([]string(nil), c.Args...), args...)...)
	cmd.Env = append(os.Environ(), c.Env...)
	return cmd
}

// Request describes the files and callbacks of one operation; CRIU's own
// options go in Opts. The client fills in the fd fields of Opts
// (images_dir_fd, work_dir_fd, ps.fd, inherit_fd[].fd) and the log file.
type Request struct {
	Opts      *rpc.CriuOpts // CRIU options; copied, not modified
	ImagesDir string        // required for dump, restore, page server, cpuinfo
	WorkDir   string        // CRIU's work dir (its log goes there); default ImagesDir
	// PageServer is a connected socket to a page server (on dump) or from
	// a dumping CRIU (on page server): pages go over it instead of to
	// ImagesDir.
	PageServer *os.File
	Inherit    []InheritFile // files the restored tree inherits (inherit_fd)
	Notify     NotifyFunc    // nil acknowledges every notification
}

// InheritFile is an fd handed to a restore for an external resource CRIU
// names by Key (for example "tty[8800:d]" or "pipe:[12345]").
type InheritFile struct {
	Key  string
	File *os.File
}

// prepared is a Request turned into CRIU options and child fds.
type prepared struct {
	opts    *rpc.CriuOpts
	files   []*os.File // the child's fds swrkFd+1, ...
	closers []*os.File
	logPath string
}

func (p *prepared) close() {
	for _, f := range p.closers {
		f.Close()
	}
}

func (p *prepared) addFile(f *os.File) int32 {
	p.files = append(p.files, f)
	return int32(swrkFd + len(p.files))
}

func (c *Client) prepare(op string, r Request) (*prepared, error) {
	p := &prepared{opts: &rpc.CriuOpts{}}
	if r.Opts != nil {
		p.opts = proto.Clone(r.Opts).(*rpc.CriuOpts)
	}
	if r.ImagesDir == "" {
		return nil, fmt.Errorf("criu %s: no images directory given", op)
	}
	openDir := func(dir string) (*os.File, error) {
		f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return nil, fmt.Errorf("criu %s: %w", op, err)
		}
		p.closers = append(p.closers, f)
		return f, nil
	}
	img, err := openDir(r.ImagesDir)
	if err != nil {
		return nil, err
	}
	// images_dir_fd and work_dir_fd are fds of this process: CRIU opens
	// /proc/<our pid>/fd/N.
	p.opts.ImagesDirFd = proto.Int32(int32(img.Fd()))
	logDir := r.ImagesDir
	if r.WorkDir != "" {
		wd, err := openDir(r.WorkDir)
		if err != nil {
			p.close()
			return nil, err
		}
		p.opts.WorkDirFd = proto.Int32(int32(wd.Fd()))
		logDir = r.WorkDir
	}
	if p.opts.LogFile == nil {
		p.opts.LogFile = proto.String(op + ".log")
	}
	p.logPath = filepath.Join(logDir, p.opts.GetLogFile())
	level := c.LogLevel
	if level <= 0 || level > 4 {
		level = 4
	}
	p.opts.LogLevel = proto.Int32(level)
	// ps.fd and inherit_fd[].fd are fds of the swrk child.
	if r.PageServer != nil {
		if p.opts.Ps == nil {
			p.opts.Ps = &rpc.CriuPageServerInfo{}
		}
		p.opts.Ps.Fd = proto.Int32(p.addFile(r.PageServer))
	}
	for _, in := range r.Inherit {
		fd := p.addFile(in.File)
		p.opts.InheritFd = append(p.opts.InheritFd, &rpc.InheritFd{Key: proto.String(in.Key), Fd: proto.Int32(fd)})
	}
	return p, nil
}

// do runs one request in a fresh swrk child and returns its successful
// response, or an *Error.
func (c *Client) do(ctx context.Context, op string, typ rpc.CriuReqType, r *Request) (resp *rpc.CriuResp, logPath string, err error) {
	req := &rpc.CriuReq{Type: typ.Enum()}
	var p *prepared
	if r != nil {
		if p, err = c.prepare(op, *r); err != nil {
			return nil, "", err
		}
		defer p.close()
		req.Opts = p.opts
		logPath = p.logPath
	}
	var files []*os.File
	var notify NotifyFunc
	if p != nil {
		files, notify = p.files, r.Notify
	}
	s, err := c.start(ctx, op, files)
	if err != nil {
		return nil, "", err
	}
	start := time.Now()
	resp, notifyErr, callErr := s.call(ctx, req, notify)
	werr := s.wait()
	c.logger().Debug("criu finished", "op", op, "took", time.Since(start), "ok", callErr == nil && resp.GetSuccess())
	if callErr == nil && resp.GetSuccess() && notifyErr == nil {
		return resp, logPath, nil
	}
	e := s.failure(ctx, logPath, resp, notifyErr, callErr, werr)
	return nil, logPath, e
}

// failure builds the *Error for a failed exchange.
func (s *session) failure(ctx context.Context, logPath string, resp *rpc.CriuResp, notifyErr, callErr, werr error) *Error {
	e := &Error{Op: s.op, Stderr: s.stderr.String()}
	if logPath != "" {
		if _, err := os.Stat(logPath); err == nil {
			e.Log = logPath
			e.Lines = readErrorLines(logPath)
		}
	}
	if resp != nil {
		e.Msg = resp.GetCrErrmsg()
		e.Errno = syscall.Errno(resp.GetCrErrno())
	}
	switch {
	case ctx.Err() != nil:
		e.Err = ctx.Err()
	case notifyErr != nil:
		e.Err = notifyErr
	case callErr != nil && isClosed(callErr) && werr != nil:
		e.Err = fmt.Errorf("exited without answering: %w", werr)
	case callErr != nil:
		e.Err = callErr
	}
	return e
}

// DumpResult is what a successful dump reports.
type DumpResult struct {
	Restored bool   // the tasks were restored in place (never, for phaul's use)
	Log      string // CRIU's log for the dump
}

// Dump checkpoints the tree rooted at Opts.Pid into ImagesDir (pages to
// PageServer if set). Notifications are always on: post-dump is the last
// point where the dump can be rolled back, by refusing it in Notify (or by
// cancelling ctx), which makes CRIU resume the tasks. Unless
// Opts.LeaveRunning is set, the tasks are killed when Dump succeeds.
//
// Dumps of trees whose roots share a working directory in which CRIU
// mounts a /proc (a tree in a PID namespace without a /proc of its own)
// run one at a time, across processes: a second one waits, before
// anything is frozen, until ctx ends.
func (c *Client) Dump(ctx context.Context, r Request) (*DumpResult, error) {
	if r.Opts == nil || r.Opts.GetPid() <= 0 {
		return nil, errors.New("criu dump: no pid given")
	}
	opts := proto.Clone(r.Opts).(*rpc.CriuOpts)
	opts.NotifyScripts = proto.Bool(true)
	r.Opts = opts
	unlock, err := c.lockDump(ctx, int(opts.GetPid()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	resp, log, err := c.do(ctx, "dump", rpc.CriuReqType_DUMP, &r)
	if err != nil {
		return nil, err
	}
	return &DumpResult{Restored: resp.GetDump().GetRestored(), Log: log}, nil
}

// RestoreResult is what a successful restore reports.
type RestoreResult struct {
	Pid int    // PID of the restored root task
	Log string // CRIU's log for the restore
}

// Restore restores the tree in ImagesDir (detached: the restored root is
// not a child of this process). With Opts.LeaveStopped the tasks are left
// stopped, to be resumed with SIGCONT.
func (c *Client) Restore(ctx context.Context, r Request) (*RestoreResult, error) {
	opts := &rpc.CriuOpts{}
	if r.Opts != nil {
		opts = proto.Clone(r.Opts).(*rpc.CriuOpts)
	}
	if r.Notify != nil {
		opts.NotifyScripts = proto.Bool(true)
	}
	r.Opts = opts
	resp, log, err := c.do(ctx, "restore", rpc.CriuReqType_RESTORE, &r)
	if err != nil {
		return nil, err
	}
	return &RestoreResult{Pid: int(resp.GetRestore().GetPid()), Log: log}, nil
}

// CPUInfoDump writes cpuinfo.img (this host's CPU features) into dir.
func (c *Client) CPUInfoDump(ctx context.Context, dir string) error {
	_, _, err := c.do(ctx, "cpuinfo-dump", rpc.CriuReqType_CPUINFO_DUMP, &Request{ImagesDir: dir})
	return err
}

// CPUInfoCheck checks the cpuinfo.img in dir against this host's CPU. caps
// is CRIU's cpu_cap mask (see the CPUCap* constants); 0 means CRIU's
// default.
func (c *Client) CPUInfoCheck(ctx context.Context, dir string, caps uint32) error {
	opts := &rpc.CriuOpts{}
	if caps != 0 {
		opts.CpuCap = proto.Uint32(caps)
	}
	_, _, err := c.do(ctx, "cpuinfo-check", rpc.CriuReqType_CPUINFO_CHECK, &Request{ImagesDir: dir, Opts: opts})
	return err
}

// CRIU's cpu_cap bits (criu/include/cr_options.h).
const (
	CPUCapFPU  uint32 = 1 << 0
	CPUCapCPU  uint32 = 1 << 1
	CPUCapINS  uint32 = 1 << 2
	CPUCapNone uint32 = 1 << 3 // check nothing
	CPUCapAll  uint32 = CPUCapFPU | CPUCapCPU | CPUCapINS
)

// Version asks CRIU for its version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	resp, _, err := c.do(ctx, "version", rpc.CriuReqType_VERSION, nil)
	if err != nil {
		return Version{}, err
	}
	v := resp.GetVersion()
	return Version{Major: int(v.GetMajorNumber()), Minor: int(v.GetMinorNumber()), Sublevel: int(v.GetSublevel()), GitID: v.GetGitid()}, nil
}

// Features is what CRIU's FEATURE_CHECK reports for this kernel.
type Features struct {
	MemTrack   bool // soft-dirty tracking: iterative pre-copy possible
	LazyPages  bool // userfaultfd (non-cooperative): post-copy possible
	PidfdStore bool
}

// Features asks CRIU which optional features work on this kernel.
func (c *Client) Features(ctx context.Context) (Features, error) {
	req := &rpc.CriuReq{
		Type:     rpc.CriuReqType_FEATURE_CHECK.Enum(),
		Features: &rpc.CriuFeatures{MemTrack: proto.Bool(true), LazyPages: proto.Bool(true), PidfdStore: proto.Bool(true)},
	}
	s, err := c.start(ctx, "feature-check", nil)
	if err != nil {
		return Features{}, err
	}
	resp, _, err := s.call(ctx, req, nil)
	werr := s.wait()
	if err != nil || !resp.GetSuccess() {
		return Features{}, s.failure(ctx, "", resp, nil, err, werr)
	}
	f := resp.GetFeatures()
	return Features{MemTrack: f.GetMemTrack(), LazyPages: f.GetLazyPages(), PidfdStore: f.GetPidfdStore()}, nil
}

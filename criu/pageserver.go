package criu

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// PageServer is a running CRIU page server: it receives the pages of one
// dump over the socket it was given and writes them into its images
// directory, then exits. It runs as a child of a `criu swrk` that stays
// alive to report its exit status (PAGE_SERVER_CHLD, then WAIT_PID).
type PageServer struct {
	Pid int // the page server process

	s       *session
	p       *prepared
	mu      sync.Mutex // guards pidfd
	pidfd   int
	once    sync.Once
	waitErr error
}

// StartPageServer starts a page server that reads a dump's pages from
// r.PageServer (one end of a connected socket, for example a socketpair
// whose other end is pumped from the network) into r.ImagesDir. With
// Opts.ParentImg set, the pages are stored relative to that parent
// (pre-copy). The page server runs until the dumping side closes the
// connection, ctx is cancelled, or Close is called; Wait reports how it
// ended.
func (c *Client) StartPageServer(ctx context.Context, r Request) (*PageServer, error) {
	if r.PageServer == nil {
		return nil, errors.New("criu page-server: no socket given (Request.PageServer)")
	}
	p, err := c.prepare("page-server", r)
	if err != nil {
		return nil, err
	}
	s, err := c.start(ctx, "page-server", p.files)
	if err != nil {
		p.close()
		return nil, err
	}
	req := &rpc.CriuReq{Type: rpc.CriuReqType_PAGE_SERVER_CHLD.Enum(), Opts: p.opts, KeepOpen: proto.Bool(true)}
	resp, _, callErr := s.call(ctx, req, nil)
	if callErr != nil || !resp.GetSuccess() || resp.GetPs().GetPid() <= 0 {
		werr := s.wait()
		p.close()
		e := s.failure(ctx, p.logPath, resp, nil, callErr, werr)
		if e.Err == nil && resp.GetSuccess() {
			e.Err = errors.New("criu reported no page server pid")
		}
		return nil, e
	}
	ps := &PageServer{Pid: int(resp.GetPs().GetPid()), s: s, p: p, pidfd: -1}
	// A pidfd keeps naming this process even after it exits and its PID
	// is reused, so that Close can never signal a stranger.
	if fd, err := unix.PidfdOpen(ps.Pid, 0); err == nil {
		ps.pidfd = fd
	}
	c.logger().Debug("page server started", "pid", ps.Pid)
	return ps, nil
}

// Wait waits for the page server to exit and returns nil if it served
// its dump successfully. It may be called once; Close may follow.
func (ps *PageServer) Wait(ctx context.Context) error {
	ps.once.Do(func() {
		stop := context.AfterFunc(ctx, ps.kill)
		defer stop()
		req := &rpc.CriuReq{Type: rpc.CriuReqType_WAIT_PID.Enum(), Pid: proto.Uint32(uint32(ps.Pid))}
		resp, _, callErr := ps.s.call(ctx, req, nil)
		werr := ps.s.wait()
		ps.p.close()
		if callErr == nil && resp.GetSuccess() {
			ws := unix.WaitStatus(resp.GetStatus())
			if ws.Exited() && ws.ExitStatus() == 0 {
				return
			}
			e := ps.s.failure(ctx, ps.p.logPath, resp, nil, nil, nil)
			if e.Err == nil {
				e.Err = fmt.Errorf("page server %s", describeStatus(ws))
			}
			ps.waitErr = e
			return
		}
		ps.waitErr = ps.s.failure(ctx, ps.p.logPath, resp, nil, callErr, werr)
	})
	return ps.waitErr
}

// Close kills the page server if it is still running, waits for its swrk
// parent, and releases its resources.
func (ps *PageServer) Close() error {
	ps.kill()
	_ = ps.Wait(context.Background()) // quick: the RPC socket is closed
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.pidfd >= 0 {
		unix.Close(ps.pidfd)
		ps.pidfd = -1
	}
	return nil
}

func (ps *PageServer) kill() {
	ps.mu.Lock()
	if ps.pidfd >= 0 {
		_ = unix.PidfdSendSignal(ps.pidfd, unix.SIGKILL, nil, 0)
	}
	ps.mu.Unlock()
	ps.s.conn.Close()
}

func describeStatus(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	case ws.Signaled():
		return fmt.Sprintf("killed by signal %d (%v)", int(ws.Signal()), ws.Signal())
	default:
		return fmt.Sprintf("ended with wait status %#x", int(ws))
	}
}

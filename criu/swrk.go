package criu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// swrkFd is the fd number of the RPC socket in the swrk child. The caller's
// extra files follow it (see Request.addFile).
const swrkFd = 3

// maxMsgSize bounds one RPC message from CRIU (CRIU's own limit is 16 KiB,
// CR_MAX_MSG_SIZE; this leaves room).
const maxMsgSize = 1 << 20

// Notification is one notification CRIU sends during an operation.
type Notification struct {
	Name string // see the Notify* constants
	Pid  int    // the root task's PID, where CRIU gives one
	// File is the fd CRIU passed with the notification (orphan-pts-master
	// sends the master side of a new pty), or nil. The callback owns it.
	File *os.File
}

// Notification names CRIU uses (its "action scripts").
const (
	NotifyPreDump             = "pre-dump"
	NotifyPostDump            = "post-dump"
	NotifyNetworkLock         = "network-lock"
	NotifyNetworkUnlock       = "network-unlock"
	NotifyPreRestore          = "pre-restore"
	NotifySetupNamespaces     = "setup-namespaces"
	NotifyPostSetupNamespaces = "post-setup-namespaces"
	NotifyPostRestore         = "post-restore"
	NotifyPreResume           = "pre-resume"
	NotifyPostResume          = "post-resume"
	NotifyOrphanPtsMaster     = "orphan-pts-master"
	NotifyStatusReady         = "status-ready"
)

// NotifyFunc receives CRIU's notifications. Returning an error answers the
// notification with failure: CRIU then aborts the operation (a dump
// resumes its tasks, a restore kills what it restored), and the returned
// *Error wraps the callback's error.
type NotifyFunc func(ctx context.Context, n Notification) error

// session is one running `criu swrk` child and its RPC socket.
type session struct {
	op     string
	cmd    *exec.Cmd
	conn   *net.UnixConn
	stderr *lockedBuffer
	buf    []byte
	oob    []byte
	waited bool
	werr   error
}

// start runs `criu swrk 3` with files as its fds 4, 5, ...
func (c *Client) start(ctx context.Context, op string, files []*os.File) (*session, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("criu %s: socketpair: %w", op, err)
	}
	ours := os.NewFile(uintptr(fds[0]), "criu-rpc")
	theirs := os.NewFile(uintptr(fds[1]), "criu-rpc-child")
	defer theirs.Close()
	fc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("criu %s: rpc socket: %w", op, err)
	}
	conn := fc.(*net.UnixConn)

	s := &session{
		op:     op,
		conn:   conn,
		stderr: &lockedBuffer{limit: 64 * 1024},
		buf:    make([]byte, maxMsgSize),
		oob:    make([]byte, unix.CmsgSpace(4*16)),
	}
	cmd := c.Command(ctx, "swrk", fmt.Sprint(swrkFd))
	cmd.ExtraFiles = append([]*os.File{theirs}, files...)
	cmd.Stdin = nil
	cmd.Stdout = s.stderr
	cmd.Stderr = s.stderr
	// On cancellation, close the socket first: CRIU notices at its next
	// exchange and aborts cleanly (resuming dumped tasks, killing half
	// restored ones). Only if it has not exited after KillGrace is it
	// killed.
	cmd.Cancel = func() error {
		conn.Close()
		return nil
	}
	cmd.WaitDelay = c.killGrace()
	// CRIU must not share our process group: a ^C meant for phaul would
	// kill it mid-dump instead of letting us cancel it cleanly.
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("criu %s: start %s: %w", op, c.Path, err)
	}
	s.cmd = cmd
	c.logger().Debug("criu started", "op", op, "pid", cmd.Process.Pid, "path", c.Path)
	return s, nil
}

// send writes one request.
func (s *session) send(req *rpc.CriuReq) error {
	data, err := proto.Marshal(req)
	if err != nil {
		return fmt.Errorf("marshal %v request: %w", req.GetType(), err)
	}
	if _, err := s.conn.Write(data); err != nil {
		return fmt.Errorf("send %v request: %w", req.GetType(), err)
	}
	return nil
}

// recv reads one response and the file CRIU sent with it, if any.
func (s *session) recv() (*rpc.CriuResp, *os.File, error) {
	n, oobn, flags, _, err := s.conn.ReadMsgUnix(s.buf, s.oob)
	if err != nil {
		return nil, nil, err
	}
	var file *os.File
	if oobn > 0 {
		files, perr := parseRights(s.oob[:oobn])
		if perr != nil {
			return nil, nil, perr
		}
		if len(files) > 0 {
			file = files[0]
			for _, f := range files[1:] {
				f.Close()
			}
		}
	}
	if n == 0 {
		if file != nil {
			file.Close()
		}
		return nil, nil, io.EOF
	}
	if flags&unix.MSG_TRUNC != 0 {
		if file != nil {
			file.Close()
		}
		return nil, nil, fmt.Errorf("message from criu larger than %d bytes", len(s.buf))
	}
	resp := &rpc.CriuResp{}
	if err := proto.Unmarshal(s.buf[:n], resp); err != nil {
		if file != nil {
			file.Close()
		}
		return nil, nil, fmt.Errorf("decode criu response: %w", err)
	}
	return resp, file, nil
}

func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message from criu: %w", err)
	}
	var files []*os.File
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "criu-fd"))
		}
	}
	return files, nil
}

// call sends req and serves notifications until the response to req
// arrives. A failed response is returned as is (with a nil error); the
// error is for failures of the exchange itself. notifyErr is the first
// error a notification callback returned.
func (s *session) call(ctx context.Context, req *rpc.CriuReq, notify NotifyFunc) (resp *rpc.CriuResp, notifyErr error, err error) {
	if err := s.send(req); err != nil {
		return nil, nil, err
	}
	for {
		resp, file, err := s.recv()
		if err != nil {
			return nil, notifyErr, err
		}
		if resp.GetType() != rpc.CriuReqType_NOTIFY {
			if file != nil {
				file.Close()
			}
			if !answers(resp.GetType(), req.GetType()) {
				return resp, notifyErr, fmt.Errorf("criu answered %v to a %v request", resp.GetType(), req.GetType())
			}
			return resp, notifyErr, nil
		}
		n := Notification{Name: resp.GetNotify().GetScript(), Pid: int(resp.GetNotify().GetPid()), File: file}
		var nerr error
		if ctx.Err() != nil {
			nerr = ctx.Err()
			if file != nil {
				file.Close()
			}
		} else if notify != nil {
			nerr = notify(ctx, n)
			if nerr == nil && ctx.Err() != nil {
				// Cancelled while the callback ran: still refuse.
				nerr = ctx.Err()
			}
		} else if file != nil {
			file.Close()
		}
		if nerr != nil && notifyErr == nil {
			notifyErr = fmt.Errorf("%s notification refused: %w", n.Name, nerr)
		}
		ack := &rpc.CriuReq{Type: rpc.CriuReqType_NOTIFY.Enum(), NotifySuccess: proto.Bool(nerr == nil)}
		if err := s.send(ack); err != nil {
			return nil, notifyErr, err
		}
	}
}

// wait closes the RPC socket and waits for the child to exit.
func (s *session) wait() error {
	if s.waited {
		return s.werr
	}
	s.conn.Close()
	s.werr = s.cmd.Wait()
	s.waited = true
	return s.werr
}

// lockedBuffer keeps at most limit bytes of what is written to it (the
// first ones).
type lockedBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - b.buf.Len(); room > 0 {
		if len(p) > room {
			b.buf.Write(p[:room])
		} else {
			b.buf.Write(p)
		}
	}
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// isClosed reports whether err says the RPC socket was closed under us.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)
}

// answers reports whether a response of type got answers a request of type
// sent. CRIU answers PAGE_SERVER_CHLD with PAGE_SERVER, and an invalid
// request with EMPTY.
func answers(got, sent rpc.CriuReqType) bool {
	switch {
	case got == sent, got == rpc.CriuReqType_EMPTY:
		return true
	case sent == rpc.CriuReqType_PAGE_SERVER_CHLD && got == rpc.CriuReqType_PAGE_SERVER:
		return true
	}
	return false
}

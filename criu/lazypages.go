package criu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// LazyPagesLog is the name of the lazy-pages daemon's log in its work
// directory.
const LazyPagesLog = "lazy-pages.log"

// LazyPagesSocket is the UNIX socket the daemon listens on in its work
// directory; a restore with lazy_pages and the same work directory
// connects to it and hands it the tasks' userfaultfds.
const LazyPagesSocket = "lazy-pages.socket"

// LazyPagesRequest describes a lazy-pages daemon: the restore's images,
// the work directory it shares with the restore, and the socket it asks
// for pages over (PS_IOV_GET requests, answered by a page server).
type LazyPagesRequest struct {
	ImagesDir  string
	WorkDir    string
	PageServer *os.File
}

// LazyPages is a running `criu lazy-pages` daemon (there is no RPC for it).
// It takes the userfaultfds of one lazy restore, fills each page on its
// first fault or in the background with pages it asks the page server
// for, and exits 0 once every lazy page of every task is in place.
type LazyPages struct {
	Pid int
	Log string

	cmd     *os.Process
	done    chan struct{}
	state   *os.ProcessState
	waitErr error
	stderr  *lockedBuffer
}

// StartLazyPages starts the daemon and returns once it listens for the
// restore (CRIU's status fd), or with its error.
func (c *Client) StartLazyPages(ctx context.Context, r LazyPagesRequest) (*LazyPages, error) {
	if r.PageServer == nil || r.ImagesDir == "" || r.WorkDir == "" {
		return nil, errors.New("criu lazy-pages: images, work directory and page-server socket are all needed")
	}
	st, wr, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("criu lazy-pages: %w", err)
	}
	defer st.Close()
	level := c.LogLevel
	if level <= 0 || level > 4 {
		level = 4
	}
	// fd 3 is the page-server socket, fd 4 the status pipe.
	cmd := c.Command(context.WithoutCancel(ctx), "lazy-pages", "--page-server", "--ps-socket", "3", "--status-fd", "4",
		"-D", r.ImagesDir, "-W", r.WorkDir, "-o", LazyPagesLog, fmt.Sprintf("-v%d", level))
	cmd.ExtraFiles = []*os.File{r.PageServer, wr}
	l := &LazyPages{Log: filepath.Join(r.WorkDir, LazyPagesLog), done: make(chan struct{}), stderr: &lockedBuffer{limit: 64 * 1024}}
	cmd.Stdout, cmd.Stderr = l.stderr, l.stderr
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	wr.Close()
	if err != nil {
		return nil, fmt.Errorf("criu lazy-pages: start %s: %w", c.Path, err)
	}
	l.Pid, l.cmd = cmd.Process.Pid, cmd.Process
	go func() {
		l.state, l.waitErr = cmd.Process.Wait()
		close(l.done)
	}()
	ready := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := st.Read(b[:])
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		l.Kill()
		if werr := l.Wait(); werr != nil {
			return nil, werr
		}
		return nil, &Error{Op: "lazy-pages", Err: fmt.Errorf("not ready: %w", err)}
	}
	c.logger().Debug("lazy-pages daemon started", "pid", l.Pid)
	return l, nil
}

// Done is closed when the daemon has exited.
func (l *LazyPages) Done() <-chan struct{} { return l.done }

// Wait waits for the daemon to exit: nil when it exited 0 (every page
// arrived), otherwise an *Error with the Error lines of its log.
func (l *LazyPages) Wait() error {
	<-l.done
	if l.waitErr == nil && l.state.Success() {
		return nil
	}
	e := &Error{Op: "lazy-pages", Log: l.Log, Lines: readErrorLines(l.Log), Stderr: l.stderr.String(), Err: l.waitErr}
	if e.Err == nil {
		e.Err = errors.New(describeStatus(unix.WaitStatus(l.state.Sys().(syscall.WaitStatus))))
	}
	return e
}

// Kill kills the daemon if it still runs. Its userfaultfds close with it:
// the tasks' missing pages would then be filled with zeros at their next
// fault, so a caller kills the restored tasks first.
func (l *LazyPages) Kill() {
	select {
	case <-l.done:
	default:
		_ = l.cmd.Kill()
	}
}

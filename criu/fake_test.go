package criu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// The test binary doubles as a fake `criu swrk 3` when PHAUL_FAKE_SWRK
// names a behaviour. It speaks the real wire format on fd 3, so these
// tests exercise the client's framing, notifications, fd passing, error
// assembly and cancellation without root or CRIU.

func TestMain(m *testing.M) {
	if mode := os.Getenv("PHAUL_FAKE_SWRK"); mode != "" {
		os.Exit(fakeSwrk(mode))
	}
	os.Exit(m.Run())
}

func fakeSwrk(mode string) int {
	f := os.NewFile(3, "rpc")
	c, err := net.FileConn(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake: fileconn:", err)
		return 1
	}
	conn := c.(*net.UnixConn)
	buf := make([]byte, 1<<16)
	recv := func() *rpc.CriuReq {
		n, err := conn.Read(buf)
		if err != nil {
			return nil
		}
		req := &rpc.CriuReq{}
		if err := proto.Unmarshal(buf[:n], req); err != nil {
			return nil
		}
		return req
	}
	send := func(resp *rpc.CriuResp, oob []byte) {
		data, _ := proto.Marshal(resp)
		conn.WriteMsgUnix(data, oob, nil)
	}
	notify := func(name string, oob []byte) bool {
		send(&rpc.CriuResp{Type: rpc.CriuReqType_NOTIFY.Enum(), Success: proto.Bool(true),
			Notify: &rpc.CriuNotify{Script: proto.String(name), Pid: proto.Int32(77)}}, oob)
		ack := recv()
		return ack != nil && ack.GetType() == rpc.CriuReqType_NOTIFY && ack.GetNotifySuccess()
	}
	writeLog := func(req *rpc.CriuReq, text string) {
		o := req.GetOpts()
		dir := fmt.Sprintf("/proc/%d/fd/%d", os.Getppid(), o.GetImagesDirFd())
		os.WriteFile(filepath.Join(dir, o.GetLogFile()), []byte(text), 0o644)
	}
	req := recv()
	if req == nil {
		return 1
	}
	switch mode {
	case "dump":
		ok := notify(NotifyPreDump, nil) && notify(NotifyPostDump, nil)
		resp := &rpc.CriuResp{Type: req.Type, Success: proto.Bool(ok)}
		if !ok {
			writeLog(req, "(00.000100) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n"+
				"(00.100000) Error (criu/cr-dump.c:2099): Post dump script passed with 1\n"+
				"(00.100001) Error (criu/cr-dump.c:2100): Dumping FAILED.\n")
			resp.CrErrmsg = proto.String("rlimit: Can't setup RLIMIT_NOFILE for self")
		}
		send(resp, nil)
	case "fd":
		var p [2]int
		unix.Pipe(p[:])
		unix.Write(p[1], []byte("pty master"))
		notify(NotifyOrphanPtsMaster, unix.UnixRights(p[0]))
		send(&rpc.CriuResp{Type: req.Type, Success: proto.Bool(true), Restore: &rpc.CriuRestoreResp{Pid: proto.Int32(4242)}}, nil)
	case "exit":
		fmt.Fprintln(os.Stderr, "Error (criu/crtools.c:1): fake: cannot start")
		return 1
	case "garbage":
		conn.Write([]byte{0xff, 0xff, 0xff, 0xff})
		recv()
	case "wrongtype":
		send(&rpc.CriuResp{Type: rpc.CriuReqType_RESTORE.Enum(), Success: proto.Bool(true)}, nil)
	case "hang":
		// Ignore the closed socket, like a CRIU stuck in the kernel.
		time.Sleep(time.Hour)
	case "version":
		send(&rpc.CriuResp{Type: req.Type, Success: proto.Bool(true),
			Version: &rpc.CriuVersion{MajorNumber: proto.Int32(4), MinorNumber: proto.Int32(2), Sublevel: proto.Int32(1)}}, nil)
	}
	return 0
}

func fakeClient(t *testing.T, mode string) *Client {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// GORACE: a -race binary otherwise sleeps a second at exit.
	return &Client{Path: exe, Env: []string{"PHAUL_FAKE_SWRK=" + mode, "GORACE=atexit_sleep_ms=0"}, KillGrace: 300 * time.Millisecond}
}

func dumpReq(dir string, notify NotifyFunc) Request {
	return Request{ImagesDir: dir, Opts: &rpc.CriuOpts{Pid: proto.Int32(1234)}, Notify: notify}
}

func TestFakeNotificationsAcknowledged(t *testing.T) {
	var seen []string
	notify := func(ctx context.Context, n Notification) error {
		seen = append(seen, fmt.Sprintf("%s/%d", n.Name, n.Pid))
		return nil
	}
	if _, err := fakeClient(t, "dump").Dump(context.Background(), dumpReq(t.TempDir(), notify)); err != nil {
		t.Fatalf("dump: %v", err)
	}
	if got := strings.Join(seen, ","); got != "pre-dump/77,post-dump/77" {
		t.Errorf("notifications = %s", got)
	}
}

var errNo = errors.New("destination restore failed")

func TestFakeRefusedPostDumpRollsBack(t *testing.T) {
	dir := t.TempDir()
	notify := func(ctx context.Context, n Notification) error {
		if n.Name == NotifyPostDump {
			return errNo
		}
		return nil
	}
	_, err := fakeClient(t, "dump").Dump(context.Background(), dumpReq(dir, notify))
	if !errors.Is(err, errNo) {
		t.Fatalf("want the callback's error wrapped, got %v", err)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("want *Error, got %T", err)
	}
	want := []string{"Error (criu/cr-dump.c:2099): Post dump script passed with 1", "Error (criu/cr-dump.c:2100): Dumping FAILED."}
	if strings.Join(ce.Lines, "|") != strings.Join(want, "|") {
		t.Errorf("lines = %q, want %q (the RLIMIT noise dropped)", ce.Lines, want)
	}
	if ce.Log != filepath.Join(dir, "dump.log") {
		t.Errorf("log = %q", ce.Log)
	}
	if !strings.Contains(err.Error(), "post-dump notification refused") {
		t.Errorf("message does not name the refusal: %v", err)
	}
}

func TestFakeReceivesFd(t *testing.T) {
	var got string
	notify := func(ctx context.Context, n Notification) error {
		if n.Name != NotifyOrphanPtsMaster || n.File == nil {
			return fmt.Errorf("unexpected %+v", n)
		}
		defer n.File.Close()
		b, _ := io.ReadAll(io.LimitReader(n.File, 10))
		got = string(b)
		return nil
	}
	res, err := fakeClient(t, "fd").Restore(context.Background(), Request{ImagesDir: t.TempDir(), Notify: notify})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if res.Pid != 4242 || got != "pty master" {
		t.Errorf("pid %d, read %q through the passed fd", res.Pid, got)
	}
}

func TestFakeFailures(t *testing.T) {
	tests := []struct {
		mode string
		want string
	}{
		{"exit", "fake: cannot start"},
		{"garbage", "decode criu response"},
		{"wrongtype", "criu answered RESTORE to a DUMP request"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			_, err := fakeClient(t, tt.mode).Dump(context.Background(), dumpReq(t.TempDir(), nil))
			var ce *Error
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want *Error containing %q, got %v", tt.want, err)
			}
		})
	}
}

func TestFakeCancelKillsHungCRIU(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := fakeClient(t, "hang").Dump(ctx, dumpReq(t.TempDir(), nil))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want DeadlineExceeded, got %v", err)
	}
	// 200 ms to the deadline, 300 ms of grace, then SIGKILL.
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
}

func TestFakeVersion(t *testing.T) {
	v, err := fakeClient(t, "version").Version(context.Background())
	if err != nil || v != (Version{Major: 4, Minor: 2, Sublevel: 1}) {
		t.Fatalf("version = %v, %v", v, err)
	}
}

func TestDumpNeedsPid(t *testing.T) {
	_, err := fakeClient(t, "dump").Dump(context.Background(), Request{ImagesDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "no pid") {
		t.Fatalf("got %v", err)
	}
}

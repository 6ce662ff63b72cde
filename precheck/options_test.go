package precheck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/pb"
)

func TestInTreeConnections(t *testing.T) {
	est := func(la string, lp uint32, ra string, rp uint32) *pb.SocketFact {
		return &pb.SocketFact{Family: "inet", Proto: "tcp", State: "ESTABLISHED", LocalAddr: la, LocalPort: lp, RemoteAddr: ra, RemotePort: rp}
	}
	listen := &pb.SocketFact{Family: "inet", Proto: "tcp", State: "LISTEN", LocalAddr: "127.0.0.1", LocalPort: 80}
	tests := []struct {
		name  string
		socks []*pb.SocketFact
		n     int
		all   bool
	}{
		{"none", []*pb.SocketFact{listen}, 0, false},
		{"both ends", []*pb.SocketFact{listen, est("127.0.0.1", 80, "127.0.0.1", 5000), est("127.0.0.1", 5000, "127.0.0.1", 80)}, 2, true},
		{"one end", []*pb.SocketFact{est("10.0.0.1", 80, "10.0.0.9", 5000)}, 1, false},
		{"a pair and an outsider", []*pb.SocketFact{est("127.0.0.1", 80, "127.0.0.1", 5000), est("127.0.0.1", 5000, "127.0.0.1", 80), est("10.0.0.1", 80, "10.0.0.9", 5000)}, 3, false},
	}
	for _, tt := range tests {
		if n, all := InTreeConnections(tt.socks); n != tt.n || all != tt.all {
			t.Errorf("%s: %d, %v; want %d, %v", tt.name, n, all, tt.n, tt.all)
		}
	}
}

func TestFileLocks(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "locked"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if why := FileLocks(TreeFds(os.Getpid())); why != "" {
		t.Fatalf("no lock yet, and: %s", why)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if why := FileLocks(TreeFds(os.Getpid())); !strings.Contains(why, "locked") || !strings.Contains(why, "FLOCK") {
		t.Errorf("flock held: %q", why)
	}
}

// TestHeld: what this process holds is gathered as the source does
// (HeldBy), and judged as the destination does (judgeHeld), from this
// host (one kernel, one /dev/pts) and as from another kernel: a lock
// fails only where the destination sees the same file, a FIFO only with
// data queued in the same FIFO (or where it is missing), a pty master
// where its index is taken; a lock on a deleted file is not held.
func TestHeld(t *testing.T) {
	dir := t.TempDir()
	self := os.Getpid()
	env := &Env{Proc: "/proc"}
	judge := func(boot string) *pb.Verdict {
		f := &pb.SourceFacts{Host: &pb.HostInfo{BootId: boot}, Held: HeldBy(TreeFds(self)), Tasks: []*pb.TaskFact{{Pid: int32(self)}}}
		return judgeHeld(context.Background(), f, Options{}, env)
	}
	if v := judge(BootID()); v != nil {
		t.Fatalf("nothing held yet, and: %v", v)
	}
	f, err := os.Create(filepath.Join(dir, "locked"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if v := judge(BootID()); v.Result != pb.Verdict_FAIL || !strings.Contains(text(v), "holds a lock on "+f.Name()+", and this host sees the same file (one kernel") {
		t.Errorf("a lock, one kernel: %v", v)
	}
	if v := judge("another-kernel"); v.Result != pb.Verdict_PASS {
		t.Errorf("a lock on a local file, another kernel: %v", v)
	}
	os.Remove(f.Name())
	if v := judge(BootID()); v != nil {
		t.Errorf("a lock on a deleted file: %v", v)
	}

	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if v := judge(BootID()); v.Result != pb.Verdict_PASS {
		t.Errorf("an empty FIFO: %v", v)
	}
	p.Write([]byte("hello"))
	if v := judge(BootID()); v.Result != pb.Verdict_FAIL || !strings.Contains(text(v), "with 5 bytes queued, and this host sees the same FIFO") {
		t.Errorf("a FIFO with 5 bytes, one kernel: %v", v)
	}
	if v := judge("another-kernel"); v.Result != pb.Verdict_PASS {
		t.Errorf("a FIFO, another kernel: %v", v)
	}
	elsewhere := &pb.SourceFacts{Host: &pb.HostInfo{BootId: "another-kernel"}, Held: HeldBy(TreeFds(self))}
	elsewhere.Held[0].Path = filepath.Join(dir, "nofifo")
	if v := judgeHeld(context.Background(), elsewhere, Options{}, env); v.Result != pb.Verdict_FAIL || !strings.Contains(text(v), "nofifo, missing here") {
		t.Errorf("a FIFO missing here: %v", v)
	}
	os.WriteFile(elsewhere.Held[0].Path, nil, 0o600)
	if v := judgeHeld(context.Background(), elsewhere, Options{}, env); v.Result != pb.Verdict_FAIL || !strings.Contains(text(v), "which is not a FIFO here") {
		t.Errorf("a FIFO that is a file here: %v", v)
	}
	p.Close()

	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	idx, err := unix.IoctlGetUint32(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	if v := judge(BootID()); v.Result != pb.Verdict_FAIL || !strings.Contains(text(v), fmt.Sprintf("the master of pty %d, and pty %d is taken here, by pid %d of the source tree itself", idx, idx, self)) {
		t.Errorf("a pty master, one kernel and one /dev/pts: %v", v)
	}
	// Another host's /dev/pts: the index free, then taken.
	env.DevPts = t.TempDir()
	if v := judge("another-kernel"); v.Result != pb.Verdict_PASS {
		t.Errorf("a pty master, its index free on the destination: %v", v)
	}
	os.WriteFile(filepath.Join(env.DevPts, fmt.Sprint(idx)), nil, 0o600)
	if v := judge("another-kernel"); v.Result != pb.Verdict_FAIL || !strings.Contains(text(v), fmt.Sprintf("pty %d is taken here", idx)) {
		t.Errorf("a pty master, its index taken on the destination: %v", v)
	}
}

func TestJudgeUnfaithful(t *testing.T) {
	self := os.Getpid()
	plain, err := unix.Eventfd(3, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(plain)
	if vs := JudgeUnfaithful(TreeFds(self), Options{}); len(vs) != 0 {
		t.Fatalf("a plain eventfd: %v", vs)
	}
	sem, err := unix.Eventfd(3, unix.EFD_SEMAPHORE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sem)
	vs := JudgeUnfaithful(TreeFds(self), Options{})
	if len(vs) != 1 || vs[0].Check != "criu" || !strings.Contains(text(vs[0]), fmt.Sprintf("fd %d is an eventfd in semaphore mode", sem)) {
		t.Errorf("a semaphore eventfd: %v", vs)
	}
}

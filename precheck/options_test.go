package precheck

import (
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

// TestJudgeShared: a lock the tree holds, and a FIFO with data queued, fail
// the files check when the destination shares the kernel; a lock on a
// local file does not from another kernel, nor a lock on a deleted file.
func TestJudgeShared(t *testing.T) {
	dir := t.TempDir()
	self := os.Getpid()
	if vs := JudgeShared(TreeFds(self), BootID(), Options{}); len(vs) != 0 {
		t.Fatalf("nothing held yet, and: %v", vs)
	}
	f, err := os.Create(filepath.Join(dir, "locked"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	vs := JudgeShared(TreeFds(self), BootID(), Options{})
	if len(vs) != 1 || vs[0].Result != pb.Verdict_FAIL || !strings.Contains(text(vs[0]), "holds a lock on "+f.Name()) {
		t.Errorf("a lock, one kernel: %v", vs)
	}
	if vs := JudgeShared(TreeFds(self), "another-kernel", Options{}); len(vs) != 0 {
		t.Errorf("a lock on a local file, another kernel: %v", vs)
	}
	if vs := JudgeShared(TreeFds(self), BootID(), Options{Skip: []string{"files"}}); len(vs) != 0 {
		t.Errorf("skipped, and: %v", vs)
	}
	os.Remove(f.Name())
	if vs := JudgeShared(TreeFds(self), BootID(), Options{}); len(vs) != 0 {
		t.Errorf("a lock on a deleted file: %v", vs)
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
	if vs := JudgeShared(TreeFds(self), BootID(), Options{}); len(vs) != 0 {
		t.Errorf("an empty FIFO: %v", vs)
	}
	p.Write([]byte("hello"))
	vs = JudgeShared(TreeFds(self), BootID(), Options{})
	if len(vs) != 1 || !strings.Contains(text(vs[0]), "with 5 bytes queued") {
		t.Errorf("a FIFO with 5 bytes, one kernel: %v", vs)
	}
	if vs := JudgeShared(TreeFds(self), "another-kernel", Options{}); len(vs) != 0 {
		t.Errorf("a FIFO, another kernel: %v", vs)
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
	vs = JudgeShared(TreeFds(self), BootID(), Options{})
	if len(vs) != 1 || !strings.Contains(text(vs[0]), fmt.Sprintf("the master of pty %d", idx)) {
		t.Errorf("a pty master, one kernel: %v", vs)
	}
	if vs := JudgeShared(TreeFds(self), "another-kernel", Options{}); len(vs) != 0 {
		t.Errorf("a pty master, another kernel: %v", vs)
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

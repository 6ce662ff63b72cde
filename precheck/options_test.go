package precheck

import (
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
	self := []int{os.Getpid()}
	if why := FileLocks("", self); why != "" {
		t.Fatalf("no lock yet, and: %s", why)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if why := FileLocks("", self); !strings.Contains(why, "locked") || !strings.Contains(why, "FLOCK") {
		t.Errorf("flock held: %q", why)
	}
}

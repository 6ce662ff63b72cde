package tty

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	ttyimg "github.com/checkpoint-restore/go-criu/v7/crit/images/tty"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/criuimg"
	"github.com/phaul/phaul/internal/testutil"
)

func TestKind(t *testing.T) {
	for _, tc := range []struct {
		maj, min uint32
		want     string
	}{
		{136, 3, "slave"}, {143, 255, "slave"}, {5, 2, "master"}, {128, 0, "master"},
		{5, 0, "ctty"}, {5, 1, "other"}, {4, 1, "other"}, {4, 64, "other"}, {188, 0, "other"},
		{1, 3, ""}, {8, 0, ""},
	} {
		if got := kind(unix.Mkdev(tc.maj, tc.min)); got != tc.want {
			t.Errorf("kind(%d:%d) = %q, want %q", tc.maj, tc.min, got, tc.want)
		}
	}
	if n := ptsIndex(unix.Mkdev(137, 4)); n != 260 {
		t.Errorf("ptsIndex(137:4) = %d, want 260", n)
	}
}

func TestKey(t *testing.T) {
	// The form CRIU logs: tty[rdev:dev] in hex.
	if k := Key(unix.Mkdev(136, 0), 0x19); k != "tty[8800:19]" {
		t.Errorf("Key = %s", k)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]string{"": "pty", "pty": "pty", "null": "null", "file:/var/log/w.log": "file:/var/log/w.log"} {
		m, err := ParseMode(in)
		if err != nil || m.String() != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %s", in, m, err, want)
		}
	}
	for _, bad := range []string{"tty", "file:", "file:rel/path", "file:/a/../b", "PTY"} {
		if _, err := ParseMode(bad); err == nil || !strings.Contains(err.Error(), "--tty") {
			t.Errorf("ParseMode(%q) = %v, want an error naming --tty", bad, err)
		}
	}
}

// TestExternal: a pty this process opened is not external to it (it holds
// the master); a child given only the slave has an external terminal.
func TestExternal(t *testing.T) {
	m, s, err := Open()
	if err != nil {
		testutil.SkipOrFail(t, "no pty here: %v", err)
	}
	defer m.Close()
	defer s.Close()
	self := os.Getpid()
	ts, err := External([]int{self})
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Fstat(int(s.Fd()), &st)
	key := Key(st.Rdev, st.Dev)
	for _, x := range ts {
		if x.Key == key {
			t.Errorf("the pty whose master this process holds is reported external: %+v", x)
		}
	}
	cmd := exec.Command("sleep", "30")
	cmd.Stdout, cmd.Stderr = s, s
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ts, err = External([]int{cmd.Process.Pid})
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || ts[0].Key != key || ts[0].Ctty || !strings.HasPrefix(ts[0].Path, "/dev/pts/") ||
		strings.Join(ts[0].Users, ",") != fmt.Sprintf("pid %d fd 1,pid %d fd 2", cmd.Process.Pid, cmd.Process.Pid) {
		t.Errorf("External(child on the slave) = %+v, want %s on fds 1 and 2", ts, key)
	}
}

func writeImage(t testing.TB, path, magic string, entries ...proto.Message) {
	t.Helper()
	img := &crit.CriuImage{Magic: magic}
	for _, e := range entries {
		img.Entries = append(img.Entries, &crit.CriuEntry{Message: e})
	}
	if err := criuimg.Write(path, img); err != nil {
		t.Fatal(err)
	}
}

func TestDetachSessions(t *testing.T) {
	dir := t.TempDir()
	u := proto.Uint32
	// A shell job: 42 in the session 40 of a shell outside the tree; 50
	// leads a session of its own inside the tree.
	writeImage(t, filepath.Join(dir, "pstree.img"), "PSTREE",
		&pstree.PstreeEntry{Pid: u(42), Ppid: u(40), Pgid: u(42), Sid: u(40)},
		&pstree.PstreeEntry{Pid: u(50), Ppid: u(42), Pgid: u(50), Sid: u(50)})
	ext := ttyimg.TtyType_EXT_TTY
	pty := ttyimg.TtyType_PTY
	writeImage(t, filepath.Join(dir, "tty-info.img"), "TTY_INFO",
		&ttyimg.TtyInfoEntry{Id: u(1), Type: &ext, Locked: proto.Bool(false), Exclusive: proto.Bool(false), PacketMode: proto.Bool(false), Sid: u(40), Pgrp: u(42), Rdev: u(0x8800)},
		&ttyimg.TtyInfoEntry{Id: u(2), Type: &ext, Locked: proto.Bool(false), Exclusive: proto.Bool(false), PacketMode: proto.Bool(false), Sid: u(50), Pgrp: u(50), Rdev: u(0x8801)},
		&ttyimg.TtyInfoEntry{Id: u(3), Type: &pty, Locked: proto.Bool(false), Exclusive: proto.Bool(false), PacketMode: proto.Bool(false), Sid: u(40), Pgrp: u(42), Rdev: u(0x8802), Pty: &ttyimg.TtyPtyEntry{Index: u(2)}})
	n, err := DetachSessions(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("changed %d terminals, want 1", n)
	}
	img, err := criuimg.Read(filepath.Join(dir, "tty-info.img"), "TTY_INFO", &ttyimg.TtyInfoEntry{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32][2]uint32{1: {0, 0}, 2: {50, 50}, 3: {40, 42}}
	for _, e := range img.Entries {
		ti := e.Message.(*ttyimg.TtyInfoEntry)
		if w := want[ti.GetId()]; ti.GetSid() != w[0] || ti.GetPgrp() != w[1] {
			t.Errorf("tty %d: sid %d pgrp %d, want %v", ti.GetId(), ti.GetSid(), ti.GetPgrp(), w)
		}
	}
	// No terminals at all: nothing to do.
	os.Remove(filepath.Join(dir, "tty-info.img"))
	if n, err := DetachSessions(dir); n != 0 || err != nil {
		t.Errorf("without tty-info.img: %d, %v", n, err)
	}
}

// FuzzDetachSessions: pstree.img and tty-info.img arrive from the source
// over the network; decoding and rewriting them must not panic, and must
// leave nothing but the two images in the directory.
func FuzzDetachSessions(f *testing.F) {
	dir := f.TempDir()
	u := proto.Uint32
	ext := ttyimg.TtyType_EXT_TTY
	writeImage(f, filepath.Join(dir, "pstree.img"), "PSTREE", &pstree.PstreeEntry{Pid: u(42), Ppid: u(40), Pgid: u(42), Sid: u(40)})
	writeImage(f, filepath.Join(dir, "tty-info.img"), "TTY_INFO",
		&ttyimg.TtyInfoEntry{Id: u(1), Type: &ext, Locked: proto.Bool(false), Exclusive: proto.Bool(false), PacketMode: proto.Bool(false), Sid: u(40), Pgrp: u(42), Rdev: u(0x8800)})
	ps, _ := os.ReadFile(filepath.Join(dir, "pstree.img"))
	ti, _ := os.ReadFile(filepath.Join(dir, "tty-info.img"))
	f.Add(ps, ti)
	f.Add(ps, []byte{})
	f.Add([]byte{0x54, 0x56, 0x23, 0x55, 0xff, 0xff, 0xff, 0x7f}, ti)
	f.Fuzz(func(t *testing.T, psImg, ttyImg []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "pstree.img"), psImg, 0o600)
		os.WriteFile(filepath.Join(dir, "tty-info.img"), ttyImg, 0o600)
		DetachSessions(dir)
		if e, _ := os.ReadDir(dir); len(e) != 2 {
			t.Fatalf("left %d files", len(e))
		}
	})
}

// TestDetachSessionsRefusesBadFraming: an entry whose size runs past the
// end of the image (go-criu's decoder would allocate it: 3.4 GiB here,
// found by FuzzDetachSessions) or another image's magic is refused before
// decoding.
func TestDetachSessionsRefusesBadFraming(t *testing.T) {
	dir := t.TempDir()
	u := proto.Uint32
	writeImage(t, filepath.Join(dir, "pstree.img"), "PSTREE", &pstree.PstreeEntry{Pid: u(42), Ppid: u(40), Pgid: u(42), Sid: u(40)})
	good, _ := os.ReadFile(filepath.Join(dir, "pstree.img"))
	hdr := good[:8] // IMG_COMMON and PSTREE
	for name, data := range map[string][]byte{
		"huge entry":    append(append([]byte{}, hdr...), 0xdb, 0xdb, 0xdb, 0xdb, 1, 2, 3),
		"short size":    append(append([]byte{}, hdr...), 1, 0),
		"another magic": append([]byte{}, good[:4]...), // IMG_COMMON alone: no image magic
	} {
		t.Run(name, func(t *testing.T) {
			os.WriteFile(filepath.Join(dir, "pstree.img"), data, 0o600)
			if _, err := DetachSessions(dir); err == nil {
				t.Error("accepted")
			}
		})
	}
	writeImage(t, filepath.Join(dir, "pstree.img"), "TTY_INFO")
	if _, err := DetachSessions(dir); err == nil || !strings.Contains(err.Error(), "want PSTREE") {
		t.Errorf("a TTY_INFO image as pstree.img: %v", err)
	}
}

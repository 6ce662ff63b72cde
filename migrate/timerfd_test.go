package migrate

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/timerfd"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/criuimg"
)

// TestRearmTimerfds: a periodic, relative timerfd CRIU dumped with it_value
// 0 is made due one interval after the restore; an armed one, a one-shot
// one, an absolute one and other files are left as they are.
func TestRearmTimerfds(t *testing.T) {
	u32, u64 := proto.Uint32, proto.Uint64
	tfd := func(id uint32, vsec, isec uint64, flags uint32) *crit.CriuEntry {
		return &crit.CriuEntry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_TIMERFD.Enum(), Id: u32(id), Tfd: &timerfd.TimerfdEntry{
			Id: u32(id), Flags: u32(0), Fown: &fown.FownEntry{Uid: u32(0), Euid: u32(0), Signum: u32(0), PidType: u32(0), Pid: u32(0)},
			Clockid: u32(1), Ticks: u64(1), SettimeFlags: u32(flags), Vsec: u64(vsec), Vnsec: u64(0), Isec: u64(isec), Insec: u64(0)}}}
	}
	dir := t.TempDir()
	img := &crit.CriuImage{Magic: "FILES", Entries: []*crit.CriuEntry{
		tfd(1, 0, 60, 0),  // expired, unread: mended
		tfd(2, 30, 60, 0), // armed
		tfd(3, 0, 0, 0),   // disarmed one-shot
		tfd(4, 0, 60, 1),  // absolute
	}}
	if err := criuimg.Write(filepath.Join(dir, "files.img"), img); err != nil {
		t.Fatal(err)
	}
	n, err := rearmTimerfds(dir)
	if err != nil || n != 1 {
		t.Fatalf("rearmTimerfds: %d, %v; want 1", n, err)
	}
	got, err := criuimg.Read(filepath.Join(dir, "files.img"), "FILES", &fdinfo.FileEntry{})
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{60, 30, 0, 0}
	for i, e := range got.Entries {
		if v := e.Message.(*fdinfo.FileEntry).GetTfd().GetVsec(); v != want[i] {
			t.Errorf("timerfd %d: it_value %d s, want %d", i+1, v, want[i])
		}
	}
	if n, err := rearmTimerfds(t.TempDir()); n != 0 || err != nil {
		t.Errorf("no files.img: %d, %v", n, err)
	}
}

// FuzzRearmTimerfds: files.img arrives from the source; mending its
// timerfds must never panic, whatever it holds.
func FuzzRearmTimerfds(f *testing.F) {
	dir := f.TempDir()
	img := &crit.CriuImage{Magic: "FILES", Entries: []*crit.CriuEntry{{Message: &fdinfo.FileEntry{
		Type: fdinfo.FdTypes_TIMERFD.Enum(), Id: proto.Uint32(1), Tfd: &timerfd.TimerfdEntry{Id: proto.Uint32(1), Flags: proto.Uint32(0),
			Fown:    &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)},
			Clockid: proto.Uint32(1), Ticks: proto.Uint64(1), SettimeFlags: proto.Uint32(0), Vsec: proto.Uint64(0), Vnsec: proto.Uint64(0),
			Isec: proto.Uint64(60), Insec: proto.Uint64(0)}}}}}
	if err := criuimg.Write(filepath.Join(dir, "files.img"), img); err != nil {
		f.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, "files.img"))
	f.Add(good)
	f.Add(good[:10])
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "files.img"), data, 0o600)
		rearmTimerfds(dir)
	})
}

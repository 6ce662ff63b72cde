package migrate

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/cgroup"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/criuimg"
)

func cgProp(name, value string) *cgroup.CgroupPropEntry {
	return &cgroup.CgroupPropEntry{Name: proto.String(name), Value: proto.String(value)}
}

func cgMember(name, path string) *cgroup.CgMemberEntry {
	return &cgroup.CgMemberEntry{Name: proto.String(name), Path: proto.String(path)}
}

// writeHoldImages writes inventory.img (root_cg_set rootSet, none if 0)
// and, unless e is nil, cgroup.img with e to a new directory.
func writeHoldImages(t testing.TB, rootSet uint32, e *cgroup.CgroupEntry) string {
	t.Helper()
	dir := t.TempDir()
	ie := &inventory.InventoryEntry{ImgVersion: proto.Uint32(2)}
	if rootSet != 0 {
		ie.RootCgSet = proto.Uint32(rootSet)
	}
	if err := criuimg.Write(filepath.Join(dir, "inventory.img"), &crit.CriuImage{Magic: "INVENTORY", Entries: []*crit.CriuEntry{{Message: ie}}}); err != nil {
		t.Fatal(err)
	}
	if e != nil {
		if err := criuimg.Write(filepath.Join(dir, "cgroup.img"), &crit.CriuImage{Magic: "CGROUP", Entries: []*crit.CriuEntry{{Message: e}}}); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// freezerOf returns the freezer controller of e and the freezer member of
// every set (by set id).
func freezerOf(e *cgroup.CgroupEntry) (*cgroup.CgControllerEntry, map[uint32]string) {
	members := map[uint32]string{}
	for _, s := range e.Sets {
		for _, m := range s.Ctls {
			if m.GetName() == "freezer" {
				members[s.GetId()] = m.GetPath()
			}
		}
	}
	for _, c := range e.Controllers {
		for _, n := range c.Cnames {
			if n == "freezer" {
				return c, members
			}
		}
	}
	return nil, members
}

func freezerStates(d *cgroup.CgroupDirEntry) (n int, value string) {
	for _, p := range d.Properties {
		if p.GetName() == "freezer.state" {
			n, value = n+1, p.GetValue()
		}
	}
	for _, c := range d.Children {
		m, _ := freezerStates(c)
		n += m
	}
	return n, value
}

// TestFreezeInImages: the images are edited so that CRIU restores the whole
// tree in one freezer cgroup recorded FROZEN, and moves its root there
// (root_cg_set names no set); images it cannot do that with are left as
// they are.
func TestFreezeInImages(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rootSet uint32
		img     *cgroup.CgroupEntry
		head    string            // the freezer cgroup the edited image names
		members map[uint32]string // freezer member of each set
		rootCg  uint32            // root_cg_set afterwards
		noHold  bool
	}{{
		name: "tree in CRIU's own cgroups (no cgroup.img)", rootSet: 1,
		head: holdName, members: map[uint32]string{1: "/" + holdName}, rootCg: 2,
	}, {
		name: "freezer not recorded", rootSet: 1,
		img: &cgroup.CgroupEntry{
			Sets: []*cgroup.CgSetEntry{{Id: proto.Uint32(2), Ctls: []*cgroup.CgMemberEntry{cgMember("pids", "/xx")}},
				{Id: proto.Uint32(5), Ctls: []*cgroup.CgMemberEntry{cgMember("pids", "/xx/y")}}},
			Controllers: []*cgroup.CgControllerEntry{{Cnames: []string{"pids"}, Dirs: []*cgroup.CgroupDirEntry{{DirName: proto.String("xx")}}}},
		},
		head: holdName, members: map[uint32]string{2: "/" + holdName, 5: "/" + holdName}, rootCg: 6,
	}, {
		name: "the tree's own freezer cgroup", rootSet: 1,
		img: &cgroup.CgroupEntry{
			Sets: []*cgroup.CgSetEntry{{Id: proto.Uint32(2), Ctls: []*cgroup.CgMemberEntry{cgMember("freezer", "/a/b"), cgMember("pids", "/")}},
				{Id: proto.Uint32(3), Ctls: []*cgroup.CgMemberEntry{cgMember("freezer", "/a/b/c")}}},
			Controllers: []*cgroup.CgControllerEntry{{Cnames: []string{"freezer"}, Dirs: []*cgroup.CgroupDirEntry{{
				DirName:    proto.String("a/b"),
				Properties: []*cgroup.CgroupPropEntry{cgProp("freezer.state", "THAWED"), cgProp("notify_on_release", "0")},
				Children:   []*cgroup.CgroupDirEntry{{DirName: proto.String("c"), Properties: []*cgroup.CgroupPropEntry{cgProp("freezer.state", "THAWED")}}},
			}}}},
		},
		head: "a/b", members: map[uint32]string{2: "/a/b", 3: "/a/b/c"}, rootCg: 4,
	}, {
		name: "freezer cgroups side by side", rootSet: 1, noHold: true,
		img: &cgroup.CgroupEntry{Controllers: []*cgroup.CgControllerEntry{{Cnames: []string{"freezer"},
			Dirs: []*cgroup.CgroupDirEntry{{DirName: proto.String("a")}, {DirName: proto.String("b")}}}}},
	}, {
		name: "no root_cg_set (an unprivileged dump)", noHold: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeHoldImages(t, tc.rootSet, tc.img)
			before, _ := os.ReadFile(filepath.Join(dir, "cgroup.img"))
			err := freezeInImages(dir)
			if tc.noHold {
				after, _ := os.ReadFile(filepath.Join(dir, "cgroup.img"))
				if !errors.Is(err, errNoFreezerHold) || !bytes.Equal(before, after) {
					t.Fatalf("freezeInImages: %v (cgroup.img changed: %v); want errNoFreezerHold, nothing written", err, !bytes.Equal(before, after))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cg, err := criuimg.Read(filepath.Join(dir, "cgroup.img"), "CGROUP", &cgroup.CgroupEntry{})
			if err != nil || len(cg.Entries) != 1 {
				t.Fatalf("cgroup.img: %v, %d entries", err, len(cg.Entries))
			}
			ctl, members := freezerOf(cg.Entries[0].Message.(*cgroup.CgroupEntry))
			if ctl == nil || len(ctl.Dirs) != 1 || ctl.Dirs[0].GetDirName() != tc.head {
				t.Fatalf("freezer controller %v; want one cgroup %s", ctl, tc.head)
			}
			if n, v := freezerStates(ctl.Dirs[0]); n != 1 || v != "FROZEN" {
				t.Errorf("freezer.state: %d of them, the head's %q; want one, FROZEN", n, v)
			}
			if len(members) != len(tc.members) {
				t.Errorf("freezer members %v, want %v", members, tc.members)
			}
			for id, p := range tc.members {
				if members[id] != p {
					t.Errorf("set %d: freezer %q, want %q", id, members[id], p)
				}
			}
			inv, err := criuimg.Read(filepath.Join(dir, "inventory.img"), "INVENTORY", &inventory.InventoryEntry{})
			if err != nil {
				t.Fatal(err)
			}
			if got := inv.Entries[0].Message.(*inventory.InventoryEntry).GetRootCgSet(); got != tc.rootCg {
				t.Errorf("root_cg_set %d, want %d", got, tc.rootCg)
			}
		})
	}
}

// FuzzFreezeInImages: cgroup.img and inventory.img arrive from the source;
// editing them must never panic, whatever they hold.
func FuzzFreezeInImages(f *testing.F) {
	dir := writeHoldImages(f, 1, &cgroup.CgroupEntry{
		Sets:        []*cgroup.CgSetEntry{{Id: proto.Uint32(2), Ctls: []*cgroup.CgMemberEntry{cgMember("freezer", "/a")}}},
		Controllers: []*cgroup.CgControllerEntry{{Cnames: []string{"freezer"}, Dirs: []*cgroup.CgroupDirEntry{{DirName: proto.String("a")}}}},
	})
	cg, _ := os.ReadFile(filepath.Join(dir, "cgroup.img"))
	inv, _ := os.ReadFile(filepath.Join(dir, "inventory.img"))
	f.Add(cg, inv)
	f.Add(cg[:12], inv)
	f.Add([]byte{}, inv[:9])
	f.Fuzz(func(t *testing.T, cg, inv []byte) {
		dir := t.TempDir()
		if len(cg) > 0 {
			os.WriteFile(filepath.Join(dir, "cgroup.img"), cg, 0o600)
		}
		os.WriteFile(filepath.Join(dir, "inventory.img"), inv, 0o600)
		freezeInImages(dir)
	})
}

package precheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phaul/phaul/internal/pb"
)

// TestCarryPlan: how the destination plans each file it lacks or has in
// another version, by policy.
func TestCarryPlan(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "log")
	os.WriteFile(short, []byte("old"), 0o644)
	st, _ := os.Stat(short)
	tests := []struct {
		name    string
		c       CarryOptions
		ff      *pb.FileFact
		st      os.FileInfo
		how, no string
	}{
		{"missing", CarryOptions{}, &pb.FileFact{Path: "/opt/app/bin", Size: 9}, nil, CarryWhole, ""},
		{"missing, --files=check", CarryOptions{Mode: "check"}, &pb.FileFact{Path: "/opt/app/bin"}, nil, "", "--files=carry would carry it"},
		{"a system file missing", CarryOptions{}, &pb.FileFact{Path: "/usr/lib/libx.so"}, nil, "", "--replace-files=/usr/lib/libx.so"},
		{"a system file named", CarryOptions{ReplacePaths: []string{"/usr/lib/libx.so"}}, &pb.FileFact{Path: "/usr/lib/libx.so"}, nil, CarryWhole, ""},
		{"a shorter copy of a written file", CarryOptions{}, &pb.FileFact{Path: short, Size: 10, Written: true}, st, CarryTail, ""},
		{"another version", CarryOptions{}, &pb.FileFact{Path: short, Size: 3}, st, "", "--replace-files would replace it"},
		{"another version, --replace-files", CarryOptions{ReplaceAll: true}, &pb.FileFact{Path: short, Size: 3}, st, CarryReplace, ""},
		{"another version of a system file, --replace-files", CarryOptions{ReplaceAll: true}, &pb.FileFact{Path: "/etc/app.conf"}, st, "", "--replace-files=/etc/app.conf"},
	}
	for _, tt := range tests {
		c, why := tt.c.plan(tt.ff, tt.st)
		switch {
		case tt.how != "" && (c == nil || c.How != tt.how):
			t.Errorf("%s: %v (%s), want %s", tt.name, c, why, tt.how)
		case tt.how == "" && c != nil:
			t.Errorf("%s: carried as %s", tt.name, c.How)
		case !strings.Contains(why, tt.no):
			t.Errorf("%s: %q lacks %q", tt.name, why, tt.no)
		}
		if c != nil && c.How == CarryTail && (c.DestSize != 3 || c.DestSha256 == "") {
			t.Errorf("%s: a tail without the copy's size and hash: %v", tt.name, c)
		}
	}
}

// TestSettleCarry: the source keeps a tail whose destination copy is a
// prefix, replaces (or refuses) one that is not, and holds to the limit.
func TestSettleCarry(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	os.WriteFile(log, []byte("line 1\nline 2\n"), 0o644)
	sum := func(s string) string {
		p := filepath.Join(t.TempDir(), "f")
		os.WriteFile(p, []byte(s), 0o644)
		h, _ := Hashes.Sum(p)
		return h
	}
	verdict := func(destContent string) []*pb.Verdict {
		return []*pb.Verdict{{Check: "files", Result: pb.Verdict_PASS, Carry: []*pb.Carry{{Path: log, How: CarryTail, DestSize: uint64(len(destContent)), DestSha256: sum(destContent)}}}}
	}
	vs := verdict("line 1\n")
	if got := SettleCarry(vs, CarryOptions{}); len(got) != 1 || got[0].How != CarryTail || CarryBytes(got[0]) != 7 || vs[0].Result != pb.Verdict_PASS {
		t.Errorf("a prefix: %v %v", got, vs[0])
	}
	vs = verdict("line X\n")
	if got := SettleCarry(vs, CarryOptions{}); got != nil || vs[0].Result != pb.Verdict_FAIL || !strings.Contains(text(vs[0]), "is not the start of the source's") {
		t.Errorf("not a prefix: %v %s", got, text(vs[0]))
	}
	vs = verdict("line X\n")
	if got := SettleCarry(vs, CarryOptions{ReplaceAll: true}); len(got) != 1 || got[0].How != CarryReplace || CarryBytes(got[0]) != 14 {
		t.Errorf("not a prefix, --replace-files: %v", got)
	}
	vs = verdict("line 1\n")
	if got := SettleCarry(vs, CarryOptions{Limit: 6}); got != nil || !strings.Contains(text(vs[0]), "over --carry-limit 6") {
		t.Errorf("over the limit: %v %s", got, text(vs[0]))
	}
}

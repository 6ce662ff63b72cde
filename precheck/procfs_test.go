package precheck

import (
	"strings"
	"testing"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

func TestJudgeParasiteProc(t *testing.T) {
	const sysAdmin, dacOverride = 1 << 21, 1 << 1
	root := proc.Status{CapEff: sysAdmin | dacOverride, Uids: []uint32{0, 0, 0, 0}, Gids: []uint32{0, 0, 0, 0}}
	// Keeps CAP_SYS_ADMIN, drops CAP_DAC_OVERRIDE, runs as uid 1000.
	user := proc.Status{CapEff: sysAdmin, Uids: []uint32{1000, 1000, 1000, 1000}, Gids: []uint32{100, 100, 100, 100}, Groups: []uint32{27}}
	dir := proc.ParasiteProc{Mounts: true, Cwd: "/srv/app", Uid: 0, Gid: 0, Mode: 0o755}
	with := func(f func(p *proc.ParasiteProc)) proc.ParasiteProc { p := dir; f(&p); return p }
	cases := []struct {
		name      string
		p         proc.ParasiteProc
		s         proc.Status
		busy      bool
		result    pb.Verdict_Result
		transient bool
		says      string
	}{
		{"own /proc", proc.ParasiteProc{}, proc.Status{}, false, pb.Verdict_PASS, false, "uses the /proc the tree sees"},
		{"root in a writable directory", dir, root, false, pb.Verdict_PASS, false, "/srv/app/proc.crtools"},
		{"no CAP_SYS_ADMIN", dir, proc.Status{CapEff: dacOverride, Uids: root.Uids, Gids: root.Gids}, false, pb.Verdict_FAIL, false, "CAP_SYS_ADMIN"},
		{"another user's directory", dir, user, false, pb.Verdict_FAIL, false, "uid 1000) may not create"},
		{"its own directory", with(func(p *proc.ParasiteProc) { p.Uid = 1000 }), user, false, pb.Verdict_PASS, false, "take turns"},
		{"its own read-only directory", with(func(p *proc.ParasiteProc) { p.Uid, p.Mode = 1000, 0o555 }), user, false, pb.Verdict_FAIL, false, "may not create"},
		{"a group-writable directory of its group", with(func(p *proc.ParasiteProc) { p.Gid, p.Mode = 100, 0o775 }), user, false, pb.Verdict_PASS, false, "take turns"},
		{"a group-writable directory of a supplementary group", with(func(p *proc.ParasiteProc) { p.Gid, p.Mode = 27, 0o770 }), user, false, pb.Verdict_PASS, false, "take turns"},
		{"a directory for others", with(func(p *proc.ParasiteProc) { p.Mode = 0o1777 }), user, false, pb.Verdict_PASS, false, "take turns"},
		{"a read-only mount", with(func(p *proc.ParasiteProc) { p.ReadOnly = true }), root, false, pb.Verdict_FAIL, false, "read-only mount"},
		{"proc.crtools of a running dump", with(func(p *proc.ParasiteProc) { p.Leftover = true }), root, true, pb.Verdict_PASS, false, "waits for it"},
		{"a dump there now", dir, root, true, pb.Verdict_PASS, false, "waits for it"},
		{"proc.crtools left there", with(func(p *proc.ParasiteProc) { p.Leftover = true }), root, false, pb.Verdict_FAIL, true, "rmdir /srv/app/proc.crtools"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := judgeParasiteProc(c.p, c.s, c.busy)
			if v.Check != "procfs" || v.Result != c.result || v.Transient != c.transient || !strings.Contains(text(v), c.says) {
				t.Errorf("got %s %v transient %v: %s; want %v transient %v saying %q", v.Check, v.Result, v.Transient, text(v), c.result, c.transient, c.says)
			}
		})
	}
}

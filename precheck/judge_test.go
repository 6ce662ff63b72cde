package precheck

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/internal/pb"
)

// fakeProc makes a procfs root with the given files.
func fakeProc(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func text(v *pb.Verdict) string { return v.Detail + " | " + strings.Join(v.Items, " | ") }

func TestJudgeCPU(t *testing.T) {
	proc := fakeProc(t, map[string]string{"cpuinfo": "processor: 0\nflags\t\t: fpu sse sse2 avx\n"})
	tests := []struct {
		name   string
		flags  []string
		src    *CPUInfo
		local  *CPUInfo
		result pb.Verdict_Result
		want   string
	}{
		{"same", []string{"fpu", "sse"}, nil, nil, pb.Verdict_PASS, "all 2 CPU features"},
		{"flag missing", []string{"fpu", "avx512f", "sse"}, nil, nil, pb.Verdict_FAIL, "missing: avx512f"},
		{"xsave differs", []string{"fpu"}, &CPUInfo{ModelID: "A", XFeatures: 0xe7, XSaveSize: 2696}, &CPUInfo{ModelID: "B", XFeatures: 0x7, XSaveSize: 832},
			pb.Verdict_WARN, "XSAVE features missing here: avx512-opmask avx512-zmm-hi256 avx512-hi16-zmm | XSAVE area: 2696 bytes on the source (A), 832 here (B)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &pb.SourceFacts{CpuFlags: tt.flags}
			if tt.src != nil {
				f.CpuinfoImg = cpuinfoImg(tt.src.ModelID, tt.src.XFeatures, tt.src.XSaveSize, tt.src.XSaveSize)
			}
			v := judgeCPU(context.Background(), f, Options{}, &Env{Proc: proc, LocalCPUInfo: tt.local})
			if v.Result != tt.result || !strings.Contains(text(v), tt.want) {
				t.Errorf("got %v: %s; want %v with %q", v.Result, text(v), tt.result, tt.want)
			}
		})
	}
}

func TestJudgeNetwork(t *testing.T) {
	// The destination listens on tcp/22; it has 10.0.0.2 and loopback.
	proc := fakeProc(t, map[string]string{"net/tcp": "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0 100 0 0 10 0\n"})
	env := &Env{Proc: proc, Addrs: []net.IP{net.ParseIP("10.0.0.2"), net.ParseIP("127.0.0.1")}}
	sock := func(state, addr string, port uint32) *pb.SocketFact {
		return &pb.SocketFact{Family: "inet", Proto: "tcp", State: state, LocalAddr: addr, LocalPort: port, RemoteAddr: "10.0.0.9", RemotePort: 5555}
	}
	tests := []struct {
		name   string
		socks  []*pb.SocketFact
		tcp    bool
		result pb.Verdict_Result
		want   string
	}{
		{"wildcard listener", []*pb.SocketFact{sock("LISTEN", "0.0.0.0", 80)}, false, pb.Verdict_PASS, "1 sockets"},
		{"listener on an address of the source", []*pb.SocketFact{sock("LISTEN", "10.0.0.1", 80)}, false, pb.Verdict_FAIL, "bound to 10.0.0.1:80"},
		{"listener on our address", []*pb.SocketFact{sock("LISTEN", "10.0.0.2", 80)}, false, pb.Verdict_PASS, ""},
		{"port in use", []*pb.SocketFact{sock("LISTEN", "0.0.0.0", 22)}, false, pb.Verdict_FAIL, "port 22 is already in use"},
		{"connecting socket: not ours to judge", []*pb.SocketFact{sock("SYN_SENT", "10.0.0.1", 40000)}, false, pb.Verdict_PASS, ""},
		{"carried connection needs its address", []*pb.SocketFact{sock("ESTABLISHED", "10.0.0.1", 40000)}, true, pb.Verdict_FAIL, "10.0.0.1:40000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := judgeNetwork(context.Background(), &pb.SourceFacts{Sockets: tt.socks}, Options{TCPEstablished: tt.tcp}, env)
			if v.Result != tt.result || !strings.Contains(text(v), tt.want) {
				t.Errorf("got %v: %s", v.Result, text(v))
			}
		})
	}
	// The source's side: established TCP without --tcp-established.
	vs := JudgeSource(&pb.SourceFacts{Sockets: []*pb.SocketFact{sock("ESTABLISHED", "10.0.0.1", 40000)}}, Options{})
	m := Merge(nil, vs)
	if Judge(m) != Permanent || !strings.Contains(text(m[len(m)-1])+text(m[0]), "--tcp-established") {
		t.Errorf("established without the flag: %v", m)
	}
}

func TestJudgeFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		return p
	}
	same := write("same", "hello")
	sum, _ := Hashes.Sum(same)
	other := write("other", "HELLO")
	log := write("log", "0123456789")
	f := &pb.SourceFacts{Files: []*pb.FileFact{
		{Path: same, Size: 5, Mode: 0o644, Sha256: sum, Use: "map"},
		{Path: other, Size: 5, Mode: 0o644, Sha256: sum, Use: "exe"},
		{Path: filepath.Join(dir, "gone"), Size: 1, Mode: 0o644, Use: "map"},
		{Path: log, Size: 3, Mode: 0o644, Use: "open", Written: true},
	}}
	v := judgeFiles(context.Background(), f, Options{Carry: CarryOptions{Mode: "check"}}, &Env{})
	got := text(v)
	for _, want := range []string{"3 of 4 files", other + " (exe): same size, different content", "gone (map): missing here; --files=carry would carry it", "10 bytes here, 3 on the source; the tree writes it"} {
		if !strings.Contains(got, want) {
			t.Errorf("files verdict lacks %q: %s", want, got)
		}
	}
	if strings.Contains(got, same+" ") {
		t.Errorf("identical file reported: %s", got)
	}
	// Carried by default: the missing file whole; the log replaced only
	// with --replace-files (it is longer here than on the source), the
	// other version too.
	v = judgeFiles(context.Background(), f, Options{}, &Env{})
	got = text(v)
	for _, want := range []string{"2 of 4 files", other + " (exe): same size, different content", "--replace-files would replace it"} {
		if !strings.Contains(got, want) {
			t.Errorf("carrying, the files verdict lacks %q: %s", want, got)
		}
	}
	if len(v.Carry) != 1 || v.Carry[0].How != CarryWhole || v.Carry[0].Path != filepath.Join(dir, "gone") {
		t.Errorf("carrying: %v", v.Carry)
	}
	v = judgeFiles(context.Background(), f, Options{Carry: CarryOptions{ReplaceAll: true}}, &Env{})
	if v.Result != pb.Verdict_PASS || len(v.Carry) != 3 || !strings.Contains(text(v), "1 of 4 files are here and identical; 3 will be carried") {
		t.Errorf("carrying, --replace-files: %v %s", v.Carry, text(v))
	}
}

func TestJudgeModules(t *testing.T) {
	proc := fakeProc(t, map[string]string{
		"filesystems":   "nodev\ttmpfs\n\text4\n",
		"net/protocols": "protocol  size sockets  memory press maxhdr  slab module\nTCP 2432 1 -1 NI 0 yes kernel\nUNIX 1024 1 -1 NI 0 yes kernel\n",
		"modules":       "sctp 409600 2 - Live 0x0000000000000000\n",
	})
	f := &pb.SourceFacts{Needs: []*pb.Need{
		{Kind: "fs", Name: "ext4", Why: "/a is on ext4"}, {Kind: "proto", Name: "TCP", Why: "a TCP socket"},
		{Kind: "proto", Name: "SCTP", Why: "a SCTP socket"}, {Kind: "fs", Name: "xfs", Why: "/b is on xfs"},
	}}
	v := judgeModules(context.Background(), f, Options{}, &Env{Proc: proc})
	if v.Result != pb.Verdict_FAIL || !strings.Contains(text(v), "fs xfs (/b is on xfs): not in this kernel") || strings.Contains(text(v), "SCTP") {
		t.Errorf("got %v: %s", v.Result, text(v))
	}
}

func TestMergeAndJudge(t *testing.T) {
	src := []*pb.Verdict{failTransient("transient", "a task in D state"), pass("network", "src ok")}
	dst := []*pb.Verdict{pass("cpu", "ok"), warn("network", "hmm"), pass("files", "ok")}
	m := Merge([]string{"modules"}, src, dst)
	var names []string
	for _, v := range m {
		names = append(names, v.Check+"="+v.Result.String())
	}
	if got := strings.Join(names, " "); got != "cpu=PASS modules=SKIPPED files=PASS network=WARN transient=FAIL" {
		t.Errorf("merged: %s", got)
	}
	if Judge(m) != Transient {
		t.Errorf("want transient")
	}
	m = Merge(nil, m, []*pb.Verdict{fail("files", "differs", "a"), warn("files", "written", "w"), fail("files", "taken", "b")})
	if Judge(m) != Permanent {
		t.Errorf("want permanent")
	}
	for _, v := range m {
		if v.Check == "files" && (text(v) != "differs; taken | a | b") {
			t.Errorf("files merged: %s (a failure lists the failing parts' items only)", text(v))
		}
	}
}

func TestJudgeModulesNetfilter(t *testing.T) {
	with := fakeProc(t, map[string]string{"kallsyms": "ffffffff81242683 t nf_tables_fill_gen_info.cold\n"})
	without := fakeProc(t, map[string]string{"kallsyms": "ffffffff81242683 t tcp_v4_connect\n"})
	f := &pb.SourceFacts{}
	if v := judgeModules(context.Background(), f, Options{TCPEstablished: true}, &Env{Proc: with}); v.Result != pb.Verdict_PASS {
		t.Errorf("nf_tables built in: %v %s", v.Result, text(v))
	}
	v := judgeModules(context.Background(), f, Options{TCPEstablished: true}, &Env{Proc: without})
	if v.Result != pb.Verdict_FAIL || !strings.Contains(text(v), "nf_tables") {
		t.Errorf("nf_tables missing: %v %s", v.Result, text(v))
	}
	if v := judgeModules(context.Background(), f, Options{}, &Env{Proc: without}); v.Result != pb.Verdict_PASS {
		t.Errorf("no --tcp-established, no nf_tables needed: %v %s", v.Result, text(v))
	}
}

// TestKeptOpen: a file the tree wrote through an fd that has since been
// closed (a temporary file renamed away) is no file of the dump's.
func TestKeptOpen(t *testing.T) {
	dir := t.TempDir()
	kept, gone := filepath.Join(dir, "log"), filepath.Join(dir, "state.tmp")
	fk, _ := os.Create(kept)
	defer fk.Close()
	fg, _ := os.Create(gone)
	fdOf := func(f *os.File) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd()) }
	openedBy := map[string][]string{kept: {fdOf(fk)}, gone: {fdOf(fg)}}
	fg.Close()
	os.Rename(gone, filepath.Join(dir, "state"))
	files := []*pb.FileFact{
		{Path: "/usr/bin/x", Use: "exe"},
		{Path: kept, Use: "open", Written: true},
		{Path: gone, Use: "open", Written: true},
	}
	var got []string
	for _, f := range keptOpen(files, openedBy) {
		got = append(got, f.Path)
	}
	if want := "/usr/bin/x " + kept; strings.Join(got, " ") != want {
		t.Errorf("kept %q, want %q", got, want)
	}
}

// TestWrittenMissingIsSettledBySource: a file the tree writes that is
// missing on the destination is left to the source, which fails the check
// if the tree still keeps it open there and drops it if it is gone (a
// temporary file renamed away since the facts were gathered).
func TestWrittenMissingIsSettledBySource(t *testing.T) {
	dir := t.TempDir()
	held := filepath.Join(dir, "held.log")
	f, err := os.Create(held) // this test's process plays the tree
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tmp := filepath.Join(dir, "state.tmp") // never there: renamed away
	facts := &pb.SourceFacts{Files: []*pb.FileFact{
		{Path: held, Use: "open", Written: true},
		{Path: tmp, Use: "open", Written: true},
	}}
	// The destination's view: neither file is there.
	os.Rename(held, held+".moved")
	v := judgeFiles(context.Background(), facts, Options{}, &Env{})
	os.Rename(held+".moved", held)
	if v.Result != pb.Verdict_PASS || len(v.WrittenMissing) != 2 {
		t.Fatalf("destination: %v %s, written missing %v; want a pass that leaves both to the source", v.Result, text(v), v.WrittenMissing)
	}
	wire, _ := proto.Marshal(v) // as it crosses to the source
	for _, c := range []struct {
		name  string
		files []*pb.FileFact
		mode  string
		want  pb.Verdict_Result
	}{
		{"a temporary file only", facts.Files[1:], "check", pb.Verdict_PASS},
		{"one kept open", facts.Files, "check", pb.Verdict_FAIL},
		{"one kept open, carried", facts.Files, "carry", pb.Verdict_PASS},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := &pb.Verdict{}
			proto.Unmarshal(wire, got)
			got.WrittenMissing = nil
			for _, ff := range c.files {
				got.WrittenMissing = append(got.WrittenMissing, ff.Path)
			}
			SettleWrittenMissing(context.Background(), []*pb.Verdict{got}, os.Getpid(), facts, CarryOptions{Mode: c.mode})
			if got.Result != c.want || len(got.WrittenMissing) != 0 {
				t.Fatalf("settled: %v %s; want %v", got.Result, text(got), c.want)
			}
			if carried := len(got.Carry) == 1 && got.Carry[0].Path == held && got.Carry[0].How == CarryWhole; carried != (c.mode == "carry") {
				t.Errorf("carried: %v", got.Carry)
			}
			if c.want == pb.Verdict_FAIL && (!strings.Contains(text(got), held+" (open): missing here: the tree keeps it open") || strings.Contains(text(got), tmp) || !strings.Contains(got.Detail, "1 of 2 files")) {
				t.Errorf("settled: %s", text(got))
			}
		})
	}
}

// TestSameFile: a written file that grew since the source looked is the
// same file here when its inode, filesystem and head match; a file
// rewritten, replaced or shrunk is not.
func TestSameFile(t *testing.T) {
	dir := t.TempDir()
	fact := func(path string) *pb.FileFact {
		t.Helper()
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		ff := &pb.FileFact{Path: path, Size: uint64(st.Size()), Mode: uint32(st.Mode().Perm()), Written: true, FsType: fsMagic(path)}
		ff.Dev, ff.Inode = devInode(st)
		hashAll(context.Background(), []*pb.FileFact{ff})
		return ff
	}
	tests := []struct {
		name   string
		change func(path string)
		same   bool
	}{
		{"appended", func(p string) {
			f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			f.WriteString("more lines\n")
			f.Close()
		}, true},
		{"rewritten at its head, and grown", func(p string) {
			os.WriteFile(p, []byte("LINE 1\nline 2\nline 3\n"), 0o644)
		}, false},
		{"replaced by another file", func(p string) {
			os.Remove(p)
			os.WriteFile(p, []byte("another file, longer\n"), 0o644)
		}, false},
		{"truncated", func(p string) { os.Truncate(p, 3) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			os.WriteFile(path, []byte("line 1\nline 2\n"), 0o644)
			ff := fact(path)
			tt.change(path)
			st, _ := os.Stat(path)
			if got := SameFile(ff, st, BootID()); got != tt.same {
				t.Errorf("on one kernel: SameFile = %v, want %v", got, tt.same)
			}
			// From another kernel, a local filesystem is never the
			// same one, whatever its inode numbers.
			if SameFile(ff, st, "another-boot") {
				t.Error("from another kernel: SameFile on a local filesystem")
			}
			v := judgeFiles(context.Background(), &pb.SourceFacts{Host: &pb.HostInfo{BootId: BootID()}, Files: []*pb.FileFact{ff}}, Options{}, &Env{})
			if failed := v.Result == pb.Verdict_FAIL; failed == tt.same {
				t.Errorf("files verdict %v: %s", v.Result, text(v))
			}
		})
	}
}

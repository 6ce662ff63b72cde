package precheck

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/cgroups"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

// Options are the migration's choices that the checks depend on.
type Options struct {
	ShellJob       bool
	TCPEstablished bool
	CPUCap         uint32 // CRIU's cpu_cap; 0 means fpu|cpu|ins
	Skip           []string
	Carry          CarryOptions
	// MoveAddresses are the addresses that leave the source with the
	// tree (IP/PREFIX, as the source holds them).
	MoveAddresses []string
}

func (o Options) skipped(name string) bool {
	for _, s := range o.Skip {
		if s == name {
			return true
		}
	}
	return false
}

// JudgeSource judges what only the source sees: the state of its tasks and
// sockets.
func JudgeSource(f *pb.SourceFacts, o Options) []*pb.Verdict {
	var out []*pb.Verdict
	if !o.skipped("transient") {
		var items []string
		for _, t := range f.Tasks {
			if t.State == "D" {
				items = append(items, fmt.Sprintf("pid %d (%s) is in uninterruptible sleep (D): CRIU cannot seize it until it wakes", t.Pid, t.Comm))
			}
			if t.Tracer != 0 {
				items = append(items, fmt.Sprintf("pid %d (%s) is traced by pid %d (a debugger, or another CRIU)", t.Pid, t.Comm, t.Tracer))
			}
		}
		for _, s := range f.Sockets {
			if s.State == "SYN_SENT" || s.State == "SYN_RECV" {
				items = append(items, fmt.Sprintf("%s socket %s:%d -> %s:%d is in %s: a connection is being set up", s.Family, s.LocalAddr, s.LocalPort, s.RemoteAddr, s.RemotePort, s.State))
			}
		}
		if len(items) > 0 {
			out = append(out, failTransient("transient", "the tree is in a state that cannot be checkpointed now; retry in a moment (--retry-transient N)", items...))
		} else {
			out = append(out, pass("transient", fmt.Sprintf("%d tasks, none in D state or traced, no connection being set up", len(f.Tasks))))
		}
	}
	if !o.skipped("network") {
		var items []string
		for _, s := range f.Sockets {
			if s.Proto == "tcp" && s.State == "ESTABLISHED" && !o.TCPEstablished && !peerInTree(f.Sockets, s) {
				items = append(items, fmt.Sprintf("%s:%d <-> %s:%d", s.LocalAddr, s.LocalPort, s.RemoteAddr, s.RemotePort))
			}
		}
		if len(items) > 0 {
			out = append(out, fail("network", "established TCP connections to peers outside the tree: pass --tcp-established to carry them (the peer must then reach the same address on the destination), or close them first", items...))
		}
	}
	return out
}

// Env is what the destination judges with.
type Env struct {
	Proc        string // procfs root, normally /proc
	CRIU        CPUChecker
	CRIUVersion criu.Version
	Layout      *cgroups.Layout
	CgroupRoots []*pb.CgroupRoot // as computed for this migration
	CgroupErr   error            // why they could not be computed
	CgroupMode  rpc.CriuCgMode
	Addrs       []net.IP // this host's addresses (in the service's network namespace)
	// Breakpoints says how this host's CRIU copes with hardware
	// breakpoints (for the report).
	Breakpoints string
	// LocalCPUInfo is this host's cpuinfo.img, decoded (nil: unknown).
	LocalCPUInfo *CPUInfo
	Kernel       string // this host's kernel release
	TempDir      string
	DevPts       string // where this host's ptys are, normally /dev/pts
	// AddressInterface is the interface moved addresses go to ("": the
	// one on their subnet).
	AddressInterface string
}

func (e *Env) devPts() string { return cmp.Or(e.DevPts, "/dev/pts") }

// CPUChecker runs CRIU's cpuinfo check.
type CPUChecker interface {
	CPUInfoCheck(ctx context.Context, dir string, caps uint32) error
}

// JudgeDestination judges the source's facts against this host.
func JudgeDestination(ctx context.Context, f *pb.SourceFacts, o Options, env *Env) []*pb.Verdict {
	if env.Proc == "" {
		env.Proc = "/proc"
	}
	checks := []struct {
		name string
		fn   func(context.Context, *pb.SourceFacts, Options, *Env) *pb.Verdict
	}{
		{"criu", judgeCRIU}, {"cpu", judgeCPU}, {"modules", judgeModules}, {"files", judgeFiles},
		{"files", judgeHeld}, {"network", judgeNetwork}, {"address", judgeAddresses}, {"cgroups", judgeCgroups}, {"pids", judgePids},
	}
	var out []*pb.Verdict
	for _, c := range checks {
		if o.skipped(c.name) {
			continue
		}
		if v := c.fn(ctx, f, o, env); v != nil {
			out = append(out, v)
		}
	}
	return out
}

func judgeCRIU(ctx context.Context, f *pb.SourceFacts, o Options, env *Env) *pb.Verdict {
	if src, err := criu.ParseVersion(f.GetHost().GetCriuVersion()); err == nil && env.CRIUVersion.Less(src) {
		return fail("criu", fmt.Sprintf("the destination's CRIU %s is older than the source's %s; install the same CRIU on both (make deps)", env.CRIUVersion, src))
	}
	avail := memAvailable(env.Proc)
	need := 2*f.MemoryBytes + 64<<20 // the images on a tmpfs, then the restored memory
	if avail > 0 && avail < need {
		return failTransient("criu", fmt.Sprintf("%d MiB of memory available, the restore needs about %d MiB (the tree's %d MiB twice: images, then the restored tree); retry when memory is free",
			avail>>20, need>>20, f.MemoryBytes>>20))
	}
	detail := fmt.Sprintf("CRIU %s here, %s on the source; Linux %s here, %s on the source; %d MiB available for a %d MiB tree; one streamed dump needs neither mem_track nor lazy pages",
		env.CRIUVersion, f.GetHost().GetCriuVersion(), env.Kernel, f.GetHost().GetKernel(), avail>>20, f.MemoryBytes>>20)
	if env.Breakpoints != "" {
		detail += "; breakpoints: " + env.Breakpoints
	}
	if sk, err1 := criu.ParseKernel(f.GetHost().GetKernel()); err1 == nil {
		if dk, err2 := criu.ParseKernel(env.Kernel); err2 == nil && (dk.Major < sk.Major || dk.Major == sk.Major && dk.Minor < sk.Minor) {
			return warn("criu", detail+"; the destination's kernel is older: features the tree uses may be missing")
		}
	}
	return pass("criu", detail)
}

func memAvailable(procRoot string) uint64 {
	data, err := os.ReadFile(filepath.Join(procRoot, "meminfo"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func judgeCPU(ctx context.Context, f *pb.SourceFacts, o Options, env *Env) *pb.Verdict {
	here := map[string]bool{}
	for _, fl := range CPUFlags(filepath.Join(env.Proc, "cpuinfo")) {
		here[fl] = true
	}
	var missing []string
	for _, fl := range f.CpuFlags {
		if !here[fl] {
			missing = append(missing, fl)
		}
	}
	var criuErr error
	if env.CRIU != nil && len(f.CpuinfoImg) > 0 {
		dir, err := os.MkdirTemp(env.TempDir, "cpuinfo-")
		if err == nil {
			defer os.RemoveAll(dir)
			if err = os.WriteFile(filepath.Join(dir, "cpuinfo.img"), f.CpuinfoImg, 0o600); err == nil {
				caps := o.CPUCap
				if caps == 0 {
					caps = criu.CPUCapAll
				}
				criuErr = env.CRIU.CPUInfoCheck(ctx, dir, caps)
			}
		}
	}
	// The XSAVE area: the usual cause of CRIU's refusal between hosts.
	var xsave []string
	if src, err := ParseCPUInfoImg(f.CpuinfoImg); err == nil && env.LocalCPUInfo != nil {
		dst := env.LocalCPUInfo
		if lack := src.XFeatures &^ dst.XFeatures; lack != 0 {
			xsave = append(xsave, "XSAVE features missing here: "+XFeatureNames(lack))
		}
		if src.XSaveSize != dst.XSaveSize {
			xsave = append(xsave, fmt.Sprintf("XSAVE area: %d bytes on the source (%s), %d here (%s)",
				src.XSaveSize, src.ModelID, dst.XSaveSize, dst.ModelID))
		}
	}
	switch {
	case len(missing) > 0:
		v := fail("cpu", fmt.Sprintf("this CPU lacks %d features the source's has: the tree may use them", len(missing)), "missing: "+strings.Join(missing, " "))
		v.Items = append(v.Items, xsave...)
		if criuErr != nil {
			v.Items = append(v.Items, "CRIU's cpuinfo check: "+criuErr.Error())
		}
		return v
	case criuErr != nil:
		var ce *criu.Error
		detail := criuErr.Error()
		if errors.As(criuErr, &ce) && len(ce.Lines) > 0 {
			detail = strings.Join(ce.Lines, "; ")
		}
		return fail("cpu", "CRIU's cpuinfo check fails (often the FPU/XSAVE area differs; --cpu-cap=none skips it at your risk)", append(xsave, detail)...)
	case len(xsave) > 0:
		return warn("cpu", "the XSAVE area differs, but CRIU's check with this --cpu-cap passes", xsave...)
	}
	return pass("cpu", fmt.Sprintf("all %d CPU features of the source are here; CRIU's cpuinfo check passes", len(f.CpuFlags)))
}

func judgeModules(ctx context.Context, f *pb.SourceFacts, o Options, env *Env) *pb.Verdict {
	filesystems := fieldsOf(filepath.Join(env.Proc, "filesystems"), -1)
	protocols := fieldsOf(filepath.Join(env.Proc, "net/protocols"), 0)
	loaded := fieldsOf(filepath.Join(env.Proc, "modules"), 0)
	var missing, loadable, ok []string
	needs := f.Needs
	if o.TCPEstablished {
		// CRIU locks the tree's connections with nftables while it dumps
		// and restores them.
		needs = append(append([]*pb.Need(nil), needs...), &pb.Need{Kind: "nf", Name: "nf_tables", Why: "--tcp-established: CRIU locks the network with nftables"})
	}
	for _, n := range needs {
		var have bool
		switch n.Kind {
		case "fs":
			have = filesystems[n.Name]
		case "proto":
			have = protocols[n.Name]
		case "dev":
			_, err := os.Stat("/dev/net/" + n.Name)
			have = err == nil
		case "nf":
			have = builtIn(env.Proc, n.Name)
		}
		mod := moduleName(n)
		switch {
		case have || loaded[mod]:
			ok = append(ok, n.Name)
		case modprobable(mod):
			loadable = append(loadable, fmt.Sprintf("%s (%s): not loaded, but the module %s can be loaded", n.Name, n.Why, mod))
		default:
			missing = append(missing, fmt.Sprintf("%s %s (%s): not in this kernel", n.Kind, n.Name, n.Why))
		}
	}
	switch {
	case len(missing) > 0:
		return fail("modules", "the tree uses kernel features this host lacks; load or build the modules", missing...)
	case len(loadable) > 0:
		return warn("modules", "some kernel features must be loaded first (CRIU does not load modules)", loadable...)
	}
	return pass("modules", "all present: "+strings.Join(ok, " "))
}

// builtIn reports whether the kernel has mod built in: it shows in
// /sys/module only when it has parameters, but its symbols are always in
// /proc/kallsyms.
func builtIn(procRoot, mod string) bool {
	if _, err := os.Stat(filepath.Join("/sys/module", mod)); err == nil && procRoot == "/proc" {
		return true
	}
	fh, err := os.Open(filepath.Join(procRoot, "kallsyms"))
	if err != nil {
		return false
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	prefix := " " + mod + "_"
	for sc.Scan() {
		if strings.Contains(sc.Text(), prefix) {
			return true
		}
	}
	return false
}

// moduleName is the kernel module that provides a need.
func moduleName(n *pb.Need) string {
	switch n.Name {
	case "TCPv6", "UDPv6":
		return "ipv6"
	case "PACKET":
		return "af_packet"
	case "SCTP", "SCTPv6":
		return "sctp"
	}
	return strings.ToLower(n.Name)
}

// modprobable reports whether modules.dep of the running kernel lists mod.
func modprobable(mod string) bool {
	release, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return false
	}
	data, err := os.ReadFile(filepath.Join("/lib/modules", strings.TrimSpace(string(release)), "modules.dep"))
	if err != nil {
		return false
	}
	return strings.Contains(string(data), "/"+mod+".ko")
}

// fieldsOf returns a set of one column of a file (-1: the last).
func fieldsOf(path string, col int) map[string]bool {
	out := map[string]bool{}
	data, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		i := col
		if i < 0 {
			i = len(f) - 1
		}
		if i < len(f) {
			out[f[i]] = true
		}
	}
	return out
}

func judgeFiles(ctx context.Context, f *pb.SourceFacts, o Options, env *Env) *pb.Verdict {
	// Stat every file, and hash, a few at a time, those the comparison
	// will need: only files of the same size as on the source.
	stats := make([]os.FileInfo, len(f.Files))
	sums := make([]string, len(f.Files))
	inParallel(ctx, len(f.Files), func(i int) {
		ff := f.Files[i]
		st, err := os.Stat(ff.Path)
		if err != nil {
			return
		}
		stats[i] = st
		if ff.Sha256 != "" && uint64(st.Size()) == ff.Size {
			sums[i], _ = Hashes.Sum(ff.Path)
		}
	})
	var items, written, shared, writtenMissing []string
	var carry []*pb.Carry
	for i, ff := range f.Files {
		if ctx.Err() != nil {
			return fail("files", ctx.Err().Error())
		}
		st := stats[i]
		if st == nil && ff.Written {
			// Perhaps a temporary file, renamed away since the source
			// looked: the source tells (SettleWrittenMissing).
			writtenMissing = append(writtenMissing, ff.Path)
			continue
		}
		problem, same := fileDiff(ff, st, sums[i], f.GetHost().GetBootId())
		switch {
		case problem != "" && st != nil && sameObject(ff.Dev, ff.Inode, ff.FsType, st, ff.Path, f.GetHost().GetBootId()) != "":
			// Never carried onto itself.
			items = append(items, problem+"; it is the very file the source has (a filesystem both hosts share): nothing can be carried")
		case problem != "":
			c, why := o.Carry.plan(ff, st)
			if c != nil {
				carry = append(carry, c)
			} else {
				items = append(items, problem+why)
			}
		case same:
			// The tree wrote it since the source looked: the same file,
			// on a filesystem both hosts share. The restore sees its
			// size at the freeze.
			shared = append(shared, ff.Path)
		case ff.Written:
			written = append(written, ff.Path)
		}
	}
	v := filesVerdict(len(f.Files), items, written, shared, carry)
	v.WrittenMissing, v.Carry = writtenMissing, carry
	return v
}

// fileDiff says how the file at ff.Path here (st: nil if missing, sum: its
// sha256 when the source's is to be compared) differs from the source's
// ff, "" if it does not; same says it is the very file the source saw,
// grown since (SameFile).
func fileDiff(ff *pb.FileFact, st os.FileInfo, sum, sourceBoot string) (problem string, same bool) {
	switch {
	case st == nil:
		return missingItem(ff), false
	case uint64(st.Size()) != ff.Size && SameFile(ff, st, sourceBoot):
		return "", true
	case uint64(st.Size()) != ff.Size:
		why := ""
		if ff.Written {
			why = "; the tree writes it, and CRIU restores only if it has the dumped size"
		}
		return fmt.Sprintf("%s (%s): %d bytes here, %d on the source%s", ff.Path, ff.Use, st.Size(), ff.Size, why), false
	case ff.Sha256 != "" && sum == "":
		return fmt.Sprintf("%s (%s): unreadable here", ff.Path, ff.Use), false
	case ff.Sha256 != "" && sum != ff.Sha256:
		return fmt.Sprintf("%s (%s): same size, different content (sha256 %.12s here, %.12s on the source)", ff.Path, ff.Use, sum, ff.Sha256), false
	case uint32(st.Mode().Perm()) != ff.Mode:
		return fmt.Sprintf("%s (%s): mode %o here, %o on the source", ff.Path, ff.Use, st.Mode().Perm(), ff.Mode), false
	}
	return "", false
}

// filesVerdict is the files check's verdict on n files: items that fail
// it, files the tree writes (written), the same files seen from both hosts
// (shared), files to be carried after the dump.
func filesVerdict(n int, items, written, shared []string, carry []*pb.Carry) *pb.Verdict {
	if len(items) > 0 {
		return fail("files", filesFailed(len(items), n), items...)
	}
	detail := fmt.Sprintf("all %d files (executables, libraries, open files) are here and identical", n)
	if len(carry) > 0 {
		var total uint64
		for _, c := range carry {
			total += CarryBytes(c)
		}
		detail = fmt.Sprintf("%d of %d files are here and identical; %d will be carried after the dump (about %d bytes)", n-len(carry), n, len(carry), total)
	}
	if len(written) > 0 {
		detail += fmt.Sprintf("; %d are written by the tree and must keep their size until the restore (nothing may write them in between)", len(written))
	}
	if len(shared) > 0 {
		detail += fmt.Sprintf("; %d written by the tree are the same files here (a filesystem both hosts share): their size is the one at the freeze", len(shared))
	}
	var list []string
	for _, c := range carry {
		list = append(list, carryItem(c))
	}
	if len(written) > 0 || len(shared) > 0 {
		return warn("files", detail, append(append(list, written...), shared...)...)
	}
	return pass("files", detail, list...)
}

func filesFailed(n, of int) string {
	return fmt.Sprintf("%d of %d files differ or are missing; the restore would fail", n, of)
}

func missingItem(ff *pb.FileFact) string {
	return fmt.Sprintf("%s (%s): missing here", ff.Path, ff.Use)
}

// SettleWrittenMissing decides, on the source, about the files the tree
// writes that the destination's files verdict among vs says are missing
// there (Verdict.WrittenMissing): one the tree keeps open at its path
// fails the check, as the restore would; one it no longer has there, a
// temporary file written and renamed away since the facts were gathered,
// is dropped. "Keeps open" means the same file (device and inode) is open
// at that path at two looks keptFor apart: a program that saves its state
// through a temporary file opens a new one each time. facts are the facts
// that were sent. When ctx ends between the looks, the first decides. With
// c carrying files, one kept open is carried (added to the verdict's
// carry) where the policy lets it be.
func SettleWrittenMissing(ctx context.Context, vs []*pb.Verdict, pid int, facts *pb.SourceFacts, c CarryOptions) {
	byPath := map[string]*pb.FileFact{}
	for _, ff := range facts.GetFiles() {
		byPath[ff.Path] = ff
	}
	for _, v := range vs {
		if v.Check != "files" || len(v.WrittenMissing) == 0 {
			continue
		}
		first := openFiles(pid)
		then := first
		select {
		case <-ctx.Done():
		case <-time.After(keptFor):
			then = openFiles(pid)
		}
		var kept []string
		for _, p := range v.WrittenMissing {
			ff := byPath[p]
			if ff == nil || first[p] == (fileID{}) || first[p] != then[p] {
				continue
			}
			if cf, why := c.plan(ff, nil); cf != nil {
				v.Carry = append(v.Carry, cf)
				v.Items = append(v.Items, carryItem(cf))
				v.Detail += fmt.Sprintf("; %s, which the tree keeps open for writing, will be carried after the dump", ff.Path)
			} else {
				kept = append(kept, missingItem(ff)+": the tree keeps it open for writing; share it between the hosts (a shared filesystem), or let phaul carry it (--files=carry)"+why)
			}
		}
		v.WrittenMissing = nil
		if len(kept) == 0 {
			continue
		}
		if v.Result != pb.Verdict_FAIL {
			v.Items = nil
		}
		v.Items = append(v.Items, kept...)
		v.Result, v.Transient = pb.Verdict_FAIL, false
		v.Detail = filesFailed(len(v.Items), len(facts.GetFiles()))
	}
}

// keptFor is how long a written file must stay open to count as kept.
const keptFor = 100 * time.Millisecond

type fileID struct{ dev, ino uint64 }

// openFiles maps the paths the tree rooted at pid has open now to the
// files open there (the last found, for a path open more than once).
func openFiles(pid int) map[string]fileID {
	open := map[string]fileID{}
	for _, t := range proc.Tree(pid) {
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", t))
		for _, fd := range fds {
			link, err := os.Readlink(fd)
			var st unix.Stat_t
			if err == nil && unix.Stat(fd, &st) == nil {
				open[link] = fileID{st.Dev, st.Ino}
			}
		}
	}
	return open
}

func judgeNetwork(ctx context.Context, f *pb.SourceFacts, o Options, env *Env) *pb.Verdict {
	have := map[string]bool{}
	for _, a := range env.Addrs {
		have[a.String()] = true
	}
	moved := map[string]bool{}
	for _, m := range o.MoveAddresses {
		if p, err := netip.ParsePrefix(m); err == nil {
			moved[p.Addr().String()], have[p.Addr().String()] = true, true
		}
	}
	listening := map[string]bool{}
	for _, t := range []struct{ file, family, proto string }{{"tcp", "inet", "tcp"}, {"tcp6", "inet6", "tcp"}, {"udp", "inet", "udp"}, {"udp6", "inet6", "udp"}} {
		data, _ := os.ReadFile(filepath.Join(env.Proc, "net", t.file))
		for _, s := range ParseInetTable(string(data), t.family, t.proto, nil) {
			if s.State == "LISTEN" || s.State == "BOUND" {
				listening[fmt.Sprintf("%s/%d", t.proto, s.LocalPort)] = true
			}
		}
	}
	var items, explain []string
	for _, s := range f.Sockets {
		// CRIU restores a listener, a bound UDP socket and (with
		// --tcp-established) a connection on its address; the other
		// states are the transient check's or the source's business.
		restored := s.State == "LISTEN" || s.State == "BOUND" || (s.State == "ESTABLISHED" && o.TCPEstablished)
		if s.Proto == "" || !restored {
			continue
		}
		switch {
		case s.State == "ESTABLISHED":
			explain = append(explain, fmt.Sprintf("carried: %s %s:%d <-> %s:%d", s.Proto, s.LocalAddr, s.LocalPort, s.RemoteAddr, s.RemotePort))
		case moved[s.LocalAddr]:
			explain = append(explain, fmt.Sprintf("rebound on the moved address: %s %s %s:%d", s.Proto, s.State, s.LocalAddr, s.LocalPort))
		}
		if !isWildcard(s.LocalAddr) && !have[s.LocalAddr] {
			items = append(items, fmt.Sprintf("%s %s socket bound to %s:%d, an address this host does not have (CRIU fails with \"Cannot assign requested address\"): bind it to 0.0.0.0, or give this host the address", s.Proto, s.State, s.LocalAddr, s.LocalPort))
		}
		if (s.State == "LISTEN" || s.State == "BOUND") && listening[fmt.Sprintf("%s/%d", s.Proto, s.LocalPort)] {
			items = append(items, fmt.Sprintf("%s port %d is already in use here", s.Proto, s.LocalPort))
		}
	}
	if len(items) > 0 {
		return fail("network", "the tree's sockets cannot be restored here", items...)
	}
	return pass("network", fmt.Sprintf("%d sockets; their addresses and ports are available here", len(f.Sockets)), explain...)
}

func judgeCgroups(ctx context.Context, f *pb.SourceFacts, o Options, env *Env) *pb.Verdict {
	if env.CgroupErr != nil {
		return fail("cgroups", env.CgroupErr.Error())
	}
	// The mapping, per controller: the tree's own cgroup on the source
	// (a login session's scope, a container's) becomes the root here, and
	// the sub-paths below it are kept.
	var mapping []string
	for _, r := range env.CgroupRoots {
		from := "?"
		for _, s := range f.Cgroups {
			if s.Controllers == r.Controllers {
				from = s.Path
			}
		}
		mapping = append(mapping, fmt.Sprintf("%s:%s -> %s", cmp.Or(r.Controllers, "v2"), from, r.Path))
	}
	kind := ""
	if env.Layout != nil {
		kind = env.Layout.Kind
	}
	detail := fmt.Sprintf("cgroup %s on the source, %s here; the tree's cgroups are mapped %s (%s mode)", f.CgroupKind, kind, strings.Join(mapping, ", "), criu.CgroupModeName(env.CgroupMode))
	if env.CgroupMode == rpc.CriuCgMode_IGNORE {
		return pass("cgroups", fmt.Sprintf("cgroup %s on the source, %s here; CRIU leaves cgroups alone: the tree joins the service's own cgroups, without its limits (ignore mode)", f.CgroupKind, kind))
	}
	var exists []string
	for _, r := range env.CgroupRoots {
		if env.Layout == nil {
			break
		}
		if _, err := os.Stat(filepath.Join(env.Layout.Mount(r.Controllers), r.Path)); err == nil {
			exists = append(exists, strings.TrimPrefix(r.Controllers+":"+r.Path, ":"))
		}
	}
	// The nearest existing ancestor of each root must be a directory we
	// can create cgroups in.
	var blocked []string
	for _, r := range env.CgroupRoots {
		if env.Layout == nil {
			break
		}
		mnt := env.Layout.Mount(r.Controllers)
		p := filepath.Join(mnt, r.Path)
		for ; p != mnt && p != "/"; p = filepath.Dir(p) {
			if _, err := os.Lstat(p); err == nil {
				break
			}
		}
		st, err := os.Stat(p)
		switch {
		case err != nil:
			blocked = append(blocked, fmt.Sprintf("%s: %v", p, err))
		case !st.IsDir():
			blocked = append(blocked, fmt.Sprintf("%s: not a directory, no cgroup can be created below it", p))
		case unix.Access(p, unix.W_OK) != nil:
			blocked = append(blocked, fmt.Sprintf("%s: not writable", p))
		}
	}
	switch {
	case len(blocked) > 0:
		return fail("cgroups", "the cgroup root cannot be created here", blocked...)
	case len(exists) > 0 && env.CgroupMode == rpc.CriuCgMode_STRICT:
		return fail("cgroups", "strict mode needs CRIU to create the tree's cgroups, but they exist here", exists...)
	case len(exists) > 0 && env.CgroupMode == rpc.CriuCgMode_SOFT:
		return warn("cgroups", detail+"; existing cgroups keep their own limits (soft mode)", exists...)
	case kind == "v2" || f.CgroupKind == "v2":
		return pass("cgroups", detail+"; phaul copies the cgroup v2 limits CRIU does not carry (memory.max, cpu.max, pids.max, ...)")
	}
	return pass("cgroups", detail)
}

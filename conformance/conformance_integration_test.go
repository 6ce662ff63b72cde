package conformance_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/proc"
	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/internal/twohosts"
)

// A case is one program of cases/, with what its leading comment says:
//
//	criu-opts: file_locks tcp_established   (what CRIU alone needs to move it)
//	criu-cannot: REASON                      (CRIU itself cannot move it here)
//	phaul-refuses: CHECK                     (the check that refuses it first; "-": phaul
//	                                          cannot tell, and must do no worse than CRIU alone)
//	phaul-cannot: REASON                     (CRIU alone moves it, phaul cannot by design)
//	phaul-own: REASON                        (phaul moves it only to a destination with a
//	                                          filesystem and /dev/pts of its own, as two
//	                                          machines have: TestCorpusOwnView; it must refuse
//	                                          it, by the phaul-refuses check, where the
//	                                          destination shares them with the source)
//	phaul-mends: HOW                         (CRIU alone moves it wrongly, phaul rightly)
//	phaul-differs: REASON                    (a known way phaul changes it, not fixed yet)
//	phaul-says: VERDICT                      (what the case then says, exactly: one line each)
//	phaul-precopy: OUTCOME                   (the report's precopy must be this: "rounds" for a
//	                                          case that is about memory copied while it changes)
//
// phaul-differs is a bug on record, not an excuse: the test fails as soon
// as phaul moves the case faithfully (so that the mark is removed), or
// changes it in any other way than the one recorded.
type corpusCase struct {
	name, src    string
	criuOpts     []string
	criuCannot   string
	phaulRefuses string
	phaulDiffers string
	phaulSays    string
	phaulCannot  string
	phaulOwn     string
	phaulMends   string
	phaulPrecopy string
}

func loadCases(t *testing.T) []corpusCase {
	t.Helper()
	srcs, _ := filepath.Glob("cases/*.c")
	if len(srcs) == 0 {
		t.Fatal("no cases in cases/")
	}
	var out []corpusCase
	for _, src := range srcs {
		c := corpusCase{name: strings.TrimSuffix(filepath.Base(src), ".c"), src: src}
		f, err := os.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		fields := map[string]*string{"criu-cannot": &c.criuCannot, "phaul-refuses": &c.phaulRefuses, "phaul-differs": &c.phaulDiffers,
			"phaul-mends": &c.phaulMends, "phaul-cannot": &c.phaulCannot, "phaul-own": &c.phaulOwn, "phaul-says": &c.phaulSays, "phaul-precopy": &c.phaulPrecopy}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// The leading comment: " * name: value" lines, up to "*/".
			text := strings.TrimSpace(sc.Text())
			if strings.HasPrefix(text, "*/") {
				break
			}
			name, v, ok := strings.Cut(strings.TrimSpace(strings.TrimPrefix(text, "*")), ":")
			v = strings.TrimSpace(v)
			switch p := fields[name]; {
			case !ok:
			case name == "criu-opts":
				c.criuOpts = strings.Fields(v)
			case p != nil && *p != "": // phaul-says: one line each
				*p += "\n" + v
			case p != nil:
				*p = v
			}
		}
		f.Close()
		out = append(out, c)
	}
	return out
}

// build compiles every case into dir.
func build(t *testing.T, cases []corpusCase, dir string) {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		testutil.SkipOrFail(t, "the corpus is C: gcc is needed")
	}
	for _, c := range cases {
		out, err := exec.Command("gcc", "-O1", "-Wall", "-Wno-unused-function", "-Wno-unused-result", "-pthread",
			"-o", filepath.Join(dir, c.name), c.src, "-lrt").CombinedOutput()
		if err != nil {
			t.Fatalf("build %s: %v\n%s", c.src, err, out)
		}
	}
}

// waitFile waits for dir/name and returns its content; a result that
// comes first means the case broke before it was ready.
func waitFile(dir, name string, timeout time.Duration) (string, error) {
	for deadline := time.Now().Add(timeout); ; time.Sleep(10 * time.Millisecond) {
		if data, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
			return string(data), nil
		}
		if name != "result" {
			if data, err := os.ReadFile(filepath.Join(dir, "result")); err == nil {
				return "", fmt.Errorf("the case ended before it was %s: %s", name, data)
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no %s within %v", name, timeout)
		}
	}
}

// verdict says go to the case and returns what it found.
func verdict(dir string) string {
	os.WriteFile(filepath.Join(dir, "go"), nil, 0o644)
	res, err := waitFile(dir, "result", 15*time.Second)
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(res)
}

// criuOpts turns a case's criu-opts into CRIU's options.
func criuOpts(t *testing.T, names []string) *rpc.CriuOpts {
	t.Helper()
	o := &rpc.CriuOpts{}
	for _, n := range names {
		switch n {
		case "file_locks":
			o.FileLocks = proto.Bool(true)
		case "tcp_established":
			// iptables is not installed here; CRIU 4.2 has nftables.
			o.TcpEstablished = proto.Bool(true)
			o.NetworkLock = rpc.CriuNetworkLockMethod_NFTABLES.Enum()
		case "shell_job":
			o.ShellJob = proto.Bool(true)
		default:
			t.Fatalf("criu-opts: %q is not an option the corpus knows", n)
		}
	}
	return o
}

// startCase starts bin DIR as the init of a PID namespace of its own (on
// this host's network) and waits until it is ready.
func startCase(t *testing.T, bin, dir string) int {
	t.Helper()
	cmd := exec.Command("unshare", "-p", "-f", "setsid", bin, dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	t.Cleanup(func() { cmd.Process.Kill() })
	var pid int
	for deadline := time.Now().Add(10 * time.Second); pid == 0; time.Sleep(5 * time.Millisecond) {
		if kids, _ := proc.Children(cmd.Process.Pid); len(kids) > 0 {
			pid = kids[0]
		} else if time.Now().After(deadline) {
			t.Fatalf("%s did not start", bin)
		}
	}
	t.Cleanup(func() { testutil.KillPid(pid) })
	if _, err := waitFile(dir, "ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return pid
}

// criuAlone checkpoints and restores the case on this host with CRIU
// alone, as a user would by hand, and returns the case's verdict.
func criuAlone(t *testing.T, c *criu.Client, bin string, cc corpusCase) (string, error) {
	dir := t.TempDir()
	pid := startCase(t, bin, dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	imgs := t.TempDir()
	opts := criuOpts(t, cc.criuOpts)
	opts.Pid = proto.Int32(int32(pid))
	if _, err := c.Dump(ctx, criu.Request{ImagesDir: imgs, WorkDir: imgs, Opts: opts}); err != nil {
		return "", fmt.Errorf("dump: %w", err)
	}
	if err := testutil.WaitGone(pid, 10*time.Second); err != nil {
		return "", err
	}
	ropts := criuOpts(t, cc.criuOpts)
	res, err := c.Restore(ctx, criu.Request{ImagesDir: imgs, WorkDir: imgs, Opts: ropts})
	if err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	t.Cleanup(func() { testutil.KillPid(res.Pid) })
	return verdict(dir), nil
}

// TestCorpus runs every case through CRIU alone and through phaul.
func TestCorpus(t *testing.T) {
	c, _ := testutil.CRIU(t)
	cases := loadCases(t)
	bins := t.TempDir()
	build(t, cases, bins)
	h := twohosts.New(t)
	svc := h.StartService(t)
	for _, cc := range cases {
		t.Run(cc.name, func(t *testing.T) {
			bin := filepath.Join(bins, cc.name)
			alone, err := criuAlone(t, c, bin, cc)
			switch {
			case cc.criuCannot == "" && err != nil:
				var ce *criu.Error
				if errors.As(err, &ce) {
					err = fmt.Errorf("%w\n%s", err, strings.Join(ce.Lines, "\n"))
				}
				t.Fatalf("CRIU alone cannot move it (say why with criu-cannot, or give it the options it needs with criu-opts): %v", err)
			case cc.criuCannot == "" && alone != "ok":
				t.Fatalf("CRIU alone moved it, but the case says: %s", alone)
			case cc.criuCannot != "" && err == nil && alone == "ok":
				t.Errorf("CRIU alone moves it now: drop its criu-cannot (%s)", cc.criuCannot)
			case cc.criuCannot != "":
				t.Logf("CRIU alone cannot move it, as expected (%s): %v %s", cc.criuCannot, err, alone)
			default:
				t.Logf("CRIU alone: %s", alone)
			}
			dir := t.TempDir()
			pid := h.StartProcess(t, bin, dir)
			if _, err := waitFile(dir, "ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r := h.Migrate(t, ctx, pid, svc.Addr)
			if dp := int(r.Num("dest_pid")); dp > 0 {
				t.Cleanup(func() { testutil.KillPid(dp) })
			}
			if cc.criuCannot != "" && cc.phaulRefuses == "-" {
				// phaul cannot tell: it must do no worse than CRIU.
				if r.ExitCode != 0 {
					t.Fatalf("phaul migrate: exit %d: %s", r.ExitCode, r.Str("error"))
				}
				if v := verdict(dir); v != alone {
					t.Errorf("phaul did worse than CRIU alone: %s (CRIU alone: %s)", v, alone)
				}
				return
			}
			if cc.criuCannot != "" && cc.phaulMends == "" || cc.phaulCannot != "" || cc.phaulOwn != "" {
				// phaul must refuse it, and leave it as it was.
				if r.ExitCode == 0 {
					t.Fatalf("phaul moved a case it cannot move here (%s%s%s)", cc.criuCannot, cc.phaulCannot, cc.phaulOwn)
				}
				t.Logf("phaul refused it: %s", r.Str("error"))
				if cc.phaulRefuses != "" && !strings.Contains(r.Str("error"), cc.phaulRefuses) {
					t.Errorf("phaul refused it, but not by the %s check: %s", cc.phaulRefuses, r.Str("error"))
				}
				if v := verdict(dir); v != "ok" {
					t.Errorf("refused, and yet the workload changed on the source: %s", v)
				}
				return
			}
			if r.ExitCode != 0 {
				t.Fatalf("phaul migrate: exit %d: %s\n%s", r.ExitCode, r.Str("error"), r.Stderr)
			}
			if testutil.Alive(pid) {
				t.Errorf("the source copy (pid %d) still exists", pid)
			}
			v := verdict(dir)
			t.Logf("phaul migrate: moved (downtime %v, CRIU options chosen %v, pre-copy %q, rounds %v), the case says: %s",
				r.Report["downtime"], r.Report["criu_options"], r.Str("precopy"), r.Report["rounds"], v)
			if cc.phaulPrecopy != "" && r.Str("precopy") != cc.phaulPrecopy {
				t.Errorf("pre-copy: %q, the case wants %q (stop rule %q)", r.Str("precopy"), cc.phaulPrecopy, r.Str("stop_rule"))
			}
			switch {
			case cc.phaulDiffers != "" && v == "ok":
				t.Errorf("phaul moves it faithfully now: drop its phaul-differs (%s)", cc.phaulDiffers)
			case cc.phaulDiffers != "" && v != cc.phaulSays:
				t.Errorf("after phaul migrate: %s (the known difference says %q)", v, cc.phaulSays)
			case cc.phaulDiffers != "":
				t.Logf("a known difference, not fixed yet (%s)", cc.phaulDiffers)
			case v != "ok":
				t.Errorf("after phaul migrate: %s", v)
			}
		})
	}
}

// TestCorpusOwnView moves the phaul-own cases to a destination that, like
// a second machine, has a filesystem and a /dev/pts of its own: the
// service runs in a mount namespace with a tmpfs over the directory the
// cases keep their files in, and a devpts instance of its own. Each case's
// files are put on that destination as a host provisioned for the
// workload would have them (the same paths, bytes and modes; a FIFO made
// anew), and the case's verdict is read there, through the service's
// root.
func TestCorpusOwnView(t *testing.T) {
	var cases []corpusCase
	for _, cc := range loadCases(t) {
		if cc.phaulOwn != "" {
			cases = append(cases, cc)
		}
	}
	if len(cases) == 0 {
		t.Skip("no case needs a destination of its own")
	}
	bins := t.TempDir()
	build(t, cases, bins)
	h := twohosts.New(t)
	own := t.TempDir()
	svc := h.StartServiceWith(t, []string{
		"mount -t tmpfs -o mode=0755 phaul-own " + own,
		"mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts",
		"mount --bind /dev/pts/ptmx /dev/ptmx",
	})
	for _, cc := range cases {
		t.Run(cc.name, func(t *testing.T) {
			dir := filepath.Join(own, cc.name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			pid := h.StartProcess(t, filepath.Join(bins, cc.name), dir)
			if _, err := waitFile(dir, "ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			there := filepath.Join(fmt.Sprintf("/proc/%d/root", svc.Pid()), dir)
			provision(t, dir, there)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r := h.Migrate(t, ctx, pid, svc.Addr)
			dp := int(r.Num("dest_pid"))
			if dp > 0 {
				t.Cleanup(func() { testutil.KillPid(dp) })
			}
			if r.ExitCode != 0 {
				t.Fatalf("phaul migrate: exit %d: %s\n%s", r.ExitCode, r.Str("error"), r.Stderr)
			}
			if testutil.Alive(pid) {
				t.Errorf("the source copy (pid %d) still exists", pid)
			}
			// Read through the service's root: the case's own ends
			// with it.
			if v := verdict(there); v != "ok" {
				t.Errorf("after phaul migrate: %s", v)
			}
		})
	}
}

// TestCorpusPtyIndexTaken: the pty case to a destination with a /dev/pts
// of its own where another task holds the pty index the case's master
// has: refused before the freeze, naming the holder, and the case goes on
// unchanged on the source.
func TestCorpusPtyIndexTaken(t *testing.T) {
	var cc corpusCase
	for _, c := range loadCases(t) {
		if c.name == "pty" {
			cc = c
		}
	}
	bins := t.TempDir()
	build(t, []corpusCase{cc}, bins)
	h := twohosts.New(t)
	svc := h.StartServiceWith(t, []string{
		"mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts",
		"mount --bind /dev/pts/ptmx /dev/ptmx",
	})
	dir := t.TempDir()
	pid := h.StartProcess(t, filepath.Join(bins, cc.name), dir)
	if _, err := waitFile(dir, "ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	idx := masterIndex(t, pid)
	takePty(t, fmt.Sprintf("/proc/%d/root/dev", svc.Pid()), idx)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := h.Migrate(t, ctx, pid, svc.Addr)
	want := fmt.Sprintf("is the master of pty %d, and pty %d is taken here, by pid %d", idx, idx, os.Getpid())
	if r.ExitCode != 4 || r.Str("error_phase") != "checks" || !strings.Contains(r.Str("error"), want) {
		t.Errorf("exit %d, error phase %q: %s; want exit 4 in the checks, saying %q", r.ExitCode, r.Str("error_phase"), r.Str("error"), want)
	}
	if v := verdict(dir); v != "ok" {
		t.Errorf("refused, and yet the case changed on the source: %s", v)
	}
}

// masterIndex is the index of the pty master task pid holds.
func masterIndex(t *testing.T, pid int) int {
	t.Helper()
	infos, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", pid))
	for _, fi := range infos {
		link, _ := os.Readlink(strings.Replace(fi, "/fdinfo/", "/fd/", 1))
		data, _ := os.ReadFile(fi)
		_, v, ok := strings.Cut(string(data), "tty-index:")
		if ok && strings.HasSuffix(link, "ptmx") {
			var idx int
			fmt.Sscan(v, &idx)
			return idx
		}
	}
	t.Fatalf("pid %d holds no pty master", pid)
	return 0
}

// takePty opens ptys through dev (DEV/ptmx, DEV/pts) until it holds index
// idx, master and slave, until the test ends.
func takePty(t *testing.T, dev string, idx int) {
	t.Helper()
	for range idx + 1 {
		m, err := os.OpenFile(filepath.Join(dev, "ptmx"), os.O_RDWR|syscall.O_NOCTTY, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
		if err != nil {
			t.Fatal(err)
		}
		if int(n) != idx {
			continue
		}
		if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
			t.Fatal(err)
		}
		s, err := os.OpenFile(filepath.Join(dev, "pts", strconv.Itoa(idx)), os.O_RDWR|syscall.O_NOCTTY, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return
	}
	t.Fatalf("could not take pty %d in %s", idx, dev)
}

// provision puts the files of the case's directory src at dst, as a host
// provisioned for the workload would have them: regular files with their
// bytes and mode, FIFOs made anew (empty: what is queued is the tree's
// state, which the migration carries).
func provision(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		from, to := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case info.Mode()&os.ModeNamedPipe != 0:
			err = syscall.Mkfifo(to, uint32(info.Mode().Perm()))
		case info.Mode().IsRegular():
			var data []byte
			if data, err = os.ReadFile(from); err == nil {
				err = os.WriteFile(to, data, info.Mode().Perm())
			}
		default:
			t.Fatalf("provision: %s is neither a file nor a FIFO", from)
		}
		if err != nil {
			t.Fatalf("provision %s: %v", to, err)
		}
	}
}

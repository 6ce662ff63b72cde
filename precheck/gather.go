package precheck

import (
	"bufio"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/phaul/phaul/internal/cgroups"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/proc"
)

// maxHash is the largest file the checks hash; larger ones are compared
// by size only.
const maxHash = 256 << 20

// GatherSource collects the facts of the tree rooted at pid and of this
// host. cpuinfoImg is CRIU's cpuinfo dump of this host (may be nil).
func GatherSource(ctx context.Context, pid int, host *pb.HostInfo, cpuinfoImg []byte) (*pb.SourceFacts, error) {
	f := &pb.SourceFacts{Host: host, CpuinfoImg: cpuinfoImg, CpuFlags: CPUFlags("/proc/cpuinfo")}
	sets, err := cgroups.ProcessSets(pid)
	if err != nil {
		return nil, err
	}
	for _, s := range sets {
		f.Cgroups = append(f.Cgroups, &pb.CgroupSet{Controllers: s.Controllers, Path: s.Path})
	}
	if l, err := cgroups.Detect(); err == nil {
		f.CgroupKind = l.Kind
	}
	f.MemoryBytes = proc.RSS(pid)
	tree := proc.Tree(pid)
	files := map[string]*pb.FileFact{}
	inodes := map[uint64]bool{}   // socket inodes of the tree
	mounts := map[string]string{} // mount point -> fs type, from the root task's view
	if mi, err := readMountinfo(pid); err == nil {
		mounts = mi
	}
	needs := map[string]*pb.Need{}
	need := func(kind, name, why string) {
		key := kind + ":" + name
		if _, ok := needs[key]; !ok {
			needs[key] = &pb.Need{Kind: kind, Name: name, Why: why}
		}
	}
	openedBy := map[string][]string{} // a written file: the fds (/proc/PID/fd/N) it was open on
	addFile := func(path, use string, written bool) {
		if !strings.HasPrefix(path, "/") || strings.HasSuffix(path, " (deleted)") ||
			strings.HasPrefix(path, "/proc/") || strings.HasPrefix(path, "/sys/") || strings.HasPrefix(path, "/memfd:") {
			return
		}
		if old, ok := files[path]; ok {
			old.Written = old.Written || written
			return
		}
		st, err := os.Stat(path)
		if err != nil {
			return
		}
		if st.Mode()&os.ModeCharDevice != 0 {
			switch path {
			case "/dev/net/tun":
				need("dev", "tun", path+" is open")
			case "/dev/fuse":
				need("fs", "fuse", path+" is open")
			}
		}
		if !st.Mode().IsRegular() {
			return
		}
		files[path] = &pb.FileFact{Path: path, Size: uint64(st.Size()), Mode: uint32(st.Mode().Perm()), Use: use, Written: written,
			FsType: fsMagic(path)}
		files[path].Dev, files[path].Inode = devInode(st)
		if fs := fsTypeOf(mounts, path); fs != "" {
			need("fs", fs, path+" is on "+fs)
		}
	}
	for _, p := range tree {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		st, err := settledStat(ctx, p)
		if err != nil {
			continue
		}
		tf := &pb.TaskFact{Pid: int32(p), Comm: st.Comm, State: string(st.State)}
		if c, err := proc.ReadStatus(p); err == nil {
			tf.Tracer = int32(c.TracerPid)
			tf.CapInh, tf.CapPrm, tf.CapEff, tf.CapBnd, tf.Uids, tf.Gids, tf.Groups = c.CapInh, c.CapPrm, c.CapEff, c.CapBnd, c.Uids, c.Gids, c.Groups
		}
		tf.OwnUserNs, _ = proc.OwnNamespace(p, "user")
		f.Tasks = append(f.Tasks, tf)
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p)); err == nil {
			addFile(exe, "exe", false)
		}
		for _, m := range mappedFiles(p) {
			addFile(m, "map", false)
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		for _, fd := range fds {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p, fd.Name()))
			if err != nil {
				continue
			}
			if ino, ok := strings.CutPrefix(link, "socket:["); ok {
				if n, err := strconv.ParseUint(strings.TrimSuffix(ino, "]"), 10, 64); err == nil {
					inodes[n] = true
				}
				continue
			}
			w := fdWritable(p, fd.Name())
			addFile(link, "open", w)
			if w {
				openedBy[link] = append(openedBy[link], fmt.Sprintf("/proc/%d/fd/%s", p, fd.Name()))
			}
		}
	}
	f.RestorePids, f.PidNs = restorePids(tree)
	if len(tree) > 0 {
		f.Sockets = socketsOf(tree[0], inodes)
		// A tree with a mount namespace of its own has its mounts
		// restored: the destination needs their filesystems too.
		if own, _ := proc.OwnNamespace(tree[0], "mnt"); own {
			for mnt, fs := range mounts {
				need("fs", fs, "the tree mounts "+mnt)
			}
		}
	}
	for _, s := range f.Sockets {
		if pn := protoName(s); pn != "" {
			need("proto", pn, fmt.Sprintf("a %s socket", pn))
		}
	}
	// Hash what may have to be compared; never what the tree writes.
	var list []*pb.FileFact
	for _, ff := range files {
		list = append(list, ff)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Path < list[j].Path })
	hashAll(ctx, list)
	f.Files = keptOpen(list, openedBy)
	for _, n := range needs {
		f.Needs = append(f.Needs, n)
	}
	sort.Slice(f.Needs, func(i, j int) bool { return f.Needs[i].Kind+f.Needs[i].Name < f.Needs[j].Kind+f.Needs[j].Name })
	return f, nil
}

// hashAll fills sha256 and build-id of the files that may have to be
// compared: not those the tree writes, nor the very large. Of a file the
// tree writes, it hashes the head (SameFile).
func hashAll(ctx context.Context, files []*pb.FileFact) {
	inParallel(ctx, len(files), func(i int) {
		ff := files[i]
		switch {
		case ff.Written:
			ff.HeadLen = min(ff.Size, maxHead)
			ff.HeadSha256, _ = headSum(ff.Path, ff.HeadLen)
		case ff.Size <= maxHash:
			ff.Sha256, _ = Hashes.Sum(ff.Path)
			ff.BuildId = buildID(ff.Path)
		}
	})
}

// inParallel runs fn(0..n-1), four at a time (hashing is I/O and CPU
// bound), skipping what is left once ctx ends.
func inParallel(ctx context.Context, n int, fn func(i int)) {
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i := 0; i < n && ctx.Err() == nil; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			if ctx.Err() == nil {
				fn(i)
			}
		}(i)
	}
	wg.Wait()
}

// HashCache remembers file hashes by device, inode, size and mtime, so that
// a file is read at most once while it does not change.
type HashCache struct {
	mu sync.Mutex
	m  map[[4]uint64]string
}

// Hashes is the process's cache.
var Hashes = &HashCache{}

// Sum returns the hex sha256 of the file at path.
func (c *HashCache) Sum(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", err
	}
	key := [4]uint64{st.Dev, st.Ino, uint64(st.Size), uint64(st.Mtim.Nano())}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[[4]uint64]string{}
	}
	if h, ok := c.m[key]; ok {
		c.mu.Unlock()
		return h, nil
	}
	c.mu.Unlock()
	fh, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	c.mu.Lock()
	c.m[key] = sum
	c.mu.Unlock()
	return sum, nil
}

// buildID returns the GNU build-id of an ELF file, or "".
func buildID(path string) string {
	ef, err := elf.Open(path)
	if err != nil {
		return ""
	}
	defer ef.Close()
	sec := ef.Section(".note.gnu.build-id")
	if sec == nil {
		return ""
	}
	data, err := sec.Data()
	if err != nil || len(data) < 16 {
		return ""
	}
	namesz := binary.LittleEndian.Uint32(data[0:4])
	descsz := binary.LittleEndian.Uint32(data[4:8])
	off := 12 + int((namesz+3)&^3)
	if off+int(descsz) > len(data) {
		return ""
	}
	return hex.EncodeToString(data[off : off+int(descsz)])
}

// mappedFiles lists the files mapped by pid.
func mappedFiles(pid int) []string {
	fh, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil
	}
	defer fh.Close()
	seen := map[string]bool{}
	var out []string
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			continue
		}
		path := strings.Join(f[5:], " ")
		if strings.HasPrefix(path, "/") && !seen[path] {
			seen[path] = true
			out = append(out, path)
		}
	}
	return out
}

// fdWritable reports whether fd of pid is open for writing.
func fdWritable(pid int, fd string) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0
		}
	}
	return false
}

// readMountinfo maps mount points to filesystem types as pid sees them.
func readMountinfo(pid int) (map[string]string, error) {
	fh, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 {
			m[pf[4]] = qf[0]
		}
	}
	return m, sc.Err()
}

// fsTypeOf finds the filesystem type of the longest mount point above path.
func fsTypeOf(mounts map[string]string, path string) string {
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		if t, ok := mounts[p]; ok {
			return t
		}
		if p == "/" {
			return ""
		}
	}
}

// keptOpen drops the files the tree had open for writing only for a
// moment: one whose fds, looked at again now, no longer lead to it (a
// temporary file written and renamed away, as programs save their state)
// is not a file the dump will find, and must not fail the checks.
func keptOpen(files []*pb.FileFact, openedBy map[string][]string) []*pb.FileFact {
	out := files[:0]
	for _, ff := range files {
		fds := openedBy[ff.Path]
		if ff.Use != "open" || len(fds) == 0 {
			out = append(out, ff)
			continue
		}
		for _, fd := range fds {
			if link, err := os.Readlink(fd); err == nil && link == ff.Path {
				out = append(out, ff)
				break
			}
		}
	}
	return out
}

// dSettle is how long a task may stay in uninterruptible sleep (D) and
// still be judged runnable: a write to a disk file, a page fault, a rename
// pass through D for a moment; a task stuck there (a dead NFS server) stays.
const dSettle = 250 * time.Millisecond

// settledStat reads a task's stat; one found in D is looked at again for
// up to dSettle, and reported as it is then.
func settledStat(ctx context.Context, pid int) (proc.Stat, error) {
	st, err := proc.ReadStat(pid)
	for deadline := time.Now().Add(dSettle); err == nil && st.State == 'D' && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return st, nil
		case <-time.After(10 * time.Millisecond):
		}
		st, err = proc.ReadStat(pid)
	}
	return st, err
}

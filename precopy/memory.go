package precopy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/criu"
	"github.com/phaul/phaul/internal/proc"
)

// Task is one process of the tree whose memory a round reads.
type Task struct {
	Pid int    // its PID here
	ID  uint64 // its PID as CRIU sees it (in the tree's PID namespace): the image id
}

// Tasks lists the processes of the tree rooted at root, by image id.
func Tasks(root int) ([]Task, error) {
	var out []Task
	for _, pid := range proc.Tree(root) {
		st, err := proc.ReadStatus(pid)
		if err != nil {
			if pid == root {
				return nil, fmt.Errorf("tree %d: %w", root, err)
			}
			continue // exited meanwhile
		}
		id := st.NSPid
		if id <= 0 {
			id = pid
		}
		out = append(out, Task{Pid: pid, ID: uint64(id)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// region is a mapping whose pages CRIU's dump sends as a task's own:
// private, anonymous or file-backed (of those, only the pages the task
// wrote).
type region struct {
	start, end uint64
	file       bool
}

// mapping is one line of /proc/PID/maps.
type mapping struct {
	start, end uint64
	perms      string
	off        uint64 // offset in the mapped object
	dev        string // "major:minor", as maps prints it
	inode      uint64
	path       string
}

// regions parses /proc/PID/maps: the task's private memory, and its
// mappings of shared memory objects CRIU dumps as shmem images.
func regions(pid int) ([]region, []sharedMap, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var private []region
	var shared []sharedMap
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m, ok := parseMapsLine(sc.Text())
		if !ok {
			continue
		}
		if r, ok := m.private(); ok {
			private = append(private, r)
		} else if s, ok := m.shared(shmemDev()); ok && (!s.sysv || ownIPC(pid)) {
			shared = append(shared, s)
		}
	}
	return private, shared, sc.Err()
}

// parseMapsLine parses "start-end perms offset dev inode [path]".
func parseMapsLine(line string) (mapping, bool) {
	f := strings.Fields(line)
	if len(f) < 5 || len(f[1]) != 4 {
		return mapping{}, false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return mapping{}, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	off, err3 := strconv.ParseUint(f[2], 16, 64)
	inode, err4 := strconv.ParseUint(f[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil || end <= start || start%criu.PageSize != 0 || end%criu.PageSize != 0 {
		return mapping{}, false
	}
	return mapping{start: start, end: end, perms: f[1], off: off, dev: f[3], inode: inode, path: strings.Join(f[5:], " ")}, true
}

// private returns the region of a mapping CRIU dumps as a task's private
// memory (vma_entry_is_private): readable private mappings, but not
// [vvar] and the like, which are not memory. Unreadable mappings are left
// out: their pages, if any, are sent at the freeze.
func (m mapping) private() (region, bool) {
	if m.perms[0] != 'r' || m.perms[3] != 'p' {
		return region{}, false
	}
	switch m.path {
	case "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]":
		return region{}, false
	}
	return region{start: m.start, end: m.end, file: m.inode != 0}, true
}

// Pagemap bits (Documentation/admin-guide/mm/pagemap.rst; criu/include/mem.h).
const (
	pmePresent = 1 << 63
	pmeSwap    = 1 << 62
	pmeFile    = 1 << 61
	pmeGuard   = 1 << 58
	pmePFN     = 1<<55 - 1
)

// wanted reports whether CRIU's dump sends the page with this pagemap
// entry (should_dump_page): present or swapped, not the zero page, not a
// guard, and for a private file mapping only if the task wrote it.
func wanted(pme uint64, file bool, zeroPFN uint64) bool {
	switch {
	case pme&(pmePresent|pmeSwap) == 0, pme&pmeGuard != 0:
		return false
	case file && pme&pmeFile != 0:
		return false
	case pme&pmePresent != 0 && zeroPFN != 0 && pme&pmePFN == zeroPFN:
		return false
	}
	return true
}

var zeroOnce struct {
	sync.Once
	pfn uint64
}

// zeroPFN is the page frame of the kernel's zero page (0 if this process
// may not see frame numbers): a page mapped to it is a hole for CRIU.
func zeroPFN() uint64 {
	zeroOnce.Do(func() {
		m, err := unix.Mmap(-1, 0, criu.PageSize, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return
		}
		defer unix.Munmap(m)
		_ = m[0] // a read fault maps the zero page
		var b [8]byte
		f, err := os.Open("/proc/self/pagemap")
		if err != nil {
			return
		}
		defer f.Close()
		addr := uint64(uintptr(unsafe.Pointer(&m[0])))
		if _, err := f.ReadAt(b[:], int64(addr/criu.PageSize*8)); err != nil {
			return
		}
		if pme := binary.NativeEndian.Uint64(b[:]); pme&pmePresent != 0 {
			zeroOnce.pfn = pme & pmePFN
		}
	})
	return zeroOnce.pfn
}

// errGone is returned when the task exited during a read.
var errGone = errors.New("task gone")

// memReader reads one task's wanted pages.
type memReader struct {
	pid     int
	pagemap *os.File
	zero    uint64
	pme     []byte // pagemap entries of one batch
	buf     []byte // page bytes of one batch
	local   []unix.Iovec
	remote  []unix.RemoteIovec
}

func openMem(pid int) (*memReader, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return nil, err
	}
	return &memReader{
		pid: pid, pagemap: f, zero: zeroPFN(),
		pme: make([]byte, chunkPages*8),
		buf: make([]byte, chunkPages*criu.PageSize),
	}, nil
}

func (m *memReader) close() { m.pagemap.Close() }

// span is a run of wanted pages, and where its bytes are in the batch.
type span struct {
	vaddr, n uint64
	off      int
}

// batch reads up to chunkPages pages of r from va on: the runs of wanted
// pages among them and their bytes. It returns the address to go on from.
// A page that could not be read (unmapped meanwhile) is left out.
func (m *memReader) batch(r region, va uint64, spans []span) ([]span, uint64, error) {
	n := min((r.end-va)/criu.PageSize, chunkPages)
	pme := m.pme[:n*8]
	if _, err := m.pagemap.ReadAt(pme, int64(va/criu.PageSize*8)); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, 0, errGone
		}
		return nil, va + n*criu.PageSize, nil // the mapping changed: skip
	}
	spans = spans[:0]
	off := 0
	for i := uint64(0); i < n; i++ {
		if !wanted(binary.NativeEndian.Uint64(pme[i*8:]), r.file, m.zero) {
			continue
		}
		p := va + i*criu.PageSize
		if k := len(spans) - 1; k >= 0 && spans[k].vaddr+spans[k].n*criu.PageSize == p {
			spans[k].n++
		} else {
			spans = append(spans, span{vaddr: p, n: 1, off: off})
		}
		off += criu.PageSize
	}
	next := va + n*criu.PageSize
	if len(spans) == 0 {
		return spans, next, nil
	}
	got, err := m.read(spans)
	if err != nil {
		return nil, 0, err
	}
	return trim(spans, got), next, nil
}

// read copies the spans' bytes out of the task, returning how many bytes
// arrived (process_vm_readv stops at the first page it cannot read).
func (m *memReader) read(spans []span) (int, error) {
	m.remote = m.remote[:0]
	total := 0
	for _, s := range spans {
		m.remote = append(m.remote, unix.RemoteIovec{Base: uintptr(s.vaddr), Len: int(s.n * criu.PageSize)})
		total += int(s.n * criu.PageSize)
	}
	m.local = append(m.local[:0], unix.Iovec{Base: &m.buf[0]})
	m.local[0].SetLen(total)
	return vmRead(m.pid, m.local, m.remote)
}

// readMem reads len(buf) bytes of task pid's memory at va: how many
// whole pages arrived.
func readMem(pid int, va uint64, buf []byte) (int, error) {
	local := []unix.Iovec{{Base: &buf[0]}}
	local[0].SetLen(len(buf))
	return vmRead(pid, local, []unix.RemoteIovec{{Base: uintptr(va), Len: len(buf)}})
}

// vmRead is process_vm_readv, counting whole pages: errGone if the task
// exited, nothing read if the first page was unmapped meanwhile.
func vmRead(pid int, local []unix.Iovec, remote []unix.RemoteIovec) (int, error) {
	got, err := unix.ProcessVMReadv(pid, local, remote, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return 0, errGone
	case err != nil:
		return 0, nil
	}
	return got - got%criu.PageSize, nil
}

// trim cuts spans to the first got bytes.
func trim(spans []span, got int) []span {
	for i, s := range spans {
		end := s.off + int(s.n*criu.PageSize)
		if end <= got {
			continue
		}
		if s.off >= got {
			return spans[:i]
		}
		spans[i].n = uint64(got-s.off) / criu.PageSize
		return spans[:i+1]
	}
	return spans
}

package precopy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/criu"
)

// Shared memory in the rounds.
//
// CRIU dumps a tree's anonymous shared memory and memfds (criu/memfd.c)
// and, when the tree has an IPC namespace of its own, its SysV shm
// segments (criu/ipc_ns.c) as shmem images: one per object, named by its
// inode number (a SysV segment's inode number is its IPC id), its pages
// keyed by their offset in the object (criu/shmem.c, do_dump_one_shmem).
// A round reads an object's pages through the tasks that map it: the
// pages present in some task's mapping of it (that task's pagemap), read
// there with process_vm_readv, each page once, in the object's order.
// Reading through the object itself (/proc/PID/map_files) would attach a
// SysV segment, which the running workload sees (shm_nattch, its times).
// CRIU's final dump sends every page the object holds: a page no task had
// mapped during the last round is sent then.

// sharedMap is a task's mapping of a shared memory object.
type sharedMap struct {
	id         uint64 // the object's inode number: CRIU's shmid
	start, end uint64
	off        uint64 // offset in the object of start
	sysv       bool
}

// shared returns a mapping of a shared memory object CRIU dumps as a
// shmem image: a readable shared mapping of the kernel's internal shmem
// mount (not of a tmpfs one sees, whose files CRIU does not dump, nor of
// hugetlbfs). A SysV segment's inode number, its IPC id, may be 0.
func (m mapping) shared(shmDev string) (sharedMap, bool) {
	if m.perms[0] != 'r' || m.perms[3] != 's' || shmDev == "" || m.dev != shmDev {
		return sharedMap{}, false
	}
	return sharedMap{id: m.inode, start: m.start, end: m.end, off: m.off, sysv: strings.HasPrefix(m.path, "/SYSV")}, true
}

var shmemOnce struct {
	sync.Once
	dev string
}

// shmemDev is the device of the kernel's internal shmem mount, as
// /proc/PID/maps prints it ("" if it cannot be learnt: then no shared
// memory is read in the rounds), found as CRIU finds it: from an object
// of its own there.
func shmemDev() string {
	shmemOnce.Do(func() {
		fd, err := unix.MemfdCreate("phaul-shmem-dev", unix.MFD_CLOEXEC)
		if err != nil {
			return
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return
		}
		shmemOnce.dev = fmt.Sprintf("%02x:%02x", unix.Major(st.Dev), unix.Minor(st.Dev))
	})
	return shmemOnce.dev
}

// ownIPC reports whether the task is in an IPC namespace other than
// phaul's: only then does CRIU dump its SysV segments.
func ownIPC(pid int) bool {
	theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/ipc", pid))
	ours, err2 := os.Readlink("/proc/self/ns/ipc")
	return err1 == nil && err2 == nil && theirs != ours
}

// sharedRun is a run of an object's pages present in a task's mapping.
type sharedRun struct {
	page, n uint64 // the run's pages in the object
	pid     int
	vaddr   uint64 // where its first page is mapped in pid
}

// sharedPages collects, in a round, the runs of each shared object's
// pages present in some task.
type sharedPages map[uint64][]sharedRun

// present adds the runs of s's pages present in the task m reads.
func (m *memReader) present(s sharedMap, into sharedPages) error {
	for va := s.start; va < s.end; {
		n := min((s.end-va)/criu.PageSize, chunkPages)
		pme := m.pme[:n*8]
		if _, err := m.pagemap.ReadAt(pme, int64(va/criu.PageSize*8)); err != nil {
			if errors.Is(err, unix.ESRCH) {
				return errGone
			}
			return nil // the mapping changed: leave it to the dump
		}
		runs := into[s.id]
		for i := uint64(0); i < n; i++ {
			if p := binary.NativeEndian.Uint64(pme[i*8:]); p&pmePresent == 0 || p&pmeGuard != 0 {
				continue
			}
			a := va + i*criu.PageSize
			page := (s.off + a - s.start) / criu.PageSize
			if k := len(runs) - 1; k >= 0 && runs[k].pid == m.pid && runs[k].page+runs[k].n == page &&
				runs[k].vaddr+runs[k].n*criu.PageSize == a {
				runs[k].n++
				continue
			}
			runs = append(runs, sharedRun{page: page, n: 1, pid: m.pid, vaddr: a})
		}
		into[s.id] = runs
		va += n * criu.PageSize
	}
	return nil
}

// sendShared writes each object's present pages through e, an image per
// object, its pages in order and each once (the first task found to map a
// page is where it is read).
func sendShared(ctx context.Context, e *Encoder, objs sharedPages) error {
	ids := make([]uint64, 0, len(objs))
	for id := range objs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	buf := make([]byte, chunkPages*criu.PageSize)
	for _, id := range ids {
		runs := objs[id]
		slices.SortStableFunc(runs, func(a, b sharedRun) int { return cmpU64(a.page, b.page) })
		done, err := e.Open(criu.PageDst(criu.PSTypeShmem, id))
		if err != nil {
			return err
		}
		if err := wait(ctx, done); err != nil {
			return err
		}
		next := uint64(0) // the first page not yet passed
		for _, r := range runs {
			if skip := min(r.n, next-min(next, r.page)); skip > 0 {
				r.page, r.vaddr, r.n = r.page+skip, r.vaddr+skip*criu.PageSize, r.n-skip
			}
			if r.n == 0 {
				continue
			}
			next = r.page + r.n
			if err := sendRun(e, r, buf); err != nil {
				return fmt.Errorf("shared memory %d: %w", id, err)
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// sendRun reads one run from its task and writes it. What could not be
// read (the task exited, the mapping changed) is left to the dump.
func sendRun(e *Encoder, r sharedRun, buf []byte) error {
	for r.n > 0 {
		k := min(r.n, chunkPages)
		got, err := readMem(r.pid, r.vaddr, buf[:k*criu.PageSize])
		if errors.Is(err, errGone) {
			return nil
		}
		if err != nil {
			return err
		}
		if got > 0 {
			if err := e.Pages(r.page*criu.PageSize, buf[:got]); err != nil {
				return err
			}
		}
		if got < len(buf[:k*criu.PageSize]) {
			return nil
		}
		r.page, r.vaddr, r.n = r.page+k, r.vaddr+k*criu.PageSize, r.n-k
	}
	return nil
}

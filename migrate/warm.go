package migrate

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// warmMemory is memory the destination touches while the rounds run and
// gives back just before CRIU's restore, which then faults the tree's
// pages into memory the kernel has just had in use (and the source of a
// post-copy migration before it dumps its snapshot into a tmpfs). On a VM whose free
// memory goes back to the host (virtio-balloon free page reporting, as on
// Firecracker), memory the guest has not used for a while costs a host
// fault on first touch; this moves that cost out of the freeze
// (bench/results/README.md). Elsewhere it costs the touching, done while
// the tree runs, and memory the restore is about to take anyway.
type warmMemory struct {
	mem  []byte
	stop atomic.Bool
	wg   sync.WaitGroup
}

// warm starts touching the memory a tree of n bytes needs, but never more
// than half of what this host has available (the size comes from the
// source); nil if none can be had.
func warm(n uint64) *warmMemory {
	n = warmSize(n, memAvailable())
	if n == 0 {
		return nil
	}
	m, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil
	}
	w := &warmMemory{mem: m}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for off := 0; off < len(m) && !w.stop.Load(); off += 2 << 20 {
			for p := off; p < min(off+2<<20, len(m)); p += 4096 {
				m[p] = 1
			}
		}
	}()
	return w
}

// release stops the touching and gives the memory back.
func (w *warmMemory) release() {
	if w == nil || w.mem == nil {
		return
	}
	w.stop.Store(true)
	w.wg.Wait()
	unix.Munmap(w.mem)
	w.mem = nil
}

// warmSize bounds the warm-up to half the memory available.
func warmSize(want, available uint64) uint64 {
	return min(want, available/2) &^ (4096 - 1)
}

// memAvailable is MemAvailable of /proc/meminfo in bytes, 0 if unknown.
func memAvailable() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

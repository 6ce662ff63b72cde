// Command workload is the process phaul's tests, demo and benchmarks
// migrate. It keeps state whose continuity after a restore can be checked
// from outside:
//
//   - a counter, written atomically to --state every --interval (the file
//     is not kept open, so the workload holds no file whose size could
//     change between dump and restore);
//   - optionally a child process (--child) that keeps its own counter in
//     STATE.child;
//   - optionally a TCP server (--listen; plain TCP: Go enables MPTCP by
//     default since 1.24 and CRIU cannot dump MPTCP sockets) answering one line per request:
//     "GET [ID]" gives "count=N token=T pid=P [req=ID]", where T is a random token made at
//     start (the same token after a migration proves it is the same
//     process with the same memory), "SUM" gives "sum=ok" or "sum=BAD ..."
//     after re-verifying the --mem area;
//   - optionally --mem MiB of memory, half random and half compressible,
//     with --dirty pages rewritten per second; every page's content is
//     derived from its index and its rewrite generation, so the whole area
//     can be re-verified at any time (SUM, or SIGUSR1, which writes the
//     verdict to STATE.sum); the area's address and length are written to
//     STATE.mem; --mem-kind puts the area in private memory (the
//     default), anonymous shared memory, a memfd or a SysV shm segment
//     (best in an IPC namespace of its own, which CRIU then dumps);
//   - optionally (--echo) the counter as a line "count N" on stdout at
//     every tick, for the tests of terminals: a write error is ignored,
//     so a terminal that went away does not stop the count.
//go:debug multipathtcp=0

package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const pageSize = 4096

func main() {
	state := flag.String("state", "", "file the counter is written to (required)")
	interval := flag.Duration("interval", 50*time.Millisecond, "counter tick")
	child := flag.Bool("child", false, "start a child process that counts too")
	listen := flag.String("listen", "", "serve GET/SUM on this TCP address")
	memMiB := flag.Int("mem", 0, "MiB of verifiable memory to hold")
	dirty := flag.Int("dirty", 0, "pages of --mem rewritten per second")
	memKind := flag.String("mem-kind", "private", "where --mem lives: private, shared, memfd or sysv")
	echo := flag.Bool("echo", false, "also print the counter on stdout at every tick")
	connect := flag.String("connect", "", "keep trying to open a TCP connection to this address (for a socket in SYN_SENT)")
	flag.Parse()
	if *state == "" {
		fmt.Fprintln(os.Stderr, "workload: --state is required")
		os.Exit(2)
	}
	w := &workload{state: *state}
	w.tokenInit()
	if *memMiB > 0 {
		if err := w.memInit(*memMiB, *memKind); err != nil {
			fmt.Fprintln(os.Stderr, "workload:", err)
			os.Exit(1)
		}
		// Where the area is, for tests that look at it from outside (Go's
		// heap does not move objects).
		writeFile(*state+".mem", fmt.Sprintf("%x %d\n", uintptr(unsafe.Pointer(&w.mem[0])), len(w.mem)))
	}
	if *child {
		cmd := exec.Command(os.Args[0], "--state", *state+".child", "--interval", interval.String())
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "workload: start child:", err)
			os.Exit(1)
		}
		w.childPid = cmd.Process.Pid
		go cmd.Wait()
	}
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "workload:", err)
			os.Exit(1)
		}
		go w.serve(ln)
	}
	if *connect != "" {
		go func() {
			for {
				if c, err := net.DialTimeout("tcp", *connect, 10*time.Minute); err == nil {
					c.Close()
				}
				time.Sleep(time.Second)
			}
		}()
	}
	if *dirty > 0 && w.mem != nil {
		go w.dirtyLoop(*dirty)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			writeFile(*state+".sum", w.verify()+"\n")
		}
	}()
	t := time.NewTicker(*interval)
	for range t.C {
		n := w.count.Add(1)
		writeFile(*state, fmt.Sprintf("%d %d %d\n", n, os.Getpid(), w.childPid))
		if *echo {
			fmt.Fprintf(os.Stdout, "count %d\n", n)
		}
	}
}

type workload struct {
	state    string
	count    atomic.Int64
	token    string
	childPid int

	mu   sync.Mutex // guards mem and gen
	mem  []byte
	gen  []uint32
	seed [32]byte
}

func (w *workload) tokenInit() {
	var b [8]byte
	rand.Read(b[:])
	w.token = hex.EncodeToString(b[:])
}

// writeFile replaces path atomically.
func writeFile(path, s string) {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err == nil {
		os.Rename(tmp, path)
	}
}

func (w *workload) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				cmd, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
				switch cmd {
				case "GET":
					if arg != "" {
						arg = " req=" + arg
					}
					fmt.Fprintf(c, "count=%d token=%s pid=%d%s\n", w.count.Load(), w.token, os.Getpid(), arg)
				case "SUM":
					fmt.Fprintln(c, w.verify())
				default:
					fmt.Fprintln(c, "error=unknown command")
				}
			}
		}()
	}
}

// fillPage writes page i, generation g: the first half of the area is
// pseudo-random (incompressible), the second half repeats a short pattern
// (compressible).
func (w *workload) fillPage(dst []byte, i int, g uint32) {
	var in [40]byte
	copy(in[:], w.seed[:])
	binary.LittleEndian.PutUint32(in[32:], uint32(i))
	binary.LittleEndian.PutUint32(in[36:], g)
	if i < len(w.gen)/2 {
		// One hash seeds a xorshift stream: random enough that zstd
		// cannot shrink it, cheap enough to rewrite tens of thousands of
		// pages a second (the benchmark's hot workload).
		h := sha256.Sum256(in[:])
		x := binary.LittleEndian.Uint64(h[:]) | 1
		for off := 0; off+8 <= len(dst); off += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			binary.LittleEndian.PutUint64(dst[off:], x)
		}
		return
	}
	line := fmt.Sprintf("page %08d generation %08d ", i, g)
	for off := 0; off < len(dst); off += len(line) {
		copy(dst[off:], line)
	}
}

func (w *workload) memInit(mib int, kind string) error {
	n := mib * (1 << 20) / pageSize
	rand.Read(w.seed[:])
	mem, err := allocate(n*pageSize, kind)
	if err != nil {
		return fmt.Errorf("--mem-kind %s: %w", kind, err)
	}
	w.mem = mem
	w.gen = make([]uint32, n)
	for i := 0; i < n; i++ {
		w.fillPage(w.mem[i*pageSize:(i+1)*pageSize], i, 0)
	}
	return nil
}

// allocate returns size bytes of memory of the kind asked.
func allocate(size int, kind string) ([]byte, error) {
	const rw = unix.PROT_READ | unix.PROT_WRITE
	switch kind {
	case "private":
		return make([]byte, size), nil
	case "shared":
		return unix.Mmap(-1, 0, size, rw, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	case "memfd":
		fd, err := unix.MemfdCreate("workload-mem", 0)
		if err != nil {
			return nil, err
		}
		defer unix.Close(fd) // the mapping keeps it
		if err := unix.Ftruncate(fd, int64(size)); err != nil {
			return nil, err
		}
		return unix.Mmap(fd, 0, size, rw, unix.MAP_SHARED)
	case "sysv":
		id, err := unix.SysvShmGet(unix.IPC_PRIVATE, size, unix.IPC_CREAT|0o600)
		if err != nil {
			return nil, err
		}
		return unix.SysvShmAttach(id, 0, 0)
	}
	return nil, fmt.Errorf("unknown kind (private, shared, memfd or sysv)")
}

func (w *workload) dirtyLoop(perSecond int) {
	var b [4]byte
	tick := time.NewTicker(10 * time.Millisecond)
	batch := max(perSecond/100, 1)
	for range tick.C {
		w.mu.Lock()
		for k := 0; k < batch; k++ {
			rand.Read(b[:])
			i := int(binary.LittleEndian.Uint32(b[:]) % uint32(len(w.gen)))
			w.gen[i]++
			w.fillPage(w.mem[i*pageSize:(i+1)*pageSize], i, w.gen[i])
		}
		w.mu.Unlock()
	}
}

// verify recomputes every page of the area and compares.
func (w *workload) verify() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mem == nil {
		return "sum=ok pages=0"
	}
	want := make([]byte, pageSize)
	bad := 0
	for i := range w.gen {
		w.fillPage(want, i, w.gen[i])
		if !bytes.Equal(want, w.mem[i*pageSize:(i+1)*pageSize]) {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Sprintf("sum=BAD pages=%d bad=%d", len(w.gen), bad)
	}
	return fmt.Sprintf("sum=ok pages=%d", len(w.gen))
}

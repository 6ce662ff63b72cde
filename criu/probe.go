package criu

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// offsetDebugReg is offsetof(struct user, u_debugreg) on x86_64.
const offsetDebugReg = 848

// ProbeBreakpoints reports whether hardware breakpoints are delivered to
// traced processes on this machine. It forks a child that calls one
// function (probeTarget) in a loop, stops it with ptrace, arms DR0 on that
// function's first instruction, resumes it, and waits briefly for the
// SIGTRAP with the child's instruction pointer there. The child is certain
// to execute that instruction again at once, so the answer does not depend
// on where the child happened to stop. Some VMs do not deliver debug
// exceptions; CRIU before 4.2 then hangs for ever.
func ProbeBreakpoints(ctx context.Context) (bool, error) {
	if runtime.GOARCH != "amd64" {
		return false, fmt.Errorf("breakpoint probe: not implemented on %s", runtime.GOARCH)
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	// All ptrace requests must come from the thread that attached.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	pid, err := forkSpinner()
	if err != nil {
		return false, fmt.Errorf("breakpoint probe: fork: %w", err)
	}
	defer func() {
		_ = unix.Kill(pid, unix.SIGKILL)
		var ws unix.WaitStatus
		for {
			if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != unix.EINTR {
				return
			}
		}
	}()
	if err := unix.PtraceAttach(pid); err != nil {
		return false, fmt.Errorf("breakpoint probe: ptrace attach: %w", err)
	}
	if _, err := waitStop(pid, 2*time.Second); err != nil {
		return false, fmt.Errorf("breakpoint probe: %w", err)
	}
	target := uint64(reflect.ValueOf(probeTarget).Pointer())
	poke := func(reg int, val uint64) error {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], val)
		_, err := unix.PtracePokeUser(pid, uintptr(offsetDebugReg+8*reg), b[:])
		return err
	}
	if err := poke(0, target); err != nil {
		return false, nil // the kernel refuses debug registers: none here
	}
	if err := poke(7, 1); err != nil { // L0: DR0 enabled, on execution
		return false, nil
	}
	if err := unix.PtraceCont(pid, 0); err != nil {
		return false, fmt.Errorf("breakpoint probe: ptrace cont: %w", err)
	}
	// Generous: a loaded machine may take a while to run the child.
	sig, err := waitStop(pid, 2*time.Second)
	if errors.Is(err, errTimeout) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("breakpoint probe: %w", err)
	}
	if sig != unix.SIGTRAP {
		return false, fmt.Errorf("breakpoint probe: the child stopped with %v, not SIGTRAP", sig)
	}
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &regs); err != nil {
		return false, fmt.Errorf("breakpoint probe: get registers: %w", err)
	}
	if regs.Rip != target {
		return false, fmt.Errorf("breakpoint probe: SIGTRAP at %#x, not at the breakpoint %#x", regs.Rip, target)
	}
	return true, nil
}

// probeSink is written by the probe's child only.
var probeSink uint64

// probeTarget is the function the probe's child calls for ever, and on
// whose first instruction the probe sets its breakpoint.
//
//go:noinline
//go:nosplit
//go:norace
func probeTarget() { probeSink++ }

// probeSpin is all the probe's child runs: no allocation, no stack
// growth, no runtime call (the forked child has one thread and no Go
// runtime to speak of).
//
//go:nosplit
//go:norace
func probeSpin() {
	for {
		probeTarget()
	}
}

// forkSpinner forks this process without exec; the child runs probeSpin,
// at the same addresses as this process. Only the calling thread is
// copied, and the child touches nothing but probeSpin, so the hazards of
// fork in a Go program (locks held by other threads) do not reach it.
//
//go:norace
func forkSpinner() (int, error) {
	// Signals stay blocked across the fork, and in the child for good,
	// so that no Go signal handler ever runs there. The breakpoint's
	// SIGTRAP is forced by the kernel whatever the mask, and stops the
	// child for its tracer first; SIGKILL cannot be blocked.
	var all, old unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	if err := unix.PthreadSigmask(unix.SIG_SETMASK, &all, &old); err != nil {
		return 0, err
	}
	r1, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if r1 == 0 && errno == 0 {
		// The child: it dies with this thread, and holds none of
		// this process's files (a pipe of another command must see
		// its end when that command closes it).
		syscall.RawSyscall6(syscall.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0, 0)
		syscall.RawSyscall6(unix.SYS_CLOSE_RANGE, 0, ^uintptr(0), 0, 0, 0, 0)
		probeSpin() // never returns
	}
	if err := unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil); err != nil && errno == 0 {
		unix.Kill(int(r1), unix.SIGKILL)
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return int(r1), nil
}

var errTimeout = errors.New("timed out")

// waitStop polls for pid to stop and returns the stopping signal.
func waitStop(pid int, timeout time.Duration) (unix.Signal, error) {
	deadline := time.Now().Add(timeout)
	for {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(pid, &ws, unix.WNOHANG|unix.WALL, nil)
		if err != nil {
			return 0, fmt.Errorf("wait for %d: %w", pid, err)
		}
		if wpid == pid {
			if ws.Stopped() {
				return ws.StopSignal(), nil
			}
			return 0, fmt.Errorf("probe child %s", describeStatus(ws))
		}
		if time.Now().After(deadline) {
			return 0, errTimeout
		}
		time.Sleep(5 * time.Millisecond)
	}
}

package criu

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// offsetDebugReg is offsetof(struct user, u_debugreg) on x86_64.
const offsetDebugReg = 848

// ProbeBreakpoints reports whether hardware breakpoints are delivered to
// traced processes on this machine. It runs a busy child, stops it with
// ptrace, arms DR0 on the instruction it will execute next, resumes it,
// and waits briefly for the SIGTRAP. Some VMs do not deliver debug
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

	cmd := exec.Command("/bin/sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("breakpoint probe: %w", err)
	}
	pid := cmd.Process.Pid
	defer func() {
		_ = unix.Kill(pid, unix.SIGKILL)
		_ = cmd.Wait()
	}()
	if err := unix.PtraceAttach(pid); err != nil {
		return false, fmt.Errorf("breakpoint probe: ptrace attach: %w", err)
	}
	if _, err := waitStop(pid, 2*time.Second); err != nil {
		return false, fmt.Errorf("breakpoint probe: %w", err)
	}
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &regs); err != nil {
		return false, fmt.Errorf("breakpoint probe: get registers: %w", err)
	}
	poke := func(reg int, val uint64) error {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], val)
		_, err := unix.PtracePokeUser(pid, uintptr(offsetDebugReg+8*reg), b[:])
		return err
	}
	if err := poke(0, regs.Rip); err != nil {
		return false, nil // the kernel refuses debug registers: none here
	}
	if err := poke(7, 1); err != nil {
		return false, nil
	}
	if err := unix.PtraceCont(pid, 0); err != nil {
		return false, fmt.Errorf("breakpoint probe: ptrace cont: %w", err)
	}
	sig, err := waitStop(pid, 500*time.Millisecond)
	if errors.Is(err, errTimeout) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("breakpoint probe: %w", err)
	}
	return sig == unix.SIGTRAP, nil
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

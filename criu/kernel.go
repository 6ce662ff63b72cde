package criu

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel is a Linux kernel version.
type Kernel struct {
	Major, Minor, Patch int
	Release             string // as uname -r prints it
}

// ParseKernel parses a kernel release such as "6.18.44-fc-v769".
func ParseKernel(release string) (Kernel, error) {
	k := Kernel{Release: release}
	head, _, _ := strings.Cut(release, "-")
	head, _, _ = strings.Cut(head, "+")
	parts := strings.SplitN(head, ".", 3)
	if len(parts) < 2 {
		return Kernel{}, fmt.Errorf("parse kernel release %q: want MAJOR.MINOR[.PATCH]", release)
	}
	dst := []*int{&k.Major, &k.Minor, &k.Patch}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return Kernel{}, fmt.Errorf("parse kernel release %q: bad number %q", release, p)
		}
		*dst[i] = n
	}
	return k, nil
}

// RunningKernel returns the version of the running kernel.
func RunningKernel() (Kernel, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return Kernel{}, fmt.Errorf("uname: %w", err)
	}
	return ParseKernel(unix.ByteSliceToString(u.Release[:]))
}

func (k Kernel) atLeast(major, minor int) bool {
	return k.Major > major || (k.Major == major && k.Minor >= minor)
}

func (k Kernel) String() string {
	if k.Release != "" {
		return k.Release
	}
	return fmt.Sprintf("%d.%d.%d", k.Major, k.Minor, k.Patch)
}

// kernelRules lists, newest first, the oldest CRIU that works on kernels
// from a given version on, and why. Measured on Linux 6.18 (see
// docs/criu.md).
var kernelRules = []struct {
	major, minor int
	min          Version
	why          string
}{
	{6, 16, Version{Major: 4, Minor: 2}, "Linux 6.16 restricted SO_PASSCRED/SO_PASSSEC to unix and netlink sockets; older CRIU asks for them on every socket and cannot dump any process with an INET socket (\"sockets: Can't get 1:16 opt: Operation not supported\")"},
	{6, 13, Version{Major: 4, Minor: 1}, "Linux 6.13 added the [vvar_vclock] mapping; older CRIU dies on every command with \"vdso: Unexpected rt vDSO area bounds\""},
	{0, 0, Version{Major: 3, Minor: 17}, "phaul needs the RPC features of CRIU 3.17"},
}

// MinVersion returns the oldest CRIU known to work on kernel k, and why.
func MinVersion(k Kernel) (Version, string) {
	for _, r := range kernelRules {
		if k.atLeast(r.major, r.minor) {
			return r.min, r.why
		}
	}
	last := kernelRules[len(kernelRules)-1]
	return last.min, last.why
}

// ErrIncompatible is matched (errors.Is) by a *CompatError.
var ErrIncompatible = errors.New("criu version does not work on this kernel")

// CompatError says that a CRIU version is known not to work on a kernel.
type CompatError struct {
	Have   Version
	Need   Version
	Kernel Kernel
	Why    string
}

func (e *CompatError) Error() string {
	return fmt.Sprintf("criu %s does not work on Linux %s, which needs criu >= %d.%d: %s; run `make deps` (installs CRIU 4.2 under /opt/phaul/criu) or install a newer criu and point PHAUL_CRIU at it",
		e.Have, e.Kernel, e.Need.Major, e.Need.Minor, e.Why)
}

func (e *CompatError) Is(target error) bool { return target == ErrIncompatible }

// CheckCompat returns a *CompatError if CRIU v is known not to work on k.
func CheckCompat(v Version, k Kernel) error {
	need, why := MinVersion(k)
	if v.Less(need) {
		return &CompatError{Have: v, Need: need, Kernel: k, Why: why}
	}
	return nil
}

package postcopy

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// CRIU's own lazy page server (criu/page-xfer.c, page_server_get_pages)
// tees every answer through a pipe it sizes to 819 pages with
// F_SETPIPE_SZ, which the kernel rounds up to 4 MiB. Above
// fs.pipe-max-size that needs CAP_SYS_RESOURCE; without it the resize
// fails, CRIU ignores the failure (pipe_read_dest_init's caller), and its
// first answer larger than 64 KiB fails with a stale "tee: Operation not
// permitted": `criu dump --lazy-pages` and `criu page-server --lazy-pages`
// fail at the first fault. phaul's own server (Serve) has no such pipe.
const criuTeePipe = 4 << 20

// capSysResource is CAP_SYS_RESOURCE's bit in the capability sets.
const capSysResource = 24

// Limits are what decides whether CRIU's own lazy page server can work on
// this host.
type Limits struct {
	CapSysResource bool // in this process's effective set
	PipeMaxSize    int  // fs.pipe-max-size
	CRIUTeePipe    int  // the pipe CRIU's lazy page server needs
}

// CRIUServerWorks says whether CRIU's own lazy page server can size its
// pipe here.
func (l Limits) CRIUServerWorks() bool {
	return l.CapSysResource || l.PipeMaxSize >= l.CRIUTeePipe
}

// String says so, and why.
func (l Limits) String() string {
	switch {
	case l.CapSysResource:
		return "CRIU's own lazy page server can size its pipe (CAP_SYS_RESOURCE)"
	case l.CRIUServerWorks():
		return fmt.Sprintf("CRIU's own lazy page server can size its pipe (fs.pipe-max-size %d >= %d)", l.PipeMaxSize, l.CRIUTeePipe)
	}
	return fmt.Sprintf("CRIU's own lazy page server would fail here (no CAP_SYS_RESOURCE, fs.pipe-max-size %d < the %d its pipe needs); phaul serves pages itself and does not need it",
		l.PipeMaxSize, l.CRIUTeePipe)
}

// ReadLimits reads this process's capabilities and fs.pipe-max-size.
func ReadLimits() (Limits, error) {
	l := Limits{CRIUTeePipe: criuTeePipe}
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		return l, err
	}
	if l.PipeMaxSize, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
		return l, fmt.Errorf("fs.pipe-max-size: %w", err)
	}
	eff, err := effectiveCaps()
	if err != nil {
		return l, err
	}
	l.CapSysResource = eff&(1<<capSysResource) != 0
	return l, nil
}

func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("/proc/self/status: no CapEff")
}

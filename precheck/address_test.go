package precheck

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/internal/testutil"
	"github.com/phaul/phaul/netmove"
)

func TestResolveMoves(t *testing.T) {
	here := map[string]netmove.Assigned{
		"10.0.0.10": {Prefix: netip.MustParsePrefix("10.0.0.10/24"), Link: "eth0"},
		"10.0.0.1":  {Prefix: netip.MustParsePrefix("10.0.0.1/24"), Link: "eth0"},
		"fd00::10":  {Prefix: netip.MustParsePrefix("fd00::10/64"), Link: "eth0"},
	}
	lookup := func(ip netip.Addr) (netmove.Assigned, error) {
		if a, ok := here[ip.String()]; ok {
			return a, nil
		}
		return netmove.Assigned{}, fmt.Errorf("%s: %w", ip, netmove.ErrNotHere)
	}
	socks := []*pb.SocketFact{
		{Proto: "tcp", State: "LISTEN", LocalAddr: "10.0.0.10", LocalPort: 7000},
		{Proto: "tcp", State: "ESTABLISHED", LocalAddr: "10.0.0.10", LocalPort: 7000, RemoteAddr: "10.0.0.3", RemotePort: 5000},
		{Proto: "tcp", State: "LISTEN", LocalAddr: "0.0.0.0", LocalPort: 80},
		{Proto: "tcp", State: "LISTEN", LocalAddr: "127.0.0.1", LocalPort: 81},
		{Proto: "tcp", State: "ESTABLISHED", LocalAddr: "10.0.0.1", LocalPort: 40000, RemoteAddr: "10.0.0.2", RemotePort: 22},
	}
	session := netip.MustParseAddr("10.0.0.1")
	for _, c := range []struct {
		spec  MoveSpec
		moved []string
		fail  string
	}{
		{spec: nil},
		{spec: MoveSpec{"10.0.0.10"}, moved: []string{"10.0.0.10/24 on eth0"}},
		{spec: MoveSpec{"10.0.0.10/24", "fd00::10"}, moved: []string{"10.0.0.10/24 on eth0", "fd00::10/64 on eth0"}},
		{spec: MoveSpec{"auto"}, moved: []string{"10.0.0.10/24 on eth0"}},
		{spec: MoveSpec{"auto", "10.0.0.10"}, moved: []string{"10.0.0.10/24 on eth0"}},
		{spec: MoveSpec{"10.0.0.10/16"}, fail: "this host has it as 10.0.0.10/24, not /16"},
		{spec: MoveSpec{"10.0.0.1"}, fail: "the address phaul reaches the destination from"},
		{spec: MoveSpec{"10.0.0.99"}, fail: "not an address of this host"},
		{spec: MoveSpec{"127.0.0.1"}, fail: "loopback"},
		{spec: MoveSpec{"ten"}, fail: "want IP or IP/PREFIX"},
	} {
		got, v := ResolveMoves(c.spec, socks, session, lookup)
		if c.spec == nil {
			if got != nil || v != nil {
				t.Errorf("no spec: %v %v", got, v)
			}
			continue
		}
		if c.fail != "" {
			if v == nil || v.Result != pb.Verdict_FAIL || !strings.Contains(strings.Join(v.Items, "; "), c.fail) || got != nil {
				t.Errorf("%v: %v %v, want a failure %q", c.spec, got, v, c.fail)
			}
			continue
		}
		var names []string
		for _, a := range got {
			names = append(names, a.String())
		}
		if strings.Join(names, "|") != strings.Join(c.moved, "|") || v.Result != pb.Verdict_PASS {
			t.Errorf("%v: %v (%v), want %v", c.spec, names, v, c.moved)
		}
	}
}

// The destination judges against its real interfaces, here those of a
// network namespace of the test's own: loopback, and v0 on 10.9.0.0/24
// (its peer v1 is down).
func TestJudgeAddresses(t *testing.T) {
	testutil.RequireRoot(t)
	inFreshNetns(t, func() {
		for _, name := range []string{"lo", "v0"} {
			if l, err := netlink.LinkByName(name); err != nil || netlink.LinkSetUp(l) != nil {
				t.Errorf("%s up: %v", name, err)
				return
			}
		}
		if err := netmove.Add(netmove.Assigned{Prefix: netip.MustParsePrefix("10.9.0.1/24"), Link: "v0"}); err != nil {
			t.Error(err)
			return
		}
		for _, c := range []struct {
			moved []string
			link  string
			want  pb.Verdict_Result
			say   string
		}{
			{nil, "", pb.Verdict_PASS, "no address moves"},
			{[]string{"127.0.0.1/8"}, "", pb.Verdict_FAIL, "already an address of this host (lo)"},
			{[]string{"10.9.0.1/24"}, "", pb.Verdict_FAIL, "already an address of this host (v0)"},
			{[]string{"10.9.0.77/24"}, "", pb.Verdict_PASS, "10.9.0.77/24 on v0"},
			{[]string{"10.9.0.77/16"}, "", pb.Verdict_FAIL, "no interface here is on 10.9.0.77's subnet 10.9.0.0/16"},
			{[]string{"198.51.100.7/24"}, "", pb.Verdict_FAIL, "no interface here is on 198.51.100.7's subnet 198.51.100.0/24"},
			{[]string{"198.51.100.7/24"}, "lo", pb.Verdict_PASS, "198.51.100.7/24 on lo"},
			{[]string{"198.51.100.7/24"}, "v1", pb.Verdict_FAIL, "interface v1 (--address-interface) is down"},
			{[]string{"198.51.100.7/24"}, "nosuch0", pb.Verdict_FAIL, "interface nosuch0 (--address-interface)"},
		} {
			v := judgeAddresses(context.Background(), nil, Options{MoveAddresses: c.moved}, &Env{AddressInterface: c.link})
			if v.Result != c.want || !strings.Contains(v.Detail+" "+strings.Join(v.Items, "; "), c.say) {
				t.Errorf("%v on %q: %v, want %v %q", c.moved, c.link, v, c.want, c.say)
			}
		}
	})
}

// inFreshNetns runs f on a thread in a new network namespace holding a
// veth pair v0/v1; the thread is thrown away afterwards.
func inFreshNetns(t *testing.T, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "v0"}, PeerName: "v1"}
		if err := netlink.LinkAdd(veth); err != nil {
			t.Errorf("veth: %v", err)
			return
		}
		f()
	}()
	<-done
}

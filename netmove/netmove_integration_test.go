package netmove

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/phaul/phaul/internal/testutil"
)

// hosts are the two-hosts harness's namespaces: hosts a and b on the
// switch of client c.
type hosts struct{ name string }

func newHosts(t *testing.T) hosts {
	t.Helper()
	testutil.RequireRoot(t)
	var b [3]byte
	rand.Read(b[:])
	h := hosts{name: "nm" + hex.EncodeToString(b[:])}
	script := filepath.Join("..", "scripts", "two-hosts.sh")
	if out, err := exec.Command(script, "up", h.name).CombinedOutput(); err != nil {
		t.Fatalf("two-hosts up: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command(script, "down", h.name).Run() })
	return h
}

func (h hosts) link(host string) string { return h.name[:8] + "-v" + host }

// on runs f in the network namespace of host ("a", "b" or "c"), on a
// thread locked to it, which goes back to the test's namespace after
// (or is thrown away if it cannot: the harness's teardown kills whatever
// process it finds in the hosts' namespaces).
func (h hosts) on(t *testing.T, host string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- err
			return
		}
		defer home.Close()
		ns, err := os.Open("/run/netns/" + h.name + "-" + host)
		if err != nil {
			done <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		err = f()
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

func (h hosts) must(t *testing.T, host string, f func() error) {
	t.Helper()
	if err := h.on(t, host, f); err != nil {
		t.Fatalf("on %s: %v", host, err)
	}
}

// dial connects from the client to addr: nil if it was refused (someone
// answered), or the error.
func dial(addr netip.AddrPort) error {
	c, err := net.DialTimeout("tcp", addr.String(), 300*time.Millisecond)
	if err == nil {
		c.Close()
		return errors.New("connected")
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	return err
}

// neighbour is the client's cached hardware address for ip.
func neighbour(ip netip.Addr) (net.HardwareAddr, error) {
	family := netlink.FAMILY_V4
	if ip.Is6() {
		family = netlink.FAMILY_V6
	}
	ns, err := netlink.NeighList(0, family)
	if err != nil {
		return nil, err
	}
	for _, n := range ns {
		if got, ok := netip.AddrFromSlice(n.IP); ok && got.Unmap() == ip && n.HardwareAddr != nil {
			return n.HardwareAddr, nil
		}
	}
	return nil, errors.New("no neighbour entry")
}

// An address moves from host a to host b: the client, which had a's
// hardware address cached for it, reaches b after the announcement; the
// guard on b makes its TCP segments vanish (no reset), and lowering it
// lets them through again.
func TestMoveAddress(t *testing.T) {
	h := newHosts(t)
	for _, c := range []struct {
		name  string
		moved string
		own   map[string]string // addresses the hosts get first (IPv6: they have none)
	}{
		{"ipv4", "10.77.0.10/24", nil},
		{"ipv6", "fd00:77::10/64", map[string]string{"a": "fd00:77::1/64", "b": "fd00:77::2/64", "c": "fd00:77::3/64"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			for host, p := range c.own {
				link := h.link(host)
				if host == "c" {
					link = h.name[:8] + "-sw"
				}
				h.must(t, host, func() error { return Add(Assigned{Prefix: netip.MustParsePrefix(p), Link: link}) })
			}
			p := netip.MustParsePrefix(c.moved)
			ip := p.Addr()
			port := netip.AddrPortFrom(ip, 9)
			onA := Assigned{Prefix: p, Link: h.link("a")}
			h.must(t, "a", func() error { return Add(onA) })
			h.must(t, "a", func() error {
				got, err := Lookup(ip)
				if err != nil || got != onA {
					t.Errorf("lookup on a: %v, %v; want %v", got, err, onA)
				}
				return nil
			})
			// The client talks to a, and caches a's hardware address.
			h.must(t, "c", func() error { return dial(port) })
			macA, macB := hwaddr(t, h, "a"), hwaddr(t, h, "b")
			h.must(t, "c", func() error {
				if mac, err := neighbour(ip); err != nil || mac.String() != macA {
					t.Errorf("the client has %s at %v (%v), want a's %s", ip, mac, err, macA)
				}
				return nil
			})

			var link string
			h.must(t, "b", func() (err error) {
				if _, err := Lookup(ip); !errors.Is(err, ErrNotHere) {
					t.Errorf("lookup on b before the move: %v", err)
				}
				link, err = LinkFor(p, "")
				return err
			})
			if link != h.link("b") {
				t.Fatalf("LinkFor on b: %s", link)
			}
			onB := Assigned{Prefix: p, Link: link}
			var g *Guard
			h.must(t, "a", func() error { return Remove(onA) })
			h.must(t, "b", func() (err error) {
				if g, err = RaiseGuard(GuardName("test"), []netip.Addr{ip}); err != nil {
					return err
				}
				if err := Add(onB); err != nil {
					return err
				}
				return Announce(onB)
			})
			h.must(t, "c", func() error {
				if mac, err := neighbour(ip); err != nil || mac.String() != macB {
					t.Errorf("after the announcement the client has %s at %v (%v), want b's %s", ip, mac, err, macB)
				}
				if err := dial(port); err == nil || !os.IsTimeout(err) {
					t.Errorf("through the guard: %v, want a timeout (dropped, not reset)", err)
				}
				return nil
			})
			h.must(t, "b", g.Lower)
			h.must(t, "c", func() error { return dial(port) })
			h.must(t, "b", func() error { return Remove(onB) })
		})
	}
}

func hwaddr(t *testing.T, h hosts, host string) string {
	t.Helper()
	var mac string
	h.must(t, host, func() error {
		ifi, err := net.InterfaceByName(h.link(host))
		if err != nil {
			return err
		}
		mac = ifi.HardwareAddr.String()
		return nil
	})
	return mac
}

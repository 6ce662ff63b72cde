package netmove

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Assigned is an address as an interface of this host holds it.
type Assigned struct {
	Prefix netip.Prefix // the address and the length of its subnet
	Link   string       // the interface
}

func (a Assigned) String() string { return a.Prefix.String() + " on " + a.Link }

// ErrNotHere says an address is on no interface of this host.
var ErrNotHere = errors.New("not an address of this host")

// ParsePrefix parses IP or IP/PREFIX. Without a prefix length the
// returned prefix has length -1: the source fills it in from the
// interface that holds the address.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("address %q: want IP or IP/PREFIX", s)
		}
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("address %q: want IP or IP/PREFIX", s)
	}
	return netip.PrefixFrom(a.Unmap(), -1), nil
}

// Lookup finds ip on this host's interfaces (ErrNotHere if none holds it).
func Lookup(ip netip.Addr) (Assigned, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return Assigned{}, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		got, ok := netip.AddrFromSlice(a.IP)
		if !ok || got.Unmap() != ip {
			continue
		}
		ones, _ := a.Mask.Size()
		link, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return Assigned{}, fmt.Errorf("address %s: its interface: %w", ip, err)
		}
		return Assigned{Prefix: netip.PrefixFrom(ip, ones), Link: link.Attrs().Name}, nil
	}
	return Assigned{}, fmt.Errorf("%s: %w", ip, ErrNotHere)
}

// Add puts the address on its interface; an IPv6 address skips duplicate
// address detection, so that it is usable at once (the checks made sure
// no one else holds it), and Add returns once the kernel answers
// neighbour solicitations for it (waitSolicited).
func Add(a Assigned) error {
	link, addr, err := resolve(a)
	if err != nil {
		return err
	}
	if a.Prefix.Addr().Is6() {
		addr.Flags |= unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s: %w", a, err)
	}
	if a.Prefix.Addr().Is6() {
		waitSolicited(link.Attrs().Index, a.Prefix.Addr())
	}
	return nil
}

// solicitedWait bounds waitSolicited.
const solicitedWait = 2 * time.Second

// waitSolicited waits until the interface of index has joined the
// solicited-node multicast group of ip (in /proc/thread-self/net/igmp6:
// this thread's network namespace). The kernel joins it from a work queue
// after the address is in place, nodad or not (addrconf_dad_begin), and
// drops a neighbour solicitation that comes before: the asker tries again
// only a second later. Seen as 1 in 15 IPv6 moves failing a 300 ms dial
// on a loaded machine (TestMoveAddress/ipv6). It gives up after
// solicitedWait: the address works anyway, a solicitation later.
func waitSolicited(index int, ip netip.Addr) {
	group := solicitedNode(ip)
	for deadline := time.Now().Add(solicitedWait); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if b, err := os.ReadFile("/proc/thread-self/net/igmp6"); err != nil || inGroup(string(b), index, group) {
			return
		}
	}
}

// solicitedNode is ip's solicited-node multicast group (ff02::1:ffXX:XXXX,
// the low 24 bits of ip), written as /proc/net/igmp6 writes groups.
func solicitedNode(ip netip.Addr) string {
	b := ip.As16()
	return fmt.Sprintf("ff0200000000000000000001ff%02x%02x%02x", b[13], b[14], b[15])
}

// inGroup reports whether igmp6 (the text of /proc/net/igmp6) has the
// interface of index in group.
func inGroup(igmp6 string, index int, group string) bool {
	for line := range strings.Lines(igmp6) {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == strconv.Itoa(index) && f[2] == group {
			return true
		}
	}
	return false
}

// Remove takes the address off its interface.
func Remove(a Assigned) error {
	link, addr, err := resolve(a)
	if err != nil {
		return err
	}
	if err := netlink.AddrDel(link, addr); err != nil {
		return fmt.Errorf("remove %s: %w", a, err)
	}
	return nil
}

func resolve(a Assigned) (netlink.Link, *netlink.Addr, error) {
	link, err := netlink.LinkByName(a.Link)
	if err != nil {
		return nil, nil, fmt.Errorf("interface %s: %w", a.Link, err)
	}
	ip := net.IP(a.Prefix.Addr().AsSlice())
	bits := 32
	if a.Prefix.Addr().Is6() {
		bits = 128
	}
	return link, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(a.Prefix.Bits(), bits)}}, nil
}

// LinkFor chooses the interface of this host that is to hold p: the one
// named (which must be up), or else the one with an address of its own in
// p's subnet, on which the address's neighbours can be reached.
func LinkFor(p netip.Prefix, name string) (string, error) {
	if name != "" {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return "", fmt.Errorf("interface %s (--address-interface): %w", name, err)
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			return "", fmt.Errorf("interface %s (--address-interface) is down", name)
		}
		return name, nil
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		own, ok := netip.AddrFromSlice(a.IP)
		if !ok || own.Unmap() == p.Addr() {
			continue
		}
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(own.Unmap(), ones).Masked().Contains(p.Addr()) && ones == p.Bits() {
			link, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return "", fmt.Errorf("interface of %s: %w", own, err)
			}
			if link.Attrs().Flags&net.FlagUp == 0 {
				continue
			}
			return link.Attrs().Name, nil
		}
	}
	return "", fmt.Errorf("no interface here is on %s's subnet %s: connect this host to it, or name the interface with --address-interface", p.Addr(), p.Masked())
}

package netmove

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

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
// no one else holds it).
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
	return nil
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

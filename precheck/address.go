package precheck

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/netmove"
)

// The addresses moved with the tree (--move-address): the source must be
// able to give each up, the destination to take it.

// MoveSpec is what the source's --move-address asked: addresses
// (IP[/PREFIX]) or "auto", every address the tree's sockets are bound to
// but the one phaul connects through.
type MoveSpec []string

// Auto says whether the spec asks for the tree's own addresses.
func (s MoveSpec) Auto() bool {
	for _, a := range s {
		if a == "auto" {
			return true
		}
	}
	return false
}

// ResolveMoves turns the spec into the addresses as this host holds them
// (the lookup is lookup: netmove.Lookup), and judges whether the source may
// give them up: each must be this host's, not loopback, and not session,
// the address phaul itself reaches the destination from.
func ResolveMoves(spec MoveSpec, socks []*pb.SocketFact, session netip.Addr, lookup func(netip.Addr) (netmove.Assigned, error)) ([]netmove.Assigned, *pb.Verdict) {
	if len(spec) == 0 {
		return nil, nil
	}
	var asked []netip.Prefix
	var items []string
	for _, s := range spec {
		if s == "auto" {
			continue
		}
		p, err := netmove.ParsePrefix(s)
		if err != nil {
			items = append(items, err.Error())
			continue
		}
		asked = append(asked, p)
	}
	if spec.Auto() {
		asked = append(asked, treeAddresses(socks, session)...)
	}
	var out []netmove.Assigned
	seen := map[netip.Addr]bool{}
	for _, p := range asked {
		ip := p.Addr()
		if seen[ip] {
			continue
		}
		seen[ip] = true
		a, err := lookup(ip)
		switch {
		case ip.IsLoopback() || ip.IsUnspecified():
			items = append(items, fmt.Sprintf("%s: a loopback or wildcard address does not move", ip))
		case errors.Is(err, netmove.ErrNotHere):
			items = append(items, fmt.Sprintf("%s is not an address of this host: nothing to move", ip))
		case err != nil:
			items = append(items, err.Error())
		case ip == session:
			items = append(items, fmt.Sprintf("%s is the address phaul reaches the destination from: moving it would cut the migration's own connection; reach the destination through another address", ip))
		case p.Bits() >= 0 && p.Bits() != a.Prefix.Bits():
			items = append(items, fmt.Sprintf("%s: this host has it as %s, not /%d", ip, a.Prefix, p.Bits()))
		default:
			out = append(out, a)
		}
	}
	if len(items) > 0 {
		return nil, fail("address", "the source cannot give these addresses up", items...)
	}
	if len(out) == 0 {
		return nil, pass("address", "--move-address auto: no socket of the tree is bound to an address of its own")
	}
	names := make([]string, len(out))
	for i, a := range out {
		names[i] = a.String()
	}
	return out, pass("address", fmt.Sprintf("%d addresses leave with the tree: %s", len(out), strings.Join(names, ", ")))
}

// treeAddresses are the addresses the tree's sockets are bound to but
// loopback, wildcards and the session's.
func treeAddresses(socks []*pb.SocketFact, session netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range socks {
		ip, err := netip.ParseAddr(s.LocalAddr)
		if err != nil || ip.IsLoopback() || ip.IsUnspecified() || ip.IsLinkLocalUnicast() || ip.Unmap() == session {
			continue
		}
		out = append(out, netip.PrefixFrom(ip.Unmap(), -1))
	}
	return out
}

// judgeAddresses: the destination can take each moved address: it is not
// one of its own already, and an interface here is on its subnet (or is
// the one the service was told to use).
func judgeAddresses(ctx context.Context, f *pb.SourceFacts, o Options, env *Env) *pb.Verdict {
	if len(o.MoveAddresses) == 0 {
		return pass("address", "no address moves with the tree (--move-address)")
	}
	var items, placed []string
	for _, s := range o.MoveAddresses {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			items = append(items, fmt.Sprintf("%q: not IP/PREFIX", s))
			continue
		}
		if a, err := netmove.Lookup(p.Addr()); err == nil {
			items = append(items, fmt.Sprintf("%s is already an address of this host (%s): two hosts would answer for it; remove it here first", p.Addr(), a.Link))
			continue
		}
		link, err := netmove.LinkFor(p, env.AddressInterface)
		if err != nil {
			items = append(items, err.Error())
			continue
		}
		placed = append(placed, p.String()+" on "+link)
	}
	if len(items) > 0 {
		return fail("address", "this host cannot take the addresses", items...)
	}
	return pass("address", "the addresses can come here: "+strings.Join(placed, ", "))
}

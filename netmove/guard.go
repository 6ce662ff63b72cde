package netmove

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// A Guard drops every TCP segment to and from some addresses on this
// host: an nftables table of its own (inet family), with an input and an
// output chain. While it is up, a connection to a moved address is neither
// reset (its socket not restored yet) nor acknowledged (its bytes might
// still have to go back to the source): its peer retransmits, and gets
// its answer once the guard is down.
type Guard struct {
	table *nftables.Table
}

// GuardName is the nftables table of the guard of migration id.
func GuardName(id string) string { return "phaul-" + id }

// RaiseGuard puts up the guard named name for addrs (replacing one of the
// same name left behind).
func RaiseGuard(name string, addrs []netip.Addr) (*Guard, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("guard %s: %w", name, err)
	}
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	if old, err := c.ListTableOfFamily(name, nftables.TableFamilyINet); err == nil && old != nil {
		c.DelTable(t)
	}
	c.AddTable(t)
	for _, hook := range []struct {
		name string
		hook *nftables.ChainHook
		src  bool // match the source address (output) or the destination (input)
	}{{"input", nftables.ChainHookInput, false}, {"output", nftables.ChainHookOutput, true}} {
		ch := c.AddChain(&nftables.Chain{Name: hook.name, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: hook.hook, Priority: nftables.ChainPriorityFilter})
		for _, a := range addrs {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: dropTCP(a, hook.src)})
		}
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("guard %s: nftables: %w", name, err)
	}
	return &Guard{table: t}, nil
}

// dropTCP is "ip[6] saddr|daddr A meta l4proto tcp drop".
func dropTCP(a netip.Addr, src bool) []expr.Any {
	family, off := byte(unix.NFPROTO_IPV4), uint32(16) // daddr in the IPv4 header
	switch {
	case a.Is4() && src:
		off = 12
	case a.Is6() && src:
		family, off = unix.NFPROTO_IPV6, 8
	case a.Is6():
		family, off = unix.NFPROTO_IPV6, 24
	}
	ip := a.AsSlice()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(ip))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// Lower takes the guard down.
func (g *Guard) Lower() error { return DropTable(g.table.Name) }

// DropTable removes the inet table name if it exists: a guard, or the
// table of connection locks a CRIU dump leaves behind ("CRIU-" and the
// dump's run id).
func DropTable(name string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables table %s: %w", name, err)
	}
	if _, err := c.ListTableOfFamily(name, nftables.TableFamilyINet); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("nftables table %s: %w", name, err)
	}
	c.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove nftables table %s: %w", name, err)
	}
	return nil
}

// Tables lists this host's inet nftables tables (guards are "phaul-ID",
// CRIU's connection locks "CRIU-RUNID").
func Tables() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out, nil
}

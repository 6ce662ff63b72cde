package migrate

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/phaul/phaul/internal/criuimg"
	"github.com/phaul/phaul/internal/pb"
	"github.com/phaul/phaul/netmove"
	"github.com/phaul/phaul/precheck"
)

// Addresses that move with the tree (--move-address; netmove says how).
//
// Source: at post-dump (the tree frozen, CRIU's network lock holding its
// connections) the addresses leave this host; if anything fails before
// the commit they come back, announced, before CRIU resumes the tree; after
// the commit, the table of connection locks CRIU's dump left here goes.
//
// Destination: before the restore the guard goes up, then the addresses
// are added and announced; the guard comes down at the commit. On a
// failure before it, the tree is killed behind the guard, the addresses
// removed, the guard lowered. In doubt, the addresses are removed (the
// source may take them back) and the guard stays until it is resolved.

// placedAddress is a moved address and its interface, as recorded.
type placedAddress struct {
	Prefix string `json:"prefix"`
	Link   string `json:"link"`
}

func (p placedAddress) assigned() (netmove.Assigned, error) {
	pr, err := netip.ParsePrefix(p.Prefix)
	if err != nil {
		return netmove.Assigned{}, fmt.Errorf("recorded address %q: %w", p.Prefix, err)
	}
	return netmove.Assigned{Prefix: pr, Link: p.Link}, nil
}

func placed(as []netmove.Assigned) []placedAddress {
	var out []placedAddress
	for _, a := range as {
		out = append(out, placedAddress{Prefix: a.Prefix.String(), Link: a.Link})
	}
	return out
}

func prefixes(as []netmove.Assigned) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Prefix.String())
	}
	return out
}

// resolveMoves finds the addresses --move-address asks for on this host
// and judges whether they may leave (precheck.ResolveMoves). Moving them
// carries the tree's TCP connections too.
func (m *source) resolveMoves(facts *pb.SourceFacts) *pb.Verdict {
	var session netip.Addr
	if ap, err := netip.ParseAddrPort(m.sess.LocalAddr().String()); err == nil {
		session = ap.Addr().Unmap()
	}
	moves, v := precheck.ResolveMoves(m.o.MoveAddresses, facts.Sockets, session, netmove.Lookup)
	m.moves = moves
	if len(moves) == 0 {
		return v
	}
	for _, s := range facts.Sockets {
		if s.Proto == "tcp" && s.State == "ESTABLISHED" {
			m.r.Connections++
		}
	}
	if !m.o.TCPEstablished {
		m.o.TCPEstablished = true
		m.r.CRIUOptions = append(m.r.CRIUOptions, fmt.Sprintf("tcp_established: the tree's %d established TCP connections move with its addresses", m.r.Connections))
	}
	return v
}

// movedReport says where each moved address went: "10.0.0.5/24: eth0 ->
// eth1" (placed: the destination's "PREFIX on LINK").
func movedReport(moves []netmove.Assigned, placed []string) []string {
	var out []string
	for i, a := range moves {
		to := "?"
		if i < len(placed) {
			if _, link, ok := strings.Cut(placed[i], " on "); ok {
				to = link
			}
		}
		out = append(out, fmt.Sprintf("%s: %s -> %s", a.Prefix, a.Link, to))
	}
	return out
}

// releaseAddresses takes the moved addresses off this host, recording
// each (in the decision on disk) before it goes.
func (m *source) releaseAddresses() error {
	for _, a := range m.moves {
		m.released = append(m.released, a)
		if err := m.decide(m.decided); err != nil {
			return err
		}
		if err := netmove.Remove(a); err != nil {
			return err
		}
		m.log.Info("address given up for the destination", "address", a)
	}
	return nil
}

// reclaimAddresses puts back the addresses released, and announces them:
// the tree is about to run here again.
func (m *source) reclaimAddresses() {
	if err := reclaim(placed(m.released), m.log); err != nil {
		m.log.Error("the moved addresses could not all be put back", "err", err)
	}
	m.released = nil
}

// reclaim adds addrs to this host (those still here are left as they
// are) and announces them.
func reclaim(addrs []placedAddress, log *slog.Logger) error {
	var errs []error
	for _, p := range addrs {
		a, err := p.assigned()
		if err == nil {
			err = netmove.Add(a)
		}
		if err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, err)
			continue
		}
		if err := netmove.Announce(a); err != nil {
			log.Warn("address back, but not announced", "address", a, "err", err)
		}
		log.Info("address back on this host", "address", a)
	}
	return errors.Join(errs...)
}

// dropCRIULocks removes the nftables table of connection locks that a
// successful dump leaves on this host (CRIU unlocks only when the tree
// lives on here): "CRIU-" and the run id its inventory records.
func (m *source) dropCRIULocks(dir string) {
	id, err := criuRunID(filepath.Join(dir, "inventory.img"))
	table := criuLockTable(id)
	if err == nil {
		err = netmove.DropTable(table)
	}
	if err != nil {
		m.log.Warn("CRIU's connection locks stay on this host", "err", err)
		return
	}
	m.log.Info("removed CRIU's connection locks", "table", table)
}

// criuLockTable is the name of the table of connection locks of CRIU's
// run id: CRIU prints "inet CRIU-ID" into 32 bytes (criu/netfilter.c,
// nftables_get_table), so the name is cut to 26 characters.
func criuLockTable(id string) string {
	name := "CRIU-" + id
	return name[:min(len(name), 31-len("inet "))]
}

// criuRunID reads dump_criu_run_id (field 13 of inventory_entry, which
// go-criu's copy of the message lacks) from an inventory image.
func criuRunID(path string) (string, error) {
	img, err := criuimg.Read(path, "INVENTORY", &inventory.InventoryEntry{})
	if err != nil {
		return "", err
	}
	if len(img.Entries) != 1 {
		return "", fmt.Errorf("%s: %d entries", path, len(img.Entries))
	}
	b := img.Entries[0].Message.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if num == 13 && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				break
			}
			return string(v), nil
		}
		if m := protowire.ConsumeFieldValue(num, typ, b); m >= 0 {
			b = b[m:]
		} else {
			break
		}
	}
	return "", fmt.Errorf("%s: no dump_criu_run_id", path)
}

// takeAddresses puts the moved addresses on this host before the
// restore: the plan recorded first, then the guard, then each address,
// announced.
func (in *incoming) takeAddresses() error {
	if len(in.prep.MoveAddresses) == 0 {
		return nil
	}
	var ips []netip.Addr
	var plan []placedAddress
	for _, s := range in.prep.MoveAddresses {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("moved address %q: %w", s, err)
		}
		link, err := netmove.LinkFor(p, in.d.o.AddressInterface)
		if err != nil {
			return err
		}
		ips = append(ips, p.Addr())
		plan = append(plan, placedAddress{Prefix: p.String(), Link: link})
	}
	in.addrs, in.guarded = plan, true
	if err := in.record("receiving"); err != nil {
		return err
	}
	if _, err := netmove.RaiseGuard(netmove.GuardName(in.id), ips); err != nil {
		return err
	}
	for _, p := range plan {
		a, _ := p.assigned()
		if err := netmove.Add(a); err != nil {
			return err
		}
		if err := netmove.Announce(a); err != nil {
			in.log.Warn("address added, but not announced", "address", a, "err", err)
		}
		in.log.Info("address taken, guarded until the commit", "address", a)
	}
	return nil
}

// openAddresses lowers the guard at the commit, and announces the
// addresses again (a neighbour may have ignored the first announcement,
// made while the source's was fresh in its cache).
func openAddresses(id string, addrs []placedAddress, log *slog.Logger) error {
	if err := netmove.DropTable(netmove.GuardName(id)); err != nil {
		return err
	}
	for _, p := range addrs {
		if a, err := p.assigned(); err == nil {
			if err := netmove.Announce(a); err != nil {
				log.Warn("address not announced", "address", a, "err", err)
			}
		}
	}
	return nil
}

// dropAddresses removes the addresses that came with the tree (after it
// was killed, or while it is in doubt), then, unless fence, the guard.
func dropAddresses(id string, addrs []placedAddress, fence bool, log *slog.Logger) error {
	var errs []error
	for _, p := range addrs {
		a, err := p.assigned()
		if err == nil {
			err = netmove.Remove(a)
		}
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, err)
			continue
		}
		log.Info("moved address taken off this host", "address", p.Prefix)
	}
	if !fence {
		if err := netmove.DropTable(netmove.GuardName(id)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

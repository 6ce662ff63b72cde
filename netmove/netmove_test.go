package netmove

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
)

func TestParsePrefix(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{in: "10.0.0.5/24", want: "10.0.0.5/24"},
		{in: "10.0.0.5", want: "invalid Prefix"}, // no length yet: -1
		{in: "::ffff:10.0.0.5/24", want: "10.0.0.5/24"},
		{in: "fd00::5/64", want: "fd00::5/64"},
		{in: "fd00::5", want: "invalid Prefix"},
		{in: "10.0.0.5/33", err: "want IP or IP/PREFIX"},
		{in: "host.example", err: "want IP or IP/PREFIX"},
		{in: "", err: "want IP or IP/PREFIX"},
	} {
		p, err := ParsePrefix(c.in)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v, want error %q", c.in, err, c.err)
			}
		case err != nil:
			t.Errorf("%q: %v", c.in, err)
		case p.String() != c.want:
			t.Errorf("%q: %s, want %s", c.in, p, c.want)
		case c.want == "invalid Prefix" && (p.Bits() != -1 || !p.Addr().IsValid()):
			t.Errorf("%q: %v, want the address without a length", c.in, p)
		}
	}
}

// The announcements' bytes, as RFC 826 and RFC 4861 lay them out.
func TestPackets(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	arp := arpPacket(2, mac, netip.MustParseAddr("10.0.0.5"), net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	want := []byte{0, 1, 8, 0, 6, 4, 0, 2, 2, 0, 0, 0, 0, 1, 10, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 10, 0, 0, 5}
	if !bytes.Equal(arp, want) {
		t.Errorf("arp %x, want %x", arp, want)
	}
	na := naPacket(mac, netip.MustParseAddr("fd00::5"))
	if len(na) != 32 || na[0] != 136 || na[4] != 0x20 || na[8] != 0xfd || na[23] != 5 || na[24] != 2 || na[25] != 1 || !bytes.Equal(na[26:], mac) {
		t.Errorf("neighbour advertisement %x", na)
	}
}

// The guard's rules look at the right header field for each family and
// direction.
func TestDropTCP(t *testing.T) {
	for _, c := range []struct {
		addr   string
		src    bool
		family byte
		off    uint32
	}{
		{"10.0.0.5", false, 2, 16}, {"10.0.0.5", true, 2, 12},
		{"fd00::5", false, 10, 24}, {"fd00::5", true, 10, 8},
	} {
		a := netip.MustParseAddr(c.addr)
		e := dropTCP(a, c.src)
		fam := e[1].(*expr.Cmp).Data
		pl := e[2].(*expr.Payload)
		ip := e[3].(*expr.Cmp).Data
		if fam[0] != c.family || pl.Offset != c.off || int(pl.Len) != len(ip) || !bytes.Equal(ip, a.AsSlice()) {
			t.Errorf("%s src=%v: family %d, offset %d len %d, %x", c.addr, c.src, fam[0], pl.Offset, pl.Len, ip)
		}
		if v, ok := e[len(e)-1].(*expr.Verdict); !ok || v.Kind != expr.VerdictDrop {
			t.Errorf("%s: the rule does not drop", c.addr)
		}
	}
}

func TestSolicitedNode(t *testing.T) {
	igmp6 := "1    lo              ff020000000000000000000000000001     1 0000000C 0\n" +
		"4    eth0            ff0200000000000000000001ff000010     1 00000004 0\n"
	for _, c := range []struct {
		ip    string
		index int
		want  bool
	}{
		{"fd00:77::10", 4, true},
		{"2001:db8::abcd:ef00:10", 4, true}, // only the low 24 bits
		{"fd00:77::10", 1, false},           // another interface
		{"fd00:77::11", 4, false},
	} {
		if got := inGroup(igmp6, c.index, solicitedNode(netip.MustParseAddr(c.ip))); got != c.want {
			t.Errorf("%s on %d: in its solicited-node group %v, want %v", c.ip, c.index, got, c.want)
		}
	}
}
